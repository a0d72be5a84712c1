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

#include <boost/asio/read.hpp>

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
    if (in < 0 || out < 0) {
        cleanup();
        return {Errc::internal, std::string("spawn: dup: ") + strerror(errno)};
    }

    SpawnActions sa;
    posix_spawn_file_actions_adddup2(&sa.fa, in, 0);
    posix_spawn_file_actions_adddup2(&sa.fa, out, 1);
    posix_spawn_file_actions_adddup2(&sa.fa, out, 2);
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
    int rc = posix_spawnp(&pid, argv[0], &sa.fa, &sa.attr, argv.data(), environ);
    cleanup();
    if (rc != 0) {
        return {Errc::unavailable, "cannot execute " + opts.argv[0] + ": " + strerror(rc)};
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
    Command(boost::asio::io_context& io, size_t limit, CommandDone done)
        : out(io), limit(limit), done(std::move(done)) {}
    boost::asio::posix::stream_descriptor out;
    std::unique_ptr<PidWatch> watch;
    size_t limit;
    CommandDone done;
    std::string output;
    char buf[16384];
    bool eof = false;
    std::optional<ExitInfo> exit;

    void read() {
        out.async_read_some(boost::asio::buffer(buf), [self = shared_from_this()](
                                                          boost::system::error_code ec, size_t n) {
            if (n > 0 && self->output.size() < self->limit) {
                self->output.append(self->buf, std::min(n, self->limit - self->output.size()));
            }
            if (ec) {
                self->eof = true;
                return self->maybe_done();
            }
            self->read();
        });
    }
    void maybe_done() {
        if (eof && exit && done) {
            std::exchange(done, nullptr)(Status{}, *exit, std::move(output));
        }
    }
};
}  // namespace

void run_command(boost::asio::io_context& io, std::vector<std::string> argv, size_t limit,
                 CommandDone done) {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        return done({Errc::internal, std::string("pipe: ") + strerror(errno)}, ExitInfo{}, {});
    }
    SpawnOptions opts;
    opts.argv = std::move(argv);
    opts.output_fd = p[1];
    opts.new_session = false;
    pid_t pid = 0;
    Status st = spawn_process(opts, pid);
    close(p[1]);
    if (!st) {
        close(p[0]);
        return done(st, ExitInfo{}, {});
    }
    int pidfd = open_pidfd(pid);
    if (pidfd < 0) {
        close(p[0]);
        waitpid(pid, nullptr, 0);  // cannot happen for a child that is not yet reaped
        return done({Errc::internal, std::string("pidfd_open: ") + strerror(errno)}, ExitInfo{},
                    {});
    }
    auto cmd = std::make_shared<Command>(io, limit, std::move(done));
    cmd->out.assign(p[0]);
    cmd->watch = std::make_unique<PidWatch>(io, pid, pidfd);
    cmd->watch->wait([cmd](ExitInfo info) {
        cmd->exit = info;
        cmd->maybe_done();
    });
    cmd->read();
}

}  // namespace hangar
