#include "util/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/read.hpp>
#include <boost/asio/steady_timer.hpp>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

extern char** environ;

namespace hangar {

namespace {
struct SpawnActions {
    posix_spawn_file_actions_t fa;
    posix_spawnattr_t attr;
    SpawnActions() {
        posix_spawn_file_actions_init(&fa);
        posix_spawnattr_init(&attr);
    }
    ~SpawnActions() {
        posix_spawn_file_actions_destroy(&fa);
        posix_spawnattr_destroy(&attr);
    }
};
}  // namespace

Status spawn_process(const SpawnOptions& opts, pid_t& pid) {
    if (opts.argv.empty()) {
        return {Errc::internal, "spawn: empty argv"};
    }
    // Map the sources to high numbers first, so that a source equal to a target number
    // cannot be clobbered by an earlier dup2 or keep its close-on-exec flag.
    std::vector<int> high;
    auto cleanup = [&] {
        for (int fd : high) {
            close(fd);
        }
    };
    auto dup_high = [&](int fd) {
        int h = fcntl(fd, F_DUPFD_CLOEXEC, 64);
        if (h >= 0) {
            high.push_back(h);
        }
        return h;
    };
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) {
        return {Errc::internal, std::string("open /dev/null: ") + strerror(errno)};
    }
    high.push_back(devnull);
    int in = dup_high(opts.stdin_fd >= 0 ? opts.stdin_fd : devnull);
    int out = dup_high(opts.output_fd >= 0 ? opts.output_fd : devnull);
    int err = opts.error_fd >= 0 ? dup_high(opts.error_fd) : out;
    std::vector<std::pair<int, int>> mapped;
    int max_target = 2;
    for (auto [src, dst] : opts.fds) {
        int h = dup_high(src);
        if (h < 0) {
            cleanup();
            return {Errc::internal, std::string("spawn: dup: ") + strerror(errno)};
        }
        mapped.emplace_back(h, dst);
        max_target = std::max(max_target, dst);
    }
    if (in < 0 || out < 0 || err < 0) {
        cleanup();
        return {Errc::internal, std::string("spawn: dup: ") + strerror(errno)};
    }

    SpawnActions sa;
    posix_spawn_file_actions_adddup2(&sa.fa, in, 0);
    posix_spawn_file_actions_adddup2(&sa.fa, out, 1);
    posix_spawn_file_actions_adddup2(&sa.fa, err, 2);
    for (auto [h, dst] : mapped) {
        posix_spawn_file_actions_adddup2(&sa.fa, h, dst);
    }
    if (!opts.controlling_tty.empty()) {
        // Opened in the new session without O_NOCTTY: its controlling terminal (the descriptor
        // itself is closed again just below).
        posix_spawn_file_actions_addopen(&sa.fa, max_target + 1, opts.controlling_tty.c_str(),
                                         O_RDWR, 0);
    }
    posix_spawn_file_actions_addclosefrom_np(&sa.fa, max_target + 1);

    sigset_t none, all;
    sigemptyset(&none);
    sigfillset(&all);
    short flags = POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF;
    if (opts.new_session) {
        flags |= POSIX_SPAWN_SETSID;
    }
    posix_spawnattr_setflags(&sa.attr, flags);
    posix_spawnattr_setsigmask(&sa.attr, &none);
    posix_spawnattr_setsigdefault(&sa.attr, &all);

    std::vector<char*> argv;
    for (const auto& a : opts.argv) {
        argv.push_back(const_cast<char*>(a.c_str()));
    }
    argv.push_back(nullptr);
    std::vector<char*> envp;
    if (opts.env) {
        for (const auto& kv : *opts.env) {
            envp.push_back(const_cast<char*>(kv.c_str()));
        }
        envp.push_back(nullptr);
    }
    int rc = posix_spawnp(&pid, argv[0], &sa.fa, &sa.attr, argv.data(),
                          opts.env ? envp.data() : environ);
    cleanup();
    if (rc != 0) {
        return {Errc::unavailable, "cannot execute " + opts.argv[0] + ": " + strerror(rc)};
    }
    return {};
}

