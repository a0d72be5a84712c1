#include "spool/spool.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <tuple>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/spec_codec.hpp"
#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/time.hpp"

namespace hangar::spool {

namespace {

// The JSON spec codec the other faces use (a config is the body of a create, or a PATCH).
Status decode_spec(const std::string& body, MachineSpec& spec, std::set<std::string>& seen) {
    return core::decode_spec_fields(body, spec, seen);
}

// The files of service/vm/NAME, in the order files of the same age are taken.
constexpr const char* kFiles[] = {"config", "start", "stop", "destroy"};
constexpr std::string_view kMachineDirs = "service/vm/";

constexpr uint32_t kDirMask = IN_CREATE | IN_MOVED_TO | IN_MOVE_SELF | IN_DELETE_SELF | IN_ONLYDIR;
constexpr uint32_t kCommandMask = kDirMask | IN_CLOSE_WRITE;

bool is_command_file(const std::string& name) {
    return std::find(std::begin(kFiles), std::end(kFiles), name) != std::end(kFiles);
}

// "1001" → 1001; none for anything but a uid in decimal without leading zeros.
std::optional<uid_t> parse_uid(const std::string& name) {
    if (name.empty() || name.size() > 10 || (name[0] == '0' && name.size() > 1) ||
        name.find_first_not_of("0123456789") != std::string::npos) {
        return std::nullopt;
    }
    unsigned long long v = std::stoull(name);
    if (v >= UINT32_MAX) {
        return std::nullopt;
    }
    return static_cast<uid_t>(v);
}

std::string proc_fd(int fd) {
    return "/proc/self/fd/" + std::to_string(fd);
}

int level_of(const std::string& rel) {
    return rel.empty() ? 0 : 1 + static_cast<int>(std::count(rel.begin(), rel.end(), '/'));
}

}  // namespace

Spool::Spool(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
             const core::AdminGroup& admins, std::string dir)
    : io_(io),
      machines_(machines),
      events_(events),
      admins_(admins),
      dir_(std::move(dir)),
      inotify_(io) {}

Spool::~Spool() {
    if (subscription_) {
        events_.unsubscribe(subscription_);
    }
}

Status Spool::start() {
    if (mkdir(dir_.c_str(), 0755) != 0 && errno != EEXIST) {
        return {Errc::internal, "--spool-dir " + dir_ + ": " + strerror(errno)};
    }
    dir_fd_ = Fd(open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    struct stat st {};
    if (!dir_fd_ || fstat(dir_fd_.get(), &st) != 0) {
        return {Errc::internal, "--spool-dir " + dir_ + ": " + strerror(errno)};
    }
    // Users may make their own trees only where they cannot move another's away.
    if ((st.st_mode & 0022) != 0 && (st.st_mode & S_ISVTX) == 0) {
        return {Errc::invalid_spec, "--spool-dir " + dir_ +
                                        " is writable by others without the sticky bit "
                                        "(chmod 0755, or 1733 to let users make their trees)"};
    }
    int fd = inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (fd < 0) {
        return {Errc::internal, std::string("inotify: ") + strerror(errno)};
    }
    inotify_.assign(fd);
    dir_wd_ = inotify_add_watch(
        fd, proc_fd(dir_fd_.get()).c_str(),
        IN_CREATE | IN_MOVED_TO | IN_ATTRIB | IN_DELETE | IN_MOVED_FROM | IN_ONLYDIR);
    if (dir_wd_ < 0) {
        return {Errc::internal, "inotify on " + dir_ + ": " + strerror(errno)};
    }
    subscription_ = events_.subscribe([this](const core::Event& ev) { on_event(ev); });
    rescan_all();
    arm();
    spdlog::info("spool: watching {} ({} user trees)", dir_, trees_.size());
    return {};
}

// ---- inotify ----------------------------------------------------------------------------

void Spool::arm() {
    inotify_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                        [this, alive = std::weak_ptr<bool>(alive_)](boost::system::error_code ec) {
                            if (!ec && alive.lock()) {
                                on_readable();
                            }
                        });
}

void Spool::on_readable() {
    // One buffer per wakeup: a flood waits in the kernel's queue (and overflows into a rescan).
    alignas(inotify_event) char buf[65536];
    ssize_t n = read(inotify_.native_handle(), buf, sizeof buf);
    for (ssize_t at = 0; n > 0 && at + static_cast<ssize_t>(sizeof(inotify_event)) <= n;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(buf + at);
        at += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
        std::string name = ev->len ? std::string(ev->name) : std::string();
        if (ev->mask & IN_Q_OVERFLOW) {
            spdlog::warn("spool: inotify queue overflowed; rescanning {}", dir_);
            rescan_all();
        } else if (ev->wd == dir_wd_) {
            on_tree_event(ev->mask, name);
        } else {
            on_watch_event(ev->wd, ev->mask, name);
        }
    }
    arm();
}

void Spool::on_tree_event(uint32_t mask, const std::string& name) {
    // IN_ATTRIB: `install -d -o USER` makes the directory, then gives it to its user.
    if (mask & (IN_CREATE | IN_MOVED_TO | IN_ATTRIB)) {
        add_tree(name, !(mask & IN_ATTRIB));
    } else if (auto uid = parse_uid(name); uid && (mask & (IN_DELETE | IN_MOVED_FROM))) {
        drop_tree(*uid);
    }
}

void Spool::on_watch_event(int wd, uint32_t mask, const std::string& name) {
    auto it = watches_.find(wd);
    if (it == watches_.end()) {
        return;
    }
    Watch w = it->second;
    if (mask & (IN_IGNORED | IN_MOVE_SELF | IN_DELETE_SELF)) {
        // Gone or moved away: whatever takes its path is found through its parent.
        if (!(mask & IN_IGNORED)) {
            inotify_rm_watch(inotify_.native_handle(), wd);
        }
        if (auto t = trees_.find(w.uid); t != trees_.end() && w.level == 3) {
            --t->second.machine_dirs;
            if (auto c = commands_.find({w.uid, w.rel.substr(kMachineDirs.size())});
                c != commands_.end() && !c->second.busy) {
                commands_.erase(c);
            }
        }
        watches_.erase(it);
        return;
    }
    if (work_.size() >= kMaxQueued) {
        // A flood: what does not fit is found by a rescan once the queue has drained.
        if (!rescan_due_) {
            spdlog::warn("spool: more than {} changes waiting; rescanning after them", kMaxQueued);
        }
        rescan_due_ = true;
        return;
    }
    bool added = mask & (IN_CREATE | IN_MOVED_TO);
    if (w.level == 0 && added && name == "service") {
        queue(true, {w.uid, "service"});
    } else if (w.level == 1 && added && name == "vm") {
        queue(true, {w.uid, "service/vm"});
    } else if (w.level == 2 && added) {
        queue(true, {w.uid, w.rel + "/" + name});
    } else if (w.level == 3 && is_command_file(name)) {
        // Written (closed, or renamed in) is ready; only created is ready when it is not a
        // plain file being written (a symbolic link, FIFO or hard link makes no close event).
        Key key{w.uid, w.rel.substr(kMachineDirs.size())};
        Seen& seen = commands_[key].ready.try_emplace(name, Seen::created).first->second;
        if (mask & (IN_CLOSE_WRITE | IN_MOVED_TO)) {
            seen = Seen::written;
        }
        queue(false, key);
    }
}

// ---- trees ------------------------------------------------------------------------------

void Spool::add_tree(const std::string& name, bool rescan) {
    // Said once per name (a user could make a bad entry over and over).
    auto ignored = [this, &name](const std::string& why) {
        if (warned_.size() < 1024 && warned_.insert(name).second) {
            spdlog::warn("spool: {}/{}: {}; ignored", dir_, json::quote(name), why);
        }
    };
    auto uid = parse_uid(name);
    if (!uid) {
        return ignored("not a uid");
    }
    Fd fd(openat(dir_fd_.get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
    struct stat st {};
    if (!fd || fstat(fd.get(), &st) != 0 || st.st_uid != *uid) {
        drop_tree(*uid);  // given away, or replaced
        return ignored("must be a directory owned by uid " + name);
    }
    if (auto t = trees_.find(*uid); t != trees_.end()) {
        struct stat old {};
        if (fstat(t->second.fd.get(), &old) == 0 && old.st_ino == st.st_ino &&
            old.st_dev == st.st_dev) {
            if (rescan) {
                queue(true, {*uid, ""});
            }
            return;
        }
        drop_tree(*uid);
    }
    trees_[*uid] = Tree{std::move(fd), Owner{*uid, st.st_gid}, 0};
    queue(true, {*uid, ""});
    for (const auto& [mname, m] : machines_.all()) {
        if (m->spec.owner == *uid) {
            pending_.insert({*uid, mname});  // its status.json
            post_flush();
        }
    }
    spdlog::info("spool: tree of uid {} ({}/{})", *uid, dir_, name);
}

void Spool::drop_tree(uid_t uid) {
    for (auto it = watches_.begin(); it != watches_.end();) {
        if (it->second.uid == uid) {
            inotify_rm_watch(inotify_.native_handle(), it->first);
            it = watches_.erase(it);
        } else {
            ++it;
        }
    }
    std::erase_if(commands_, [uid](const auto& kv) { return kv.first.first == uid; });
    std::erase_if(pending_, [uid](const Key& k) { return k.first == uid; });
    if (trees_.erase(uid)) {
        spdlog::info("spool: tree of uid {} is gone", uid);
    }
}

void Spool::rescan_all() {
    // Trees whose directory went while events were lost.
    for (auto it = trees_.begin(); it != trees_.end();) {
        struct stat now {};
        struct stat held {};
        uid_t uid = it->first;
        ++it;
        if (fstatat(dir_fd_.get(), std::to_string(uid).c_str(), &now, AT_SYMLINK_NOFOLLOW) != 0 ||
            fstat(trees_[uid].fd.get(), &held) != 0 || now.st_ino != held.st_ino) {
            drop_tree(uid);
        }
    }
    Fd copy(dup(dir_fd_.get()));
    DIR* d = copy ? fdopendir(copy.get()) : nullptr;
    if (!d) {
        return spdlog::warn("spool: cannot list {}: {}", dir_, strerror(errno));
    }
    copy.release();
    lseek(dirfd(d), 0, SEEK_SET);
    while (dirent* e = readdir(d)) {
        std::string name = e->d_name;
        if (name != "." && name != "..") {
            add_tree(name, true);
        }
    }
    closedir(d);
}

// ---- work: directory scans and commands, bounded per reactor turn -----------------------

void Spool::queue(bool scan, const Key& key) {
    if (queued_.insert({scan, key}).second) {
        work_.push_back({scan, key});
    }
    if (!work_posted_) {
        work_posted_ = true;
        boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
            if (alive.lock()) {
                run_work();
            }
        });
    }
}

void Spool::run_work() {
    work_posted_ = false;
    for (size_t n = 0; n < kWorkPerTurn && !work_.empty(); ++n) {
        Work w = std::move(work_.front());
        work_.pop_front();
        queued_.erase({w.scan, w.key});
        if (w.scan) {
            scan(w.key.first, w.key.second);
        } else {
            take(w.key.first, w.key.second);
        }
    }
    if (work_.empty() && rescan_due_) {
        rescan_due_ = false;
        rescan_all();
    }
    if (!work_.empty() && !work_posted_) {
        work_posted_ = true;
        boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
            if (alive.lock()) {
                run_work();
            }
        });
    }
}

