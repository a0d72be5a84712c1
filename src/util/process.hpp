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
    std::vector<std::string> argv;         // argv[0] is looked up in PATH when it has no '/'
    std::vector<std::pair<int, int>> fds;  // (fd in this process, fd number in the child)
    int stdin_fd = -1;                     // -1: /dev/null
    int output_fd = -1;                    // stdout and stderr; -1: /dev/null
    int error_fd = -1;                     // stderr apart from stdout; -1: as output_fd
    bool new_session = true;               // setsid(): the child outlives this process
    // With new_session: this terminal (a pty slave's path) is opened in the new session, so it
    // becomes the child's controlling terminal.
    std::string controlling_tty;
    std::optional<std::vector<std::string>> env;  // "K=V" each; none: this process's
};

// Starts the process; every fd not named in `opts` is closed in the child.
Status spawn_process(const SpawnOptions& opts, pid_t& pid);

// The path of an executable: `name` itself when it holds a '/', else the first match in PATH
// (default /usr/bin:/bin); "" when there is none.
std::string find_program(const std::string& name);

// pidfd_open(2); -1 with errno set on failure (ESRCH: no such process).
int open_pidfd(pid_t pid);
// waitpid(WNOHANG) every 10 ms until `pid` (a child of ours, killed) is reaped, on the
// reactor: for a child whose pidfd could not be opened.
void reap_later(boost::asio::io_context& io, pid_t pid);

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
// killed with SIGKILL. With `cgroup`, the command is moved into that (empty) cgroup v2
// directory before it runs, and every process in it is killed with SIGKILL when the command
// exits or at the deadline, whatever session or process group it is in; the directory is then
// removed (run_capture owns it from the call on, also when the command cannot start).
struct CaptureOptions {
    std::vector<std::string> argv;
    std::optional<std::vector<std::string>> env;
    std::vector<std::pair<int, int>> fds;  // as SpawnOptions::fds; still the caller's to close
    size_t limit = 1 << 20;                // per stream; the rest is read and dropped
    bool merge_stderr = false;             // stderr into `out`
    bool new_session = false;
    std::chrono::milliseconds timeout{0};  // 0: none; needs new_session
    std::string cgroup;                    // "" or a directory made by make_cgroup
    // When set, run_capture stores here a function that ends the command at once as its
    // timeout does (the process group or cgroup killed). Calling it after the command is done
    // does nothing.
    std::shared_ptr<std::function<void()>> kill_switch;
};
struct CaptureResult {
    ExitInfo exit;
    std::string out, err;
    bool out_truncated = false, err_truncated = false;
    bool timed_out = false;
};
void run_capture(boost::asio::io_context& io, CaptureOptions opts,
                 std::function<void(const Status&, CaptureResult)> done);

// A command on a pseudo-terminal of its own (interactive exec): its stdin, stdout and stderr
// are the pty's slave, which is its controlling terminal (a session of its own); hangard
// holds the master. With `cgroup` (as CaptureOptions::cgroup) every process it starts ends
// with it: when its first process exits, at kill(), and when the PtyCommand goes.
struct PtyOptions {
    std::vector<std::string> argv;
    std::optional<std::vector<std::string>> env;
    std::string cgroup;
    unsigned short cols = 80, rows = 24;
};
class PtyCommand : public std::enable_shared_from_this<PtyCommand> {
  public:
    // Starts the command; run_capture's rules for the cgroup (it is the command's from the call
    // on, also when the command cannot start).
    static Status start(boost::asio::io_context& io, PtyOptions opts,
                        std::shared_ptr<PtyCommand>& out);
    ~PtyCommand();
    PtyCommand(const PtyCommand&) = delete;
    PtyCommand& operator=(const PtyCommand&) = delete;

    // The master side, non-blocking; closed by hang_up().
    boost::asio::posix::stream_descriptor& master() { return master_; }
    Status resize(unsigned cols, unsigned rows);
    // `cb` once, when the command's first process has exited (at once if it has); what it
    // started is killed then.
    void on_exit(std::function<void(ExitInfo)> cb);
    bool exited() const { return exited_; }
    // Closes the master: the session gets SIGHUP. What is left of it after `grace` is killed
    // (also when its first process has exited meanwhile).
    void hang_up(std::chrono::milliseconds grace);
    // Kills every process of the command now (what its cgroup holds, also after the exit).
    void kill();

  private:
    PtyCommand(boost::asio::io_context& io);
    void ended(ExitInfo info);
    boost::asio::io_context& io_;
    boost::asio::posix::stream_descriptor master_;
    std::unique_ptr<PidWatch> watch_;
    std::string cgroup_;
    bool exited_ = false;
    bool hung_up_ = false;
    ExitInfo exit_;
    std::function<void(ExitInfo)> on_exit_;
};

// cgroup v2: where the unified hierarchy is mounted ("" when it is not), and PID's cgroup as a
// directory in it ("" when unknown).
std::string cgroup2_mount();
std::string cgroup_dir_of(pid_t pid);
// Makes the directory `parent`/`name` for a command of run_capture (CaptureOptions::cgroup).
Status make_cgroup(const std::string& parent, const std::string& name, std::string& dir);
// SIGKILL to every process in cgroup `dir` and below (cgroup.kill; where the kernel lacks it,
// to each process listed, which a retry repeats).
void kill_cgroup(const std::string& dir);
// Kills what is in `dir` and removes it and the cgroups below, retrying while processes are
// still exiting (a few seconds at most, then a warning).
void remove_cgroup_async(boost::asio::io_context& io, const std::string& dir);

// The last few hundred bytes of a command's output, trailing blanks dropped, for a message.
std::string tail_of(std::string out);

// Moves `path` to `trash` (same file system; "" or equal: in place) at once, then removes the
// tree in a child process (`rm -rf --one-file-system`), logging a failure. A missing `path`
// is not an error; failing to move it is.
Status remove_tree_async(boost::asio::io_context& io, const std::string& path,
                         std::string trash = {});

}  // namespace hangar