std::string find_program(const std::string& name) {
    if (name.find('/') != std::string::npos) {
        return access(name.c_str(), X_OK) == 0 ? name : std::string();
    }
    const char* path = getenv("PATH");
    std::string dirs = path && *path ? path : "/usr/bin:/bin";
    size_t i = 0;
    while (i <= dirs.size()) {
        size_t j = dirs.find(':', i);
        if (j == std::string::npos) {
            j = dirs.size();
        }
        std::string candidate = dirs.substr(i, j - i) + "/" + name;
        if (access(candidate.c_str(), X_OK) == 0) {
            return candidate;
        }
        i = j + 1;
    }
    return {};
}

int open_pidfd(pid_t pid) {
    return static_cast<int>(syscall(SYS_pidfd_open, pid, 0));
}

std::string ExitInfo::describe() const {
    if (!known) {
        return "status=unknown";
    }
    if (signal != 0) {
        const char* abbrev = sigabbrev_np(signal);
        return "signal=" + std::to_string(signal) +
               (abbrev ? std::string(" (") + abbrev + ")" : "");
    }
    return "status=" + std::to_string(code);
}

ExitInfo reap_pidfd(int pidfd) {
    ExitInfo info;
    siginfo_t si{};
    if (waitid(static_cast<idtype_t>(P_PIDFD), static_cast<id_t>(pidfd), &si, WEXITED | WNOHANG) ==
            0 &&
        si.si_pid != 0) {
        info.known = true;
        if (si.si_code == CLD_EXITED) {
            info.code = si.si_status;
        } else {
            info.signal = si.si_status;
        }
    }
    return info;
}

bool process_has_argument(pid_t pid, const std::string& needle) {
    std::ifstream in("/proc/" + std::to_string(pid) + "/cmdline", std::ios::binary);
    std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    size_t start = 0;
    while (start < all.size()) {
        size_t end = all.find('\0', start);
        if (end == std::string::npos) {
            end = all.size();
        }
        if (all.compare(start, end - start, needle) == 0) {
            return true;
        }
        start = end + 1;
    }
    return false;
}

PidWatch::PidWatch(boost::asio::io_context& io, pid_t pid, int pidfd) : pid_(pid), fd_(io, pidfd) {}

PidWatch::~PidWatch() {
    *alive_ = false;
    boost::system::error_code ec;
    fd_.close(ec);
}

void PidWatch::wait(Callback cb) {
    fd_.async_wait(boost::asio::posix::stream_descriptor::wait_read,
                   [this, alive = alive_, cb = std::move(cb)](boost::system::error_code ec) {
                       if (!*alive || ec) {
                           return;
                       }
                       exited_ = true;
                       cb(reap_pidfd(fd_.native_handle()));
                   });
}

bool PidWatch::signal(int sig) {
    if (exited_) {
        return false;
    }
    return syscall(SYS_pidfd_send_signal, fd_.native_handle(), sig, nullptr, 0) == 0;
}

namespace {
struct Command : std::enable_shared_from_this<Command> {
    struct Stream {
        explicit Stream(boost::asio::io_context& io) : sd(io) {}
        boost::asio::posix::stream_descriptor sd;
        std::string* data = nullptr;
        bool* truncated = nullptr;
        bool eof = false;
        char buf[16384];
    };
    Command(boost::asio::io_context& io, size_t limit,
            std::function<void(const Status&, CaptureResult)> done)
        : io(io), out(io), err(io), timer(io), limit(limit), done(std::move(done)) {
        out.data = &result.out;
        out.truncated = &result.out_truncated;
        err.data = &result.err;
        err.truncated = &result.err_truncated;
        err.eof = true;  // unless a second pipe is read
    }
    boost::asio::io_context& io;
    Stream out, err;
    boost::asio::steady_timer timer;
    std::unique_ptr<PidWatch> watch;
    std::string cgroup;  // the command's own, removed when it is done
    size_t limit;
    std::function<void(const Status&, CaptureResult)> done;
    CaptureResult result;
    bool exited = false;

