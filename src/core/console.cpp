#include "core/console.hpp"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "hangar/machine_files.hpp"
#include "util/json.hpp"
#include "util/metrics.hpp"
#include "util/reactor.hpp"
#include "util/time.hpp"

namespace hangar::core {

namespace {
constexpr size_t kInotifyBuffer = 64 * 1024;
// Read from the file in one turn of the reactor at most; the rest in the next turns.
constexpr size_t kMaxReadPerTurn = 4 << 20;
constexpr auto kBatch = std::chrono::milliseconds(5);

// The console file of a machine, opened for reading: a regular file, never followed
// through a link (the machine directory is hangard's, the file QEMU's or systemd's).
int open_console_file(const std::filesystem::path& file, struct stat& st) {
    int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) {
        return -1;
    }
    if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        ::close(fd);
        errno = EINVAL;
        return -1;
    }
    return fd;
}

// pread of up to `max` bytes at `offset`; "" at the end or on an error.
std::string read_at(int fd, uint64_t offset, size_t max) {
    std::string out(max, '\0');
    size_t got = 0;
    while (got < max) {
        ssize_t n = ::pread(fd, out.data() + got, max - got, static_cast<off_t>(offset + got));
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            break;
        }
        got += static_cast<size_t>(n);
    }
    out.resize(got);
    return out;
}
}  // namespace

Consoles::Consoles(boost::asio::io_context& io, Machines& machines, EventBus& events,
                   ConsoleLimits limits)
    : io_(io), machines_(machines), events_(events), limits_(limits) {
    inotify_fd_ = ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC);
    if (inotify_fd_ < 0) {
        spdlog::warn("consoles: inotify unavailable ({}): live console output is off",
                     std::strerror(errno));
    } else {
        inotify_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, inotify_fd_);
        inotify_buf_ = std::make_unique<char[]>(kInotifyBuffer);
        batch_ = std::make_unique<boost::asio::steady_timer>(io_);
        watch_inotify();
    }
    subscription_ = events_.subscribe([this](const Event& e) { on_event(e); });
    machines_.set_reset_listener([this](const std::string& machine, const std::string& why) {
        if (Stream* s = stream_of(machine)) {
            json::Writer w;
            w.begin_object().field("type", "reset").field("reason", why);
            note_all(*s, std::move(w));
        }
    });
}

Consoles::~Consoles() {
    events_.unsubscribe(subscription_);
    machines_.set_reset_listener(nullptr);
    if (inotify_) {
        batch_->cancel();
        boost::system::error_code ignored;
        inotify_->close(ignored);  // closes inotify_fd_ and every watch
    }
}

// Output that keeps coming is read at most every kBatch: after a read, the inotify queue is
// left alone for kBatch, and the kernel folds the writes meanwhile into one event per file.
// A flood goes out in fewer, larger frames, and hangard does not wake for every byte QEMU's
// serial port writes; the echo of a keystroke after a quiet spell goes out at once.
void Consoles::watch_inotify() {
    inotify_->async_wait(
        boost::asio::posix::stream_descriptor::wait_read, [this](boost::system::error_code ec) {
            if (ec) {
                return;  // closed
            }
            for (;;) {
                ssize_t n = ::read(inotify_fd_, inotify_buf_.get(), kInotifyBuffer);
                if (n <= 0) {
                    break;
                }
                on_inotify(inotify_buf_.get(), static_cast<size_t>(n));
            }
            batch_->expires_after(kBatch);
            batch_->async_wait([this](boost::system::error_code ec) {
                if (!ec) {
                    watch_inotify();
                }
            });
        });
}

void Consoles::on_inotify(const char* buf, size_t n) {
    HANGAR_ASSERT_REACTOR();
    std::string file_name = MachineFiles("").console_log().filename().string();
    std::set<std::string> touched;
    for (size_t off = 0; off + sizeof(inotify_event) <= n;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
        off += sizeof(inotify_event) + ev->len;
        auto it = by_wd_.find(ev->wd);
        if (it == by_wd_.end()) {
            continue;
        }
        if (ev->mask & IN_IGNORED) {
            // The directory is gone (the machine was deleted): its watch with it.
            if (Stream* s = stream_of(it->second)) {
                s->wd = -1;
            }
            by_wd_.erase(it);
            continue;
        }
        if (ev->len > 0 && file_name == ev->name) {
            touched.insert(it->second);
        }
    }
    for (const auto& machine : touched) {
        if (Stream* s = stream_of(machine)) {
            catch_up(*s);
        }
    }
}

Consoles::Stream* Consoles::stream_of(const std::string& machine) {
    auto it = streams_.find(machine);
    return it == streams_.end() ? nullptr : &it->second;
}