void Spool::scan(uid_t uid, const std::string& rel) {
    auto t = trees_.find(uid);
    if (t == trees_.end()) {
        return;
    }
    Tree& tree = t->second;
    int level = level_of(rel);
    if (level == 3) {
        if (Status st = check_name("machine", rel.substr(kMachineDirs.size())); !st) {
            return refuse(uid, "", "service/vm/", st);
        }
    }
    Fd fd;
    if (Status st = rel.empty() ? Status{} : open_dir(tree.fd.get(), rel, tree.owner, fd); !st) {
        if (st.code() != Errc::not_found) {
            refuse(uid, "", rel, st);
        }
        return;
    }
    int dir = rel.empty() ? tree.fd.get() : fd.get();
    int wd = inotify_add_watch(inotify_.native_handle(), proc_fd(dir).c_str(),
                               level == 3 ? kCommandMask : kDirMask);
    if (wd >= 0 && !watches_.count(wd) && level == 3 && tree.machine_dirs >= kMaxMachineDirs) {
        inotify_rm_watch(inotify_.native_handle(), wd);
        return refuse(uid, "", rel,
                      {Errc::conflict, "too many machine directories (at most " +
                                           std::to_string(kMaxMachineDirs) + " are watched)"});
    }
    if (wd < 0) {
        return refuse(uid, "", rel,
                      {Errc::unavailable, std::string("inotify: ") + strerror(errno)});
    }
    if (watches_.emplace(wd, Watch{uid, rel, level}).second && level == 3) {
        ++tree.machine_dirs;
    }
    if (level == 0) {
        queue(true, {uid, "service"});
    } else if (level == 1) {
        queue(true, {uid, "service/vm"});
    } else if (level == 3) {
        Key key{uid, rel.substr(kMachineDirs.size())};
        for (const char* f : kFiles) {
            commands_[key].ready.try_emplace(f, Seen::scanned);  // whatever is there now
        }
        queue(false, key);
    } else if (DIR* d = fdopendir(fd.release())) {
        size_t entries = 0, machines = 0;
        while (dirent* e = readdir(d)) {
            std::string name = e->d_name;
            Status st;
            if (++entries > kMaxDirEntries) {
                st = {Errc::too_large, "more than " + std::to_string(kMaxDirEntries) +
                                           " entries; only the first are looked at"};
            } else if (name == "." || name == ".." || !is_valid_name(name)) {
                continue;  // bad names were refused when they appeared
            } else if (++machines > kMaxMachineDirs) {
                st = {Errc::too_large, "more than " + std::to_string(kMaxMachineDirs) +
                                           " machine directories; the others are not watched"};
            }
            if (!st) {
                refuse(uid, "", rel, st);
                break;
            }
            queue(true, {uid, rel + "/" + name});
        }
        closedir(d);
    }
}