    void read(Stream& s) {
        s.sd.async_read_some(
            boost::asio::buffer(s.buf),
            [self = shared_from_this(), &s](boost::system::error_code ec, size_t n) {
                size_t room = self->limit - std::min(self->limit, s.data->size());
                s.data->append(s.buf, std::min(n, room));
                *s.truncated = *s.truncated || n > room;
                if (ec) {
                    s.eof = true;
                    return self->maybe_done();
                }
                self->read(s);
            });
    }
    void maybe_done() {
        if (out.eof && err.eof && exited && done) {
            timer.cancel();
            if (!cgroup.empty()) {
                remove_cgroup_async(io, std::exchange(cgroup, {}));
            }
            std::exchange(done, nullptr)(Status{}, std::move(result));
        }
    }
};

// Run by the command's first process (the host's shell, before anything of the command runs):
// it moves itself into the cgroup ($0 is its cgroup.procs), then becomes the command.
constexpr const char* kJoinCgroup = "echo $$ > \"$0\" || exit 125; exec \"$@\"";
constexpr const char* kHostPath =
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// argv that runs `opts.argv` with `opts.env` inside `opts.cgroup`; "" in `error` unless the
// program cannot be found.
template <typename Options>
std::vector<std::string> in_cgroup(Options& opts, std::string& error) {
    std::string prog = find_program(opts.argv[0]);
    std::string env = find_program("env");
    if (prog.empty() || env.empty()) {
        error =
            "cannot execute " + (prog.empty() ? opts.argv[0] : std::string("env")) + ": not found";
        return {};
    }
    std::vector<std::string> argv = {"/bin/sh", "-c", kJoinCgroup, opts.cgroup + "/cgroup.procs"};
    if (opts.env) {
        // The shell would add PWD to an environment it passes on: env sets it exactly.
        argv.insert(argv.end(), {env, "-i", "--"});
        argv.insert(argv.end(), opts.env->begin(), opts.env->end());
        opts.env = std::vector<std::string>{kHostPath};
    }
    argv.push_back(prog);
    argv.insert(argv.end(), opts.argv.begin() + 1, opts.argv.end());
    return argv;
}
}  // namespace

std::string cgroup2_mount() {
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE ...
    std::ifstream in("/proc/self/mountinfo");
    std::string line;
    while (std::getline(in, line)) {
        size_t sep = line.find(" - ");
        if (sep == std::string::npos || line.compare(sep + 3, 8, "cgroup2 ") != 0) {
            continue;
        }
        std::istringstream fields(line.substr(0, sep));
        std::string id, parent, dev, root, mountpoint;
        fields >> id >> parent >> dev >> root >> mountpoint;
        if (root != "/") {
            continue;
        }
        std::string out;  // undo the octal escapes (\040 for a blank, ...)
        for (size_t i = 0; i < mountpoint.size(); ++i) {
            std::string code = mountpoint.substr(i + 1, 3);
            if (mountpoint[i] == '\\' && code.size() == 3 &&
                code.find_first_not_of("01234567") == std::string::npos) {
                out += static_cast<char>(std::stoi(code, nullptr, 8));
                i += 3;
            } else {
                out += mountpoint[i];
            }
        }
        return out;
    }
    return {};
}

std::string cgroup_dir_of(pid_t pid) {
    std::string mount = cgroup2_mount();
    if (mount.empty()) {
        return {};
    }
    std::ifstream in("/proc/" + std::to_string(pid) + "/cgroup");
    std::string line;
    while (std::getline(in, line)) {
        if (line.rfind("0::/", 0) == 0) {
            std::string path = line.substr(3);
            return mount + (path == "/" ? std::string() : path);
        }
    }
    return {};
}

Status make_cgroup(const std::string& parent, const std::string& name, std::string& dir) {
    dir = parent + "/" + name;
    if (mkdir(dir.c_str(), 0755) != 0) {
        return {Errc::internal, "cannot make cgroup " + dir + ": " + strerror(errno)};
    }
    return {};
}

void kill_cgroup(const std::string& dir) {
    int fd = open((dir + "/cgroup.kill").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (write(fd, "1", 1) != 1 && errno != ENOENT && errno != ENODEV) {
            spdlog::warn("cannot kill cgroup {}: {}", dir, strerror(errno));
        }
        close(fd);
        return;
    }
    if (errno != ENOENT) {
        return;
    }
    // Before Linux 5.14: each process listed (one forking meanwhile is caught by a retry).
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        if (e.is_directory(ec)) {
            kill_cgroup(e.path().string());
        }
    }
    std::ifstream procs(dir + "/cgroup.procs");
    pid_t pid = 0;
    while (procs >> pid) {
        kill(pid, SIGKILL);
    }
}