Consoles::Stream& Consoles::follow(const std::string& machine) {
    if (Stream* s = stream_of(machine)) {
        return *s;
    }
    Stream& s = streams_[machine];
    s.machine = machine;
    MachineFiles files(machines_.machine_dir(machine));
    s.file = files.console_log();
    if (inotify_fd_ >= 0) {
        s.wd = ::inotify_add_watch(inotify_fd_, files.dir.c_str(),
                                   IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_ONLYDIR);
        if (s.wd >= 0) {
            by_wd_[s.wd] = machine;
        } else {
            spdlog::warn("{}: cannot follow the console ({})", machine, std::strerror(errno));
        }
    }
    // The ring starts with the newest bytes the file has.
    struct stat st {};
    int fd = open_console_file(s.file, st);
    if (fd >= 0) {
        uint64_t size = static_cast<uint64_t>(st.st_size);
        s.end = size > limits_.ring_bytes ? size - limits_.ring_bytes : 0;
        ::close(fd);
    }
    catch_up(s);
    return s;
}

void Consoles::unfollow(Stream& s) {
    if (s.wd >= 0) {
        by_wd_.erase(s.wd);
        ::inotify_rm_watch(inotify_fd_, s.wd);
    }
    streams_.erase(s.machine);
}

void Consoles::catch_up(Stream& s) {
    struct stat st {};
    int fd = open_console_file(s.file, st);
    if (fd < 0) {
        return;  // not made yet: IN_CREATE comes when it is
    }
    uint64_t size = static_cast<uint64_t>(st.st_size);
    if (size < s.end) {
        // The file was cut or made anew: what was past its end is gone. The stream goes on
        // from where the file now ends; viewers past it hear of a gap.
        spdlog::warn("{}: console file shrank from {} to {} bytes", s.machine, s.end, size);
        s.ring.clear();
        s.ring_bytes = 0;
        s.end = size;
        for (const auto& id : s.viewers) {
            auto& v = viewers_.at(id);
            if (v.cursor > size) {
                if (auto face = v.face.lock()) {
                    json::Writer w;
                    face->note(w.begin_object()
                                   .field("type", "gap")
                                   .field("from", v.cursor)
                                   .field("offset", size)
                                   .end_object()
                                   .take());
                }
                v.cursor = size;
            }
        }
    }
    size_t budget = kMaxReadPerTurn;
    bool more = false;
    while (s.end < size) {
        if (budget == 0) {
            more = true;
            break;
        }
        size_t want = static_cast<size_t>(std::min<uint64_t>(size - s.end, limits_.chunk));
        std::string bytes = read_at(fd, s.end, want);
        if (bytes.empty()) {
            break;
        }
        budget -= std::min(budget, bytes.size());
        s.ring_bytes += bytes.size();
        s.bytes_total += bytes.size();
        uint64_t offset = s.end;
        s.end += bytes.size();
        s.ring.push_back({offset, std::make_shared<const std::string>(std::move(bytes))});
        while (s.ring_bytes > limits_.ring_bytes && s.ring.size() > 1) {
            s.ring_bytes -= s.ring.front().bytes->size();
            s.ring.pop_front();
        }
    }
    ::close(fd);
    // A viewer that has been live and is now behind the ring cannot keep up: it goes, with
    // the offset to come back from.
    uint64_t oldest = s.ring.empty() ? s.end : s.ring.front().offset;
    std::vector<std::string> slow;
    for (const auto& id : s.viewers) {
        const auto& v = viewers_.at(id);
        if (v.live && !v.ended && v.cursor < oldest) {
            slow.push_back(id);
        }
    }
    for (const auto& id : slow) {
        auto& v = viewers_.at(id);
        v.ended = true;
        ++closed_slow_;
        std::string reason = "viewer too slow: " + std::to_string(s.end - v.cursor) +
                             " bytes behind; reconnect with from=" + std::to_string(v.cursor);
        spdlog::warn("{}: console viewer {} {}", s.machine, id, reason);
        if (auto face = v.face.lock()) {
            face->end(reason);
        }
    }
    for (const auto& id : s.viewers) {
        if (auto face = viewers_.at(id).face.lock()) {
            face->wake();
        }
    }
    if (more) {
        boost::asio::post(io_, [this, machine = s.machine] {
            if (Stream* s = stream_of(machine)) {
                catch_up(*s);
            }
        });
    }
}

