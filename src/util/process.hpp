#pragma once
// Child processes without blocking the reactor: posix_spawn (optionally in a new session, with
// chosen fds mapped), pidfds, and an asynchronous watch for a process's exit.
#include <sys/types.h>

#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include "hangar/error.hpp"

namespace hangar {

struct SpawnOptions {
    std::vector<std::string> argv;                // argv[0] is looked up in PATH when it has no '/'
    std::vector<std::pair<int, int>> fds;         // (fd in this process, fd number in the child)
    int stdin_fd = -1;                            // -1: /dev/null
    int output_fd = -1;                           // stdout and stderr; -1: /dev/null
    int error_fd = -1;                            // stderr apart from stdout; -1: as output_fd
    bool new_session = true;                      // setsid(): the child outlives this process
    std::optional<std::vector<std::string>> env;  // "K=V" each; none: this process's
};

// Starts the process; every fd not named in `opts` is closed in the child.
Status spawn_process(const SpawnOptions& opts, pid_t& pid);

// The path of an executable: `name` itself when it holds a '/', else the first match in PATH
// (default /usr/bin:/bin); "" when there is none.
std::string find_program(const std::string& name);

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

// The general form: stdout and stderr apart, each bounded; an environment of its own; a
// deadline after which the command's whole process group (it runs in a session of its own) is
// killed with SIGKILL.
struct CaptureOptions {
    std::vector<std::string> argv;
    std::optional<std::vector<std::string>> env;
    std::vector<std::pair<int, int>> fds;  // as SpawnOptions::fds; still the caller's to close
    size_t limit = 1 << 20;                // per stream; the rest is read and dropped
    bool merge_stderr = false;             // stderr into `out`
    bool new_session = false;
    std::chrono::milliseconds timeout{0};  // 0: none; needs new_session
};
struct CaptureResult {
    ExitInfo exit;
    std::string out, err;
    bool out_truncated = false, err_truncated = false;
    bool timed_out = false;
};
void run_capture(boost::asio::io_context& io, CaptureOptions opts,
                 std::function<void(const Status&, CaptureResult)> done);

// The last few hundred bytes of a command's output, trailing blanks dropped, for a message.
std::string tail_of(std::string out);

// Moves `path` to `trash` (same file system; "" or equal: in place) at once, then removes the
// tree in a child process (`rm -rf --one-file-system`), logging a failure. A missing `path`
// is not an error; failing to move it is.
Status remove_tree_async(boost::asio::io_context& io, const std::string& path,
                         std::string trash = {});

}  // namespace hangar
