#pragma once
// Child processes without blocking the reactor: posix_spawn (optionally in a new session, with
// chosen fds mapped), pidfds, and an asynchronous watch for a process's exit.
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include "hangar/error.hpp"

namespace hangar {

struct SpawnOptions {
    std::vector<std::string> argv;         // argv[0] is looked up in PATH when it has no '/'
    std::vector<std::pair<int, int>> fds;  // (fd in this process, fd number in the child)
    int stdin_fd = -1;                     // -1: /dev/null
    int output_fd = -1;                    // stdout and stderr; -1: /dev/null
    bool new_session = true;               // setsid(): the child outlives this process
};

// Starts the process; every fd not named in `opts` is closed in the child.
Status spawn_process(const SpawnOptions& opts, pid_t& pid);

// pidfd_open(2); -1 with errno set on failure (ESRCH: no such process).
int open_pidfd(pid_t pid);

struct ExitInfo {
    bool known = false;  // false: the process was not our child, so its status is unknowable
    int code = 0;        // exit status, when it exited normally
    int signal = 0;      // terminating signal, or 0
    // "status=0", "signal=9 (KILL)", "status=unknown".
    std::string describe() const;
};

// Reaps the exited process behind `pidfd` if it is our child.
ExitInfo reap_pidfd(int pidfd);

// True when /proc/PID/cmdline holds `needle` as one argument.
bool process_has_argument(pid_t pid, const std::string& needle);

// Watches one process through its pidfd; calls back once when it has exited. The watch owns
// the pidfd.
class PidWatch {
  public:
    using Callback = std::function<void(ExitInfo)>;
    PidWatch(boost::asio::io_context& io, pid_t pid, int pidfd);
    ~PidWatch();
    PidWatch(const PidWatch&) = delete;
    PidWatch& operator=(const PidWatch&) = delete;

    void wait(Callback cb);
    // Sends `sig` through the pidfd (never to a recycled PID). false when already gone.
    bool signal(int sig);
    pid_t pid() const { return pid_; }
    bool exited() const { return exited_; }

  private:
    pid_t pid_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    bool exited_ = false;
    boost::asio::posix::stream_descriptor fd_;
};

// Runs `argv` to completion without blocking the reactor (not in a new session: it is hangard's
// helper). `done` gets the exit and what the command wrote to stdout and stderr together, at
// most `limit` bytes (the rest is read and dropped); a Status that is not ok when it could not
// be started.
using CommandDone = std::function<void(const Status&, const ExitInfo&, std::string output)>;
void run_command(boost::asio::io_context& io, std::vector<std::string> argv, size_t limit,
                 CommandDone done);

}  // namespace hangar