Status Consoles::attach(const Caller& caller, const std::string& name, std::optional<uint64_t> from,
                        bool readonly, std::weak_ptr<ConsoleViewer> viewer, Attached* out) {
    HANGAR_ASSERT_REACTOR();
    const Machine* m = nullptr;
    if (Status st = machines_.get(caller, name, &m); !st) {
        return st;
    }
    if (viewers_.size() >= limits_.max_viewers_total) {
        return {Errc::unavailable, "too many console viewers on this host (" +
                                       std::to_string(limits_.max_viewers_total) +
                                       "); try again later"};
    }
    Stream* existing = stream_of(name);
    if (existing && existing->viewers.size() >= limits_.max_viewers) {
        return {Errc::unavailable, "too many viewers on the console of " + name + " (" +
                                       std::to_string(limits_.max_viewers) + ")"};
    }
    Stream& s = follow(name);
    if (from && *from > s.end) {
        Status st{Errc::bad_request, "from=" + std::to_string(*from) +
                                         " is beyond the end of the console (" +
                                         std::to_string(s.end) + " bytes)"};
        if (s.viewers.empty()) {
            unfollow(s);  // `s` is gone
        }
        return st;
    }
    std::string id = "v" + std::to_string(next_viewer_++);
    Viewer& v = viewers_[id];
    v.machine = name;
    v.uid = caller.uid;
    v.readonly = readonly;
    v.since = now_rfc3339();
    v.face = std::move(viewer);
    v.cursor = from ? *from : (s.end > limits_.default_replay ? s.end - limits_.default_replay : 0);
    v.tokens = static_cast<double>(limits_.input_burst);
    v.refill = std::chrono::steady_clock::now();
    s.viewers.push_back(id);
    *out = {id, v.cursor, s.end};
    publish_viewer(v, id, true, "");
    viewers_changed(name);
    return {};
}

void Consoles::detach(const std::string& id, const std::string& reason) {
    auto it = viewers_.find(id);
    if (it == viewers_.end()) {
        return;
    }
    Viewer v = std::move(it->second);
    viewers_.erase(it);
    if (Stream* s = stream_of(v.machine)) {
        s->viewers.erase(std::remove(s->viewers.begin(), s->viewers.end(), id), s->viewers.end());
        if (s->viewers.empty()) {
            unfollow(*s);
        }
    }
    publish_viewer(v, id, false, reason);
    viewers_changed(v.machine);
}

std::shared_ptr<const std::string> Consoles::read(const std::string& id, size_t max,
                                                  uint64_t* offset) {
    auto it = viewers_.find(id);
    if (it == viewers_.end()) {
        return nullptr;
    }
    Viewer& v = it->second;
    Stream* s = stream_of(v.machine);
    if (!s || v.cursor >= s->end) {
        v.live = true;
        return nullptr;
    }
    max = std::max<size_t>(1, std::min(max, limits_.chunk));
    *offset = v.cursor;
    if (!s->ring.empty() && v.cursor >= s->ring.front().offset) {
        // The chunk holding the cursor: the last one starting at or before it.
        auto c = std::upper_bound(s->ring.begin(), s->ring.end(), v.cursor,
                                  [](uint64_t o, const Chunk& ch) { return o < ch.offset; });
        --c;
        size_t skip = static_cast<size_t>(v.cursor - c->offset);
        std::shared_ptr<const std::string> out;
        if (skip == 0 && c->bytes->size() <= max) {
            out = c->bytes;  // shared by every viewer
        } else {
            out = std::make_shared<const std::string>(c->bytes->substr(skip, max));
        }
        v.cursor += out->size();
        return out;
    }
    // Behind the ring: from the file.
    struct stat st {};
    int fd = open_console_file(s->file, st);
    std::string bytes;
    if (fd >= 0) {
        bytes =
            read_at(fd, v.cursor, static_cast<size_t>(std::min<uint64_t>(max, s->end - v.cursor)));
        ::close(fd);
    }
    if (bytes.empty()) {
        return nullptr;
    }
    v.cursor += bytes.size();
    return std::make_shared<const std::string>(std::move(bytes));
}

Status Consoles::input(const std::string& id, std::string_view bytes) {
    HANGAR_ASSERT_REACTOR();
    auto it = viewers_.find(id);
    if (it == viewers_.end()) {
        return {Errc::not_found, "no such console viewer"};
    }
    Viewer& v = it->second;
    if (v.readonly) {
        return {Errc::forbidden, "this viewer joined read-only: its input is ignored"};
    }
    auto now = std::chrono::steady_clock::now();
    double elapsed = std::chrono::duration<double>(now - v.refill).count();
    v.refill = now;
    v.tokens = std::min(static_cast<double>(limits_.input_burst),
                        v.tokens + elapsed * static_cast<double>(limits_.input_rate));
    if (v.ended) {
        return {Errc::unavailable, "this viewer is being closed"};
    }
    if (static_cast<double>(bytes.size()) > v.tokens) {
        v.ended = true;
        std::string reason =
            "console input faster than " + std::to_string(limits_.input_rate / 1024) + " KiB/s";
        if (auto face = v.face.lock()) {
            face->end(reason);
        }
        return {Errc::too_large, reason};
    }
    v.tokens -= static_cast<double>(bytes.size());
    Status st = machines_.console_input(v.machine, bytes);
    if (st) {
        input_bytes_ += bytes.size();
    }
    return st;
}