namespace {
// Removes `dir` and the cgroups below it; true when it is gone.
bool remove_cgroup_tree(const std::string& dir) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        if (e.is_directory(ec)) {
            remove_cgroup_tree(e.path().string());
        }
    }
    return rmdir(dir.c_str()) == 0 || errno == ENOENT;
}

void retry_remove_cgroup(std::shared_ptr<boost::asio::steady_timer> timer, std::string dir,
                         int left) {
    kill_cgroup(dir);
    if (remove_cgroup_tree(dir)) {
        return;
    }
    if (left == 0) {
        spdlog::warn("cgroup {} still has processes; left in place", dir);
        return;
    }
    timer->expires_after(std::chrono::milliseconds(50));
    timer->async_wait([timer, dir = std::move(dir), left](boost::system::error_code ec) mutable {
        if (!ec) {
            retry_remove_cgroup(std::move(timer), std::move(dir), left - 1);
        }
    });
}
}  // namespace

void reap_later(boost::asio::io_context& io, pid_t pid) {
    if (waitpid(pid, nullptr, WNOHANG) != 0) {
        return;  // reaped, or not ours to reap
    }
    auto timer = std::make_shared<boost::asio::steady_timer>(io, std::chrono::milliseconds(10));
    timer->async_wait([timer, &io, pid](boost::system::error_code ec) {
        if (!ec) {
            reap_later(io, pid);
        }
    });
}

void remove_cgroup_async(boost::asio::io_context& io, const std::string& dir) {
    retry_remove_cgroup(std::make_shared<boost::asio::steady_timer>(io), dir, 100);
}

void run_capture(boost::asio::io_context& io, CaptureOptions opts,
                 std::function<void(const Status&, CaptureResult)> done) {
    // Not started: the cgroup is run_capture's to remove all the same.
    auto fail = [&](Status st) {
        if (!opts.cgroup.empty()) {
            remove_cgroup_async(io, opts.cgroup);
        }
        done(st, CaptureResult{});
    };
    if (!opts.cgroup.empty()) {
        std::string error;
        std::vector<std::string> argv = in_cgroup(opts, error);
        if (!error.empty()) {
            return fail({Errc::unavailable, error});
        }
        opts.argv = std::move(argv);
    }
    int p[2] = {-1, -1}, q[2] = {-1, -1};
    if (pipe2(p, O_CLOEXEC) != 0 || (!opts.merge_stderr && pipe2(q, O_CLOEXEC) != 0)) {
        int e = errno;
        if (q[0] < 0 && !opts.merge_stderr && p[0] >= 0) {
            close(p[0]);
            close(p[1]);
        }
        return fail({Errc::internal, std::string("pipe: ") + strerror(e)});
    }
    SpawnOptions so;
    so.argv = std::move(opts.argv);
    so.env = std::move(opts.env);
    so.fds = std::move(opts.fds);
    so.output_fd = p[1];
    so.error_fd = q[1];
    so.new_session = opts.new_session;
    pid_t pid = 0;
    Status st = spawn_process(so, pid);
    close(p[1]);
    if (q[1] >= 0) {
        close(q[1]);
    }
    int pidfd = st ? open_pidfd(pid) : -1;
    if (st && pidfd < 0) {
        // EMFILE, ENFILE, ENOMEM: a child nobody can watch is killed, and reaped without
        // blocking the reactor.
        st = {Errc::internal, std::string("pidfd_open: ") + strerror(errno)};
        kill(opts.new_session ? -pid : pid, SIGKILL);
        reap_later(io, pid);
    }
    if (!st) {
        close(p[0]);
        if (q[0] >= 0) {
            close(q[0]);
        }
        return fail(st);
    }
    auto cmd = std::make_shared<Command>(io, opts.limit, std::move(done));
    cmd->cgroup = opts.cgroup;
    cmd->out.sd.assign(p[0]);
    if (q[0] >= 0) {
        cmd->err.sd.assign(q[0]);
        cmd->err.eof = false;
        cmd->read(cmd->err);
    }
    cmd->watch = std::make_unique<PidWatch>(io, pid, pidfd);
    cmd->watch->wait([cmd](ExitInfo info) {
        cmd->result.exit = info;
        cmd->exited = true;
        if (!cmd->cgroup.empty()) {
            kill_cgroup(cmd->cgroup);  // what it started ends with it
        }
        if (!cmd->out.eof || !cmd->err.eof) {
            // Something it left behind may hold the pipes open: read on for a moment only.
            cmd->timer.expires_after(std::chrono::seconds(2));
            cmd->timer.async_wait(
                [weak = std::weak_ptr<Command>(cmd)](boost::system::error_code ec) {
                    if (auto self = weak.lock(); self && !ec) {
                        boost::system::error_code ignored;
                        self->out.sd.close(ignored);
                        self->err.sd.close(ignored);
                    }
                });
        }
        cmd->maybe_done();
    });
    // Ends the command now: its process group (or the command alone) and its cgroup.
    auto end_now = [weak = std::weak_ptr<Command>(cmd), pid,
                    group = opts.new_session](bool timed_out) {
        auto self = weak.lock();
        if (!self || self->exited) {
            return;
        }
        self->result.timed_out = timed_out;
        group ? void(kill(-pid, SIGKILL)) : void(self->watch->signal(SIGKILL));
        if (!self->cgroup.empty()) {
            kill_cgroup(self->cgroup);
        }
    };
    if (opts.kill_switch) {
        *opts.kill_switch = [end_now] { end_now(false); };
    }
    if (opts.timeout.count() > 0) {
        cmd->timer.expires_after(opts.timeout);
        cmd->timer.async_wait([end_now](boost::system::error_code ec) {
            if (!ec) {
                end_now(true);
            }
        });
    }
    cmd->read(cmd->out);
}

