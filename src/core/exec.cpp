#include "core/exec.hpp"

#include <cctype>
#include <iterator>

#include <spdlog/spdlog.h>

#include "hangar/machine.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/sha256.hpp"

namespace hangar::core {

namespace {
constexpr size_t kMaxEnv = 256;
constexpr size_t kMaxPath = 4096;
constexpr unsigned kMaxTtySide = 10000;

bool valid_env_name(const std::string& k) {
    if (k.empty() || k.size() > 256 || std::isdigit(static_cast<unsigned char>(k[0]))) {
        return false;
    }
    for (char c : k) {
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '_') {
            return false;
        }
    }
    return true;
}
}  // namespace

Status check_command(const char* what, const std::vector<std::string>& command) {
    if (command.size() > kMaxCommandArgs) {
        return {Errc::invalid_spec, std::string(what) + " has more than " +
                                        std::to_string(kMaxCommandArgs) + " arguments"};
    }
    for (const auto& arg : command) {
        if (arg.size() > kMaxCommandArg || arg.find('\0') != std::string::npos) {
            return {Errc::invalid_spec, std::string(what) + ": an argument is longer than " +
                                            std::to_string(kMaxCommandArg) +
                                            " bytes or holds a NUL"};
        }
    }
    if (!command.empty() && command[0].empty()) {
        return {Errc::invalid_spec, std::string(what) + ": the program name is empty"};
    }
    return {};
}

Status check_exec(const ExecRequest& req) {
    if (req.command.empty()) {
        return {Errc::invalid_spec, "command must name a program"};
    }
    if (Status st = check_command("command", req.command); !st) {
        return st;
    }
    if (req.cwd.empty() || req.cwd[0] != '/' || req.cwd.size() > kMaxPath ||
        req.cwd.find('\0') != std::string::npos) {
        return {Errc::invalid_spec, "cwd must be an absolute path"};
    }
    if (req.env.size() > kMaxEnv) {
        return {Errc::invalid_spec, "env has more than " + std::to_string(kMaxEnv) + " entries"};
    }
    for (const auto& [k, v] : req.env) {
        if (!valid_env_name(k) || v.size() > kMaxCommandArg || v.find('\0') != std::string::npos) {
            return {Errc::invalid_spec,
                    "env: " + json::quote(k) +
                        " is not a valid variable (name [A-Za-z_][A-Za-z0-9_]*, "
                        "value without NUL)"};
        }
    }
    if ((req.timeout.count() < 1 && !(req.interactive && req.timeout.count() == 0)) ||
        req.timeout > kMaxExecTimeout) {
        return {Errc::invalid_spec,
                "timeout_s must be between 1 and " + std::to_string(kMaxExecTimeout.count())};
    }
    if (req.interactive &&
        (req.cols < 1 || req.rows < 1 || req.cols > kMaxTtySide || req.rows > kMaxTtySide)) {
        return {Errc::invalid_spec,
                "tty.cols and tty.rows must be between 1 and " + std::to_string(kMaxTtySide)};
    }
    return {};
}

Status ExecSessions::can_add(uint32_t uid) const {
    for (auto it = made_.begin(); it != made_.end();) {
        it = it->second.expired() ? made_.erase(it) : std::next(it);
    }
    size_t mine = made_.count(uid);
    if (mine >= kExecSessionsPerUser) {
        return {Errc::conflict, "uid " + std::to_string(uid) + " has " + std::to_string(mine) +
                                    " interactive execs already (at most " +
                                    std::to_string(kExecSessionsPerUser) + " at a time)"};
    }
    return {};
}

std::string ExecSessions::add(uint32_t uid, const std::string& machine,
                              std::shared_ptr<PtyCommand> pty) {
    std::string id = random_hex(16);
    Session& s = sessions_[id];
    s.uid = uid;
    s.machine = machine;
    made_.emplace(uid, pty);
    s.pty = std::move(pty);
    s.timer = std::make_unique<boost::asio::steady_timer>(io_, kExecSessionTtl);
    s.timer->async_wait([this, id](boost::system::error_code ec) {
        if (ec) {
            return;  // taken, or the registry is gone
        }
        auto it = sessions_.find(id);
        if (it == sessions_.end()) {
            return;
        }
        spdlog::info("{}: interactive exec session {} unused for {} s: ended", it->second.machine,
                     id, kExecSessionTtl.count());
        sessions_.erase(it);  // the command is killed with its PtyCommand
    });
    return id;
}

Status ExecSessions::take(uint32_t uid, const std::string& machine, const std::string& id,
                          std::shared_ptr<PtyCommand>& out) {
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second.uid != uid || it->second.machine != machine) {
        return {Errc::not_found, "no interactive exec session " + json::quote(id) + " on " +
                                     machine + " (a session is used once, within " +
                                     std::to_string(kExecSessionTtl.count()) +
                                     " s, by the user who made it)"};
    }
    out = std::move(it->second.pty);
    sessions_.erase(it);
    return {};
}

}  // namespace hangar::core