Status Consoles::resize(const std::string& id, unsigned cols, unsigned rows) {
    auto it = viewers_.find(id);
    if (it == viewers_.end()) {
        return {Errc::not_found, "no such console viewer"};
    }
    if (cols == 0 || rows == 0 || cols > 1000 || rows > 1000) {
        return {Errc::bad_request, "a console size is 1 to 1000 columns and rows"};
    }
    if (it->second.readonly) {
        return {};  // a read-only viewer does not change the size others see
    }
    return machines_.console_resize(it->second.machine, cols, rows);
}

void Consoles::on_event(const Event& e) {
    if (!e.kind || e.machine.empty()) {
        return;
    }
    Stream* s = stream_of(e.machine);
    if (!s) {
        return;
    }
    if (*e.kind == EventType::machine_deleted) {
        end_viewers(*s, "the machine was deleted");
        return;
    }
    const auto* p = e.data<MachineStateChanged>();
    if (!p) {
        return;
    }
    json::Writer w;
    w.begin_object()
        .field("type", "state")
        .field("from", to_string(p->from))
        .field("state", to_string(p->to))
        .field("reason", p->reason);
    note_all(*s, std::move(w));
}

void Consoles::note_all(Stream& s, json::Writer w) {
    // What the guest printed before comes first.
    catch_up(s);
    std::string note = w.field("offset", s.end).end_object().take();
    for (const auto& id : s.viewers) {
        if (auto face = viewers_.at(id).face.lock()) {
            face->note(note);
        }
    }
}

void Consoles::end_viewers(Stream& s, const std::string& reason) {
    auto ids = s.viewers;
    for (const auto& id : ids) {
        auto it = viewers_.find(id);
        if (it != viewers_.end()) {
            if (auto face = it->second.face.lock()) {
                face->end(reason);
            }
        }
    }
}

void Consoles::publish_viewer(const Viewer& v, const std::string& id, bool attached,
                              const std::string& reason) {
    const Machine* m = nullptr;
    auto it = machines_.all().find(v.machine);
    if (it == machines_.all().end()) {
        return;
    }
    m = it->second.get();
    if (attached) {
        events_.publish(ConsoleAttached{id, v.uid, v.readonly}, v.machine, m->spec.owner);
    } else {
        events_.publish(ConsoleDetached{id, v.uid, v.readonly, reason}, v.machine, m->spec.owner);
    }
}

void Consoles::viewers_changed(const std::string& machine) {
    json::Writer w;
    w.begin_array();
    for (const auto& info : viewers(machine)) {
        w.begin_object()
            .field("id", info.id)
            .field("uid", info.uid)
            .field("readonly", info.readonly)
            .field("since", info.since)
            .end_object();
    }
    w.end_array();
    machines_.set_console_viewers(machine, w.take());
}

std::vector<ConsoleViewerInfo> Consoles::viewers(const std::string& machine) const {
    std::vector<ConsoleViewerInfo> out;
    auto it = streams_.find(machine);
    if (it == streams_.end()) {
        return out;
    }
    for (const auto& id : it->second.viewers) {
        const auto& v = viewers_.at(id);
        out.push_back({id, v.uid, v.readonly, v.since});
    }
    return out;
}

void Consoles::render_metrics(std::string& out) const {
    metrics::header(out, "hangar_console_viewers", "gauge", "Console viewers attached");
    out += "hangar_console_viewers " + std::to_string(viewers_.size()) + "\n";
    metrics::header(out, "hangar_console_followed", "gauge",
                    "Consoles followed (with at least one viewer)");
    out += "hangar_console_followed " + std::to_string(streams_.size()) + "\n";
    uint64_t bytes = 0;
    for (const auto& [name, s] : streams_) {
        bytes += s.bytes_total;
    }
    metrics::header(out, "hangar_console_output_bytes", "gauge",
                    "Console output read for the consoles followed now");
    out += "hangar_console_output_bytes " + std::to_string(bytes) + "\n";
    metrics::header(out, "hangar_console_input_bytes_total", "counter",
                    "Console input passed to machines");
    out += "hangar_console_input_bytes_total " + std::to_string(input_bytes_) + "\n";
    metrics::header(out, "hangar_console_viewers_closed_slow_total", "counter",
                    "Console viewers closed for not keeping up");
    out += "hangar_console_viewers_closed_slow_total " + std::to_string(closed_slow_) + "\n";
}

}  // namespace hangar::core