void Spool::take(uid_t uid, const std::string& name) {
    auto t = trees_.find(uid);
    auto c = commands_.find({uid, name});
    if (t == trees_.end() || c == commands_.end() || c->second.busy) {
        return;
    }
    Fd dir;
    if (Status st =
            open_dir(t->second.fd.get(), std::string(kMachineDirs) + name, t->second.owner, dir);
        !st) {
        c->second.ready.clear();
        return;
    }
    // Oldest first: by mtime, then ctime, then config, start, stop, destroy.
    std::vector<std::tuple<int64_t, int64_t, int, std::string>> files;
    auto& ready = c->second.ready;
    timespec now{};
    clock_gettime(CLOCK_REALTIME, &now);
    auto ns = [](const timespec& ts) { return int64_t(ts.tv_sec) * 1000000000 + ts.tv_nsec; };
    bool unsettled = false;
    for (auto it = ready.begin(); it != ready.end();) {
        struct stat st {};
        bool gone = fstatat(dir.get(), it->first.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0;
        bool plain = !gone && S_ISREG(st.st_mode) && st.st_nlink == 1;
        if (gone || (plain && it->second == Seen::created)) {
            it = ready.erase(it);  // a plain file still being written is taken once closed
            continue;
        }
        if (plain && it->second == Seen::scanned &&
            ns(now) - ns(st.st_ctim) < std::chrono::nanoseconds(kSettle).count()) {
            unsettled = true;  // its close may come, or it settles
            ++it;
            continue;
        }
        int order = static_cast<int>(std::find(std::begin(kFiles), std::end(kFiles), it->first) -
                                     std::begin(kFiles));
        files.emplace_back(ns(st.st_mtim), ns(st.st_ctim), order, it->first);
        ++it;
    }
    if (unsettled && !c->second.retry_armed) {
        c->second.retry_armed = true;
        auto timer = std::make_shared<boost::asio::steady_timer>(io_, kSettle);
        timer->async_wait([this, timer, alive = std::weak_ptr<bool>(alive_), uid,
                           name](boost::system::error_code) {
            if (alive.lock()) {
                if (auto c = commands_.find({uid, name}); c != commands_.end()) {
                    c->second.retry_armed = false;
                    queue(false, {uid, name});
                }
            }
        });
    }
    std::sort(files.begin(), files.end());
    if (unsettled) {
        return;  // it may be the oldest: nothing is taken before it
    }
    for (const auto& f : files) {
        const std::string& file = std::get<3>(f);
        ready.erase(file);
        if (handle(uid, name, dir.get(), file)) {
            c->second.busy = true;  // the rest waits for its end
            return;
        }
    }
}

bool Spool::handle(uid_t uid, const std::string& name, int dir, const std::string& file) {
    const Tree& tree = trees_.at(uid);
    std::string shown = std::string(kMachineDirs) + name + "/" + file;
    bool config = file == "config";
    Fd checked;
    Status st = check_file(dir, file, tree.owner, config ? kMaxConfigBytes : 0, checked);
    if (!st && st.code() == Errc::too_large && !config) {
        st = {Errc::bad_request, file + ": must be empty"};
    }
    std::string body;
    if (st && config) {
        st = read_checked(checked, kMaxConfigBytes, body);
    }
    if (st.code() == Errc::not_found) {
        return false;  // gone meanwhile
    }
    unlinkat(dir, file.c_str(), 0);  // taken, whatever it was (never a directory)
    if (!st) {
        refuse(uid, name, shown,
               {st.code(), std::string(kMachineDirs) + name + "/" + st.message()});
        return false;
    }
    note(uid, name, "spool.taken", shown);
    if (config) {
        apply_config(uid, name, body);
        return false;
    }
    auto done = [this, alive = std::weak_ptr<bool>(alive_), uid, name, shown](const Status& st) {
        if (alive.lock()) {
            finished(uid, name, shown, st);
        }
    };
    if (file == "destroy") {
        // Deleted, killed first if it runs (DELETE /v1/machines/NAME?force=true).
        machines_.remove(caller(uid), name, true, done);
        return true;
    }
    core::ActionArgs args;
    if (file == "start") {
        args.reason = "spool:start";
    }
    st =
        machines_.act(caller(uid), name, file == "start" ? core::Action::start : core::Action::stop,
                      args, [done](const Status& st, const core::Machine*) { done(st); });
    if (!st) {
        refuse(uid, name, shown, st);
        return false;
    }
    return true;
}

void Spool::apply_config(uid_t uid, const std::string& name, const std::string& body) {
    std::string shown = std::string(kMachineDirs) + name + "/config";
    core::Caller who = caller(uid);
    const core::Machine* m = nullptr;
    Status st = machines_.get(who, name, &m);
    bool create = st.code() == Errc::not_found;
    MachineSpec spec = create ? MachineSpec{} : st ? m->spec : MachineSpec{};
    std::set<std::string> seen;
    if (st || create) {
        st = decode_spec(body, spec, seen);
    }
    if (st && seen.count("name") && spec.name != name) {
        st = {Errc::bad_request, "its 'name' must be the directory's, " + json::quote(name)};
    }
    if (st && create) {
        spec.name = name;
        st = machines_.create(who, std::move(spec), &m);
    } else if (st) {
        st = machines_.update(who, name, std::move(spec), seen, &m);
    }
    if (!st) {
        return refuse(uid, name, shown, st);
    }
    note(uid, name, "spool.done", shown);
}

void Spool::finished(uid_t uid, const std::string& name, const std::string& file,
                     const Status& st) {
    auto c = commands_.find({uid, name});
    if (c == commands_.end()) {
        return;
    }
    c->second.busy = false;
    if (st) {
        note(uid, name, "spool.done", file);
    } else {
        refuse(uid, name, file, st);
    }
    queue(false, {uid, name});
}

core::Caller Spool::caller(uid_t uid) const {
    // As a unix-socket peer of that uid: its machines, or every one for root and admins.
    return core::Caller{uid, admins_.is_admin(uid), true, "unix"};
}

// ---- what the tree shows: status files and logs -----------------------------------------

void Spool::on_event(const core::Event& ev) {
    if (ev.machine.empty() || !trees_.count(ev.owner)) {
        return;
    }
    log(ev.owner, ev.machine, *ev.frame);
    // The status is written once per turn, from the machine as it stands then.
    pending_.insert({ev.owner, ev.machine});
    post_flush();
}

void Spool::post_flush() {
    if (!flush_posted_) {
        flush_posted_ = true;
        boost::asio::post(io_, [this, alive = std::weak_ptr<bool>(alive_)] {
            if (alive.lock()) {
                flush();
            }
        });
    }
}

void Spool::flush() {
    flush_posted_ = false;
    auto pending = std::move(pending_);
    pending_.clear();
    for (const auto& [uid, name] : pending) {
        if (auto t = trees_.find(uid); t != trees_.end()) {
            write_status(t->second, name);
        }
    }
}

void Spool::write_status(Tree& tree, const std::string& name) {
    std::string rel = "info/vm/" + name;
    auto it = machines_.all().find(name);
    Fd dir;
    if (it == machines_.all().end() || it->second->spec.owner != tree.owner.uid) {
        // Deleted: its status goes too.
        if (open_dir(tree.fd.get(), rel, tree.owner, dir)) {
            unlinkat(dir.get(), "status.json", 0);
            if (Fd vm; open_dir(tree.fd.get(), "info/vm", tree.owner, vm)) {
                unlinkat(vm.get(), name.c_str(), AT_REMOVEDIR);
            }
        }
        return;
    }
    Status st = make_dirs(tree.fd.get(), rel, tree.owner, dir);
    if (st) {
        st = replace_file(dir.get(), "status.json", machines_.to_json(*it->second) + "\n",
                          tree.owner);
    }
    if (!st) {
        refuse(tree.owner.uid, "", rel + "/status.json", st);
    }
}

void Spool::log(uid_t uid, const std::string& name, const std::string& line) {
    auto t = trees_.find(uid);
    if (t == trees_.end()) {
        return;
    }
    const Tree& tree = t->second;
    Fd dir;
    Status st = make_dirs(tree.fd.get(), name.empty() ? "logs" : "logs/vm", tree.owner, dir);
    if (st) {
        st = append_line(dir.get(), name.empty() ? "spool.log" : name + ".log", line + "\n",
                         tree.owner, kLogRotateBytes);
    }
    if (!st) {
        spdlog::debug("spool: uid {}: cannot log: {}", uid, st.message());
    }
}

void Spool::refuse(uid_t uid, const std::string& name, const std::string& file, const Status& st) {
    json::Writer w;
    w.begin_object()
        .field("time", now_rfc3339_us())
        .field("type", "spool.refused")
        .field("machine", name)
        .field("file", file)
        .field("error", st)
        .end_object();
    spdlog::debug("spool: uid {}: {} refused: {}", uid, file, st.message());
    log(uid, name, w.str());
}

void Spool::note(uid_t uid, const std::string& name, const char* type, const std::string& file) {
    json::Writer w;
    w.begin_object()
        .field("time", now_rfc3339_us())
        .field("type", type)
        .field("machine", name)
        .field("file", file)
        .end_object();
    log(uid, name, w.str());
}

}  // namespace hangar::spool