PtyCommand::PtyCommand(boost::asio::io_context& io) : io_(io), master_(io) {}

Status PtyCommand::start(boost::asio::io_context& io, PtyOptions opts,
                         std::shared_ptr<PtyCommand>& out) {
    auto fail = [&](Status st) {
        if (!opts.cgroup.empty()) {
            remove_cgroup_async(io, opts.cgroup);
        }
        return st;
    };
    if (opts.argv.empty()) {
        return fail({Errc::internal, "pty: empty argv"});
    }
    if (!opts.cgroup.empty()) {
        std::string error;
        std::vector<std::string> argv = in_cgroup(opts, error);
        if (!error.empty()) {
            return fail({Errc::unavailable, error});
        }
        opts.argv = std::move(argv);
    }
    int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC | O_NONBLOCK);
    char name[128];
    if (master < 0 || unlockpt(master) != 0 || ptsname_r(master, name, sizeof name) != 0) {
        int e = errno;
        if (master >= 0) {
            close(master);
        }
        return fail({Errc::internal, std::string("cannot make a pty: ") + strerror(e)});
    }
    int slave = open(name, O_RDWR | O_NOCTTY | O_CLOEXEC);
    if (slave < 0) {
        int e = errno;
        close(master);
        return fail({Errc::internal, std::string("open ") + name + ": " + strerror(e)});
    }
    winsize ws{};
    ws.ws_col = opts.cols;
    ws.ws_row = opts.rows;
    ioctl(slave, TIOCSWINSZ, &ws);
    SpawnOptions so;
    so.argv = std::move(opts.argv);
    so.env = std::move(opts.env);
    so.stdin_fd = so.output_fd = slave;
    so.new_session = true;
    so.controlling_tty = name;
    pid_t pid = 0;
    Status st = spawn_process(so, pid);
    close(slave);  // the command's alone: the master reads EIO once every copy is closed
    int pidfd = st ? open_pidfd(pid) : -1;
    if (st && pidfd < 0) {
        st = {Errc::internal, std::string("pidfd_open: ") + strerror(errno)};
        ::kill(-pid, SIGKILL);
        reap_later(io, pid);
    }
    if (!st) {
        close(master);
        return fail(st);
    }
    std::shared_ptr<PtyCommand> cmd(new PtyCommand(io));
    cmd->master_.assign(master);
    cmd->cgroup_ = std::move(opts.cgroup);
    cmd->watch_ = std::make_unique<PidWatch>(io, pid, pidfd);
    cmd->watch_->wait([weak = std::weak_ptr<PtyCommand>(cmd)](ExitInfo info) {
        if (auto self = weak.lock()) {
            self->ended(info);
        }
    });
    out = std::move(cmd);
    return {};
}

