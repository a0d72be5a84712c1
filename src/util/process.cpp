#include "util/process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <iterator>
#include <optional>

#include <spdlog/spdlog.h>
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
        : out(io), err(io), timer(io), limit(limit), done(std::move(done)) {
        out.data = &result.out;
        out.truncated = &result.out_truncated;
        err.data = &result.err;
        err.truncated = &result.err_truncated;
        err.eof = true;  // unless a second pipe is read
    }
    Stream out, err;
    boost::asio::steady_timer timer;
    std::unique_ptr<PidWatch> watch;
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
            std::exchange(done, nullptr)(Status{}, std::move(result));
        }
    }
};
}  // namespace

void run_capture(boost::asio::io_context& io, CaptureOptions opts,
                 std::function<void(const Status&, CaptureResult)> done) {
    int p[2] = {-1, -1}, q[2] = {-1, -1};
    if (pipe2(p, O_CLOEXEC) != 0 || (!opts.merge_stderr && pipe2(q, O_CLOEXEC) != 0)) {
        int e = errno;
        if (q[0] < 0 && !opts.merge_stderr && p[0] >= 0) {
            close(p[0]);
            close(p[1]);
        }
        return done({Errc::internal, std::string("pipe: ") + strerror(e)}, CaptureResult{});
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
        st = {Errc::internal, std::string("pidfd_open: ") + strerror(errno)};
        waitpid(pid, nullptr, 0);  // cannot happen for a child that is not yet reaped
    }
    if (!st) {
        close(p[0]);
        if (q[0] >= 0) {
            close(q[0]);
        }
        return done(st, CaptureResult{});
    }
    auto cmd = std::make_shared<Command>(io, opts.limit, std::move(done));
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
    if (opts.timeout.count() > 0) {
        cmd->timer.expires_after(opts.timeout);
        cmd->timer.async_wait([weak = std::weak_ptr<Command>(cmd), pid,
                               group = opts.new_session](boost::system::error_code ec) {
            auto self = weak.lock();
            if (ec || !self || self->exited) {
                return;
            }
            self->result.timed_out = true;
            group ? void(kill(-pid, SIGKILL)) : void(self->watch->signal(SIGKILL));
        });
    }
    cmd->read(cmd->out);
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
