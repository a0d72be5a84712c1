#pragma once
// A command run in a machine (containers: inside the running container, or in its stopped
// root file system), and the checks every such request passes in the core. An interactive one
// runs on a pty and is reached through a session (ExecSessions) until its WebSocket connects.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "hangar/error.hpp"

namespace hangar {
class PtyCommand;
}

namespace hangar::core {

struct ExecRequest {
    std::vector<std::string> command;
    std::map<std::string, std::string> env;
    std::string cwd = "/";
    std::chrono::seconds timeout{60};  // interactive: 0 is none
    // On a pty of its own (in a running container), of this first size.
    bool interactive = false;
    unsigned cols = 80, rows = 24;
};

struct ExecResult {
    int exit_code = 0;  // 128 + N when the command was killed by signal N
    std::string out, err;
    bool out_truncated = false, err_truncated = false;
    bool running = false;  // ran inside the running container (else in its stopped rootfs)
    std::shared_ptr<PtyCommand> pty;  // interactive: the command, running
};

inline constexpr size_t kExecOutputLimit = 1 << 20;  // per stream
inline constexpr std::chrono::seconds kMaxExecTimeout{3600};

// A command line's limits (argument count and size, no NUL, a program name); `what` names it
// in the error ("command", "boot.command").
Status check_command(const char* what, const std::vector<std::string>& command);
// Every field of an exec request.
Status check_exec(const ExecRequest& req);

// Interactive execs between their POST and their WebSocket: each is used once, by the user
// who made it, within kExecSessionTtl; one unused by then ends (its command is killed).
inline constexpr std::chrono::seconds kExecSessionTtl{30};
// Interactive execs of one uid at a time: waiting for their WebSocket, or attached.
inline constexpr size_t kExecSessionsPerUser = 64;
class ExecSessions {
  public:
    explicit ExecSessions(boost::asio::io_context& io) : io_(io) {}
    ExecSessions(const ExecSessions&) = delete;
    ExecSessions& operator=(const ExecSessions&) = delete;

    // conflict when `uid` has kExecSessionsPerUser interactive execs already.
    Status can_add(uint32_t uid) const;
    // The new session's id.
    std::string add(uint32_t uid, const std::string& machine, std::shared_ptr<PtyCommand> pty);
    // The session's command, handed out once: not_found for an unknown id, one used or expired,
    // another machine's or another user's.
    Status take(uint32_t uid, const std::string& machine, const std::string& id,
                std::shared_ptr<PtyCommand>& out);
    size_t waiting() const { return sessions_.size(); }

  private:
    struct Session {
        uint32_t uid = 0;
        std::string machine;
        std::shared_ptr<PtyCommand> pty;
        std::unique_ptr<boost::asio::steady_timer> timer;
    };
    boost::asio::io_context& io_;
    std::map<std::string, Session> sessions_;
    // Every interactive exec made, waiting or attached, until its command is gone.
    mutable std::multimap<uint32_t, std::weak_ptr<PtyCommand>> made_;
};

}  // namespace hangar::core