PtyCommand::~PtyCommand() {
    kill();
    if (io_.stopped()) {
        return;  // hangard is ending: no more timers (the next one removes the cgroup)
    }
    if (!exited_ && watch_) {
        reap_later(io_, watch_->pid());
    }
    if (!cgroup_.empty()) {
        remove_cgroup_async(io_, cgroup_);
    }
}

void PtyCommand::ended(ExitInfo info) {
    exited_ = true;
    exit_ = info;
    if (!cgroup_.empty() && !hung_up_) {
        // What it started ends with it; after a hang-up, at the end of the grace (the rest of
        // the session may still be handling its SIGHUP).
        kill_cgroup(cgroup_);
    }
    if (on_exit_) {
        std::exchange(on_exit_, nullptr)(info);
    }
}

void PtyCommand::on_exit(std::function<void(ExitInfo)> cb) {
    if (!exited_) {
        on_exit_ = std::move(cb);
        return;
    }
    boost::asio::post(io_, [cb = std::move(cb), info = exit_] { cb(info); });
}

Status PtyCommand::resize(unsigned cols, unsigned rows) {
    winsize ws{};
    ws.ws_col = static_cast<unsigned short>(std::min(cols, 0xffffu));
    ws.ws_row = static_cast<unsigned short>(std::min(rows, 0xffffu));
    if (!master_.is_open() || ioctl(master_.native_handle(), TIOCSWINSZ, &ws) != 0) {
        return {Errc::internal, std::string("TIOCSWINSZ: ") + strerror(errno)};
    }
    return {};
}

void PtyCommand::hang_up(std::chrono::milliseconds grace) {
    boost::system::error_code ignored;
    master_.close(ignored);
    if (exited_ || hung_up_) {
        return;  // exited first: all of it was killed then
    }
    hung_up_ = true;
    if (io_.stopped()) {
        return kill();  // hangard is ending
    }
    auto timer = std::make_shared<boost::asio::steady_timer>(io_, grace);
    timer->async_wait([self = shared_from_this(), timer](boost::system::error_code ec) {
        if (!ec) {
            self->kill();
        }
    });
}

void PtyCommand::kill() {
    if (!exited_ && watch_) {
        // Not reaped yet, so the PID (the session's and its process group's) is still ours.
        ::kill(-watch_->pid(), SIGKILL);
    }
    if (!cgroup_.empty()) {
        kill_cgroup(cgroup_);
    }
}

void run_command(boost::asio::io_context& io, std::vector<std::string> argv, size_t limit,
                 CommandDone done) {
    CaptureOptions opts;
    opts.argv = std::move(argv);
    opts.limit = limit;
    opts.merge_stderr = true;
    run_capture(io, std::move(opts), [done = std::move(done)](const Status& st, CaptureResult r) {
        done(st, r.exit, std::move(r.out));
    });
}

std::string tail_of(std::string out) {
    while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) {
        out.pop_back();
    }
    if (out.size() > 400) {
        out = "..." + out.substr(out.size() - 400);
    }
    return out;
}

Status remove_tree_async(boost::asio::io_context& io, const std::string& path, std::string trash) {
    if (trash.empty()) {
        trash = path;
    }
    if (trash != path && ::rename(path.c_str(), trash.c_str()) != 0) {
        if (errno == ENOENT) {
            return {};
        }
        return {Errc::internal, "cannot move " + path + " aside: " + strerror(errno)};
    }
    run_command(io, {"rm", "-rf", "--one-file-system", "--", trash}, 64 * 1024,
                [trash](const Status& st, const ExitInfo& exit, std::string out) {
                    if (!st || exit.code != 0 || exit.signal != 0) {
                        spdlog::warn("could not remove {}: {}", trash,
                                     st ? tail_of(out) : st.message());
                    }
                });
    return {};
}

}  // namespace hangar
