// Containers in core::Machines: a container runs as the transient unit hangar-NAME.service
// (systemd-nspawn) through the ContainerHost; its state follows what systemd reports of that
// unit (on_unit). Start, graceful stop, kill, restart, delete and adoption share the VM paths
// in machines.cpp; this file holds what differs, and exec.
#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "core/machines.hpp"
#include "drivers/nspawn/nspawn.hpp"
#include "hangar/names.hpp"
#include "store/db.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/sha256.hpp"

namespace hangar::core {

namespace {
constexpr size_t kMaxEnv = 256;
constexpr size_t kMaxPath = 4096;

std::string rootfs_of(const std::filesystem::path& dir) {
    return (dir / "rootfs").string();
}

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

}  // namespace

bool UnitStatus::up() const {
    return exists && (active_state == "active" || active_state == "activating" ||
                      active_state == "deactivating" || active_state == "reloading");
}

std::string UnitStatus::describe() const {
    if (!exists) {
        return "unit gone";
    }
    std::string s = "result=" + (result.empty() ? std::string("unknown") : result);
    if (exec_code == CLD_EXITED) {
        s += " status=" + std::to_string(exec_status);
    } else if (exec_code == CLD_KILLED || exec_code == CLD_DUMPED) {
        const char* abbrev = sigabbrev_np(exec_status);
        s += " signal=" + std::to_string(exec_status) +
             (abbrev ? std::string(" (") + abbrev + ")" : "");
    }
    return s;
}

Status Machines::validate_container(MachineSpec& spec) const {
    const BootSpec& b = spec.boot;
    if (!b.kernel.empty() || !b.initrd.empty() || !b.disk.empty() || !b.cmdline.empty()) {
        return {Errc::invalid_spec,
                "boot.kernel, boot.initrd, boot.disk and boot.cmdline are for VMs; a container "
                "boots its image's init, or boot.command"};
    }
    if (spec.image.empty()) {
        return {
            Errc::invalid_spec,
            "a container needs \"image\": a local image (GET /v1/images, hangarctl image list)"};
    }
    if (Status st = check_name("image", spec.image); !st) {
        return st;
    }
    return check_command("boot.command", b.command);
}

// ---- start / stop / kill ---------------------------------------------------------------

void Machines::launch_container(Machine& m) {
    std::string name = m.spec.name;
    uint64_t gen = ++m.generation;
    auto fail = [this, name, gen](const Status& st) {
        with_machine(name, gen, [&](Machine& m) {
            m.restart_pending = false;
            m.unit_live = false;
            set_state(m, MachineState::stopped, "api:start failed: " + st.message());
            finish_op(m, st);
        });
    };
    if (!host_) {
        return boost::asio::post(io_, [fail] {
            fail({Errc::unavailable,
                  "containers need systemd and machined: this hangard has no D-Bus connection "
                  "(--dbus)"});
        });
    }
    prepare_rootfs(m, [this, name, gen, fail](const Status& st) {
        if (!st) {
            return fail(st);
        }
        with_machine(name, gen, [&](Machine& m) {
            std::string rootfs = rootfs_of(machine_dir(name));
            nspawn::InitKind init = nspawn::detect_init(rootfs);
            ContainerLaunch l;
            l.machine = name;
            l.unit = nspawn::unit_name(name);
            l.argv = nspawn::unit_argv(m.spec, rootfs, init);
            l.description = "hangar container " + name;
            l.cpus = m.spec.cpus;
            l.memory_mib = m.spec.memory_mib;
            l.log_path = (machine_dir(name) / "console.log").string();
            spdlog::info("{}: starting {} (init: {})", name, l.unit, init.kind);
            m.unit_live = true;
            m.unit_seen_up = false;
            host_->start(l, [this, name, gen, fail](const Status& st) {
                if (st) {
                    return;  // `running` comes with the unit's ActiveState
                }
                with_machine(name, gen, [&](Machine& m) {
                    if (m.state == MachineState::starting) {
                        fail(st);
                    }
                });
            });
        });
    });
}

void Machines::stop_container(Machine& m, std::chrono::seconds timeout) {
    m.exit_reason = m.restart_pending ? "api:restart" : "api:stop";
    nspawn::InitKind init = nspawn::detect_init(rootfs_of(machine_dir(m.spec.name)));
    spdlog::info("{}: asking its init ({}) to power off with {}", m.spec.name, init.kind,
                 init.signal_name);
    m.stop_timer = std::make_unique<boost::asio::steady_timer>(io_);
    stop_container_step(m.spec.name, m.generation, std::chrono::steady_clock::now() + timeout,
                        init.poweroff_signal, timeout);
}

// Sends the power-off signal again every 2 s (an init that has only just started may not
// handle it yet; systemd and busybox take a repeat as the same request); at the deadline,
// systemd stops the unit: nspawn gets SIGTERM and hands its kill signal to the container's
// init, and systemd kills what is left after the unit's stop timeout.
void Machines::stop_container_step(const std::string& name, uint64_t gen,
                                   std::chrono::steady_clock::time_point deadline, int signal,
                                   std::chrono::seconds timeout) {
    auto stop_unit = [this, name, gen](const std::string& why) {
        with_machine(name, gen, [&](Machine& m) {
            m.exit_reason = why;
            host_->stop(nspawn::unit_name(name), [name](const Status& st) {
                if (!st) {
                    spdlog::warn("{}: StopUnit: {}", name, st.message());
                }
            });
        });
    };
    with_machine(name, gen, [&](Machine& m) {
        if (m.state != MachineState::stopping || !m.unit_live || !m.stop_timer) {
            return;
        }
        auto now = std::chrono::steady_clock::now();
        if (now >= deadline) {
            return stop_unit("api:stop: container did not power off within " +
                             std::to_string(timeout.count()) + " s");
        }
        host_->signal_leader(name, signal, [stop_unit](const Status& st) {
            if (!st) {
                stop_unit("api:stop: the power-off signal could not be sent (" + st.message() +
                          ")");
            }
        });
        m.stop_timer->expires_after(
            std::min<std::chrono::steady_clock::duration>(std::chrono::seconds(2), deadline - now));
        m.stop_timer->async_wait(
            [this, name, gen, deadline, signal, timeout](boost::system::error_code ec) {
                if (!ec) {
                    stop_container_step(name, gen, deadline, signal, timeout);
                }
            });
    });
}

void Machines::kill_container(Machine& m) {
    std::string name = m.spec.name;
    host_->kill(nspawn::unit_name(name), SIGKILL,
                [this, name, gen = m.generation](const Status& st) {
                    if (st) {
                        return;  // the unit's end completes what waits
                    }
                    spdlog::warn("{}: KillUnit: {}", name, st.message());
                    // Nothing will end: what waits for the kill fails now.
                    with_machine(name, gen, [&](Machine& m) {
                        m.delete_after_exit = false;
                        m.exit_reason.clear();
                        if (!m.op.empty()) {
                            finish_op(m, {Errc::unavailable,
                                          "the container could not be killed: " + st.message()});
                        }
                    });
                });
}

void Machines::kill_now(Machine& m) {
    if (m.proc) {
        m.proc->signal(SIGKILL);
    } else if (m.unit_live && host_) {
        kill_container(m);
    }
}

// ---- what systemd says -----------------------------------------------------------------

void Machines::on_unit(const std::string& name, const UnitStatus& st) {
    auto it = machines_.find(name);
    if (it == machines_.end() || it->second->spec.type != "container") {
        return;
    }
    Machine& m = *it->second;
    if (m.unresponsive) {
        on_responsive(m, true, "systemd reports " + nspawn::unit_name(name));
    }
    if (st.up()) {
        m.unit_seen_up = true;
        if (!m.unit_live) {
            // Found running: a start hangard did not see through (it was down meanwhile).
            m.unit_live = true;
            ++m.generation;
        }
        if (st.main_pid != 0 && m.pid != static_cast<pid_t>(st.main_pid)) {
            m.pid = static_cast<pid_t>(st.main_pid);
            db_.update_state(name, m.state, m.state_reason, m.pid);
        }
        if (st.active_state == "active") {
            if (m.state == MachineState::starting) {
                set_state(m, MachineState::running, "systemd:active");
                if (m.op == "start" || (m.op == "restart" && !m.restart_pending)) {
                    finish_op(m, {});
                }
            } else if (m.state != MachineState::running && m.state != MachineState::stopping) {
                set_state(m, MachineState::running, "adopt:systemd active");
            }
        } else if (st.active_state == "deactivating" && m.state == MachineState::running) {
            set_state(m, MachineState::stopping, "systemd:deactivating");
            if (m.exit_reason.empty() && !m.explaining) {
                explain_container_stop(m);
            }
        }
        return;
    }
    if (!m.unit_live || (m.state == MachineState::starting && !m.unit_seen_up &&
                         (!st.exists || st.active_state == "inactive"))) {
        // Known to be down already; or, while starting, looked up before the start reached
        // systemd, or the new unit as it was loaded (inactive) before it started.
        return;
    }
    std::string how = "systemd:" + st.describe();
    // (Not a stop hangard asked for: that sets exit_reason.)
    if (st.exists && st.exec_code == CLD_EXITED && st.exec_status == 133 && m.exit_reason.empty() &&
        (m.state == MachineState::running || m.state == MachineState::stopping)) {
        // The container asked for a reboot: nspawn ended with 133; boot it again.
        m.exit_reason = kContainerReboot;
        m.restart_pending = true;
    }
    if (m.state == MachineState::starting && m.exit_reason.empty()) {
        if (!m.spec.boot.command.empty() && st.exists && st.result == "success") {
            // A command that was done before systemd reported the unit active: it ran.
            set_state(m, MachineState::running, "systemd:active");
            if (m.op == "start" || (m.op == "restart" && !m.restart_pending)) {
                finish_op(m, {});
            }
        } else {
            m.exit_reason = "api:start failed: the container ended during start (" + how +
                            "; see its console log)";
        }
    }
    on_exit(m, how, st.exists && st.result == "success");
}

// A stop hangard did not ask for: when machined is the one ending the container, the end is
// reported as machined's (as for a VM), not as a plain end of its unit.
void Machines::explain_container_stop(Machine& m) {
    m.explaining = true;
    host_->machined_closing(m.spec.name,
                            [this, name = m.spec.name, gen = m.generation](bool closing) {
                                with_machine(name, gen, [&](Machine& m) {
                                    if (closing && m.exit_reason.empty()) {
                                        m.exit_reason = kMachinedTerminated;
                                    }
                                    explained(m);
                                });
                            });
}

void Machines::on_container_host(bool reachable, const std::string& why) {
    if (reachable) {
        return;  // each container's report clears its flag
    }
    for (auto& [name, m] : machines_) {
        if (m->spec.type == "container" && m->unit_live) {
            on_responsive(*m, false, why);
        }
    }
}

// ---- root file system ------------------------------------------------------------------

void Machines::prepare_rootfs(Machine& m, std::function<void(const Status&)> done) {
    auto dir = machine_dir(m.spec.name);
    std::string rootfs = rootfs_of(dir);
    std::error_code ec;
    if (std::filesystem::is_directory(rootfs, ec)) {
        return boost::asio::post(io_, [done = std::move(done)] { done({}); });
    }
    std::string src;
    Status st = image_lookup_ ? image_lookup_(m.spec.image, src)
                              : Status{Errc::unavailable, "no image store"};
    if (!st) {
        return boost::asio::post(io_, [done = std::move(done), st] {
            done({Errc::invalid_state, "the container's image: " + st.message()});
        });
    }
    // A copy that a crash interrupted goes first; the copy is renamed into place whole.
    std::string tmp = (dir / ".rootfs-copy").string();
    remove_tree_async(io_, tmp, tmp + "-" + random_hex(4));
    spdlog::info("{}: copying image {} to {}", m.spec.name, m.spec.image, rootfs);
    run_command(io_, {"cp", "-a", "--reflink=auto", "--", src, tmp}, 64 * 1024,
                [tmp, rootfs, done = std::move(done)](const Status& st, const ExitInfo& exit,
                                                      std::string out) {
                    if (!st || exit.code != 0 || exit.signal != 0) {
                        return done({Errc::internal, "copying the image's root file system: " +
                                                         (st ? tail_of(out) : st.message())});
                    }
                    if (::rename(tmp.c_str(), rootfs.c_str()) != 0) {
                        return done({Errc::internal, "rename " + tmp + ": " + strerror(errno)});
                    }
                    done({});
                });
}

void Machines::remove_tree(const std::filesystem::path& dir) {
    std::string trash =
        dir.parent_path() / (".trash-" + dir.filename().string() + "-" + random_hex(4));
    if (Status st = remove_tree_async(io_, dir.string(), trash); !st) {
        spdlog::warn("{}", st.message());
    }
}

// ---- exec ------------------------------------------------------------------------------

Status Machines::exec(const Caller& caller, const std::string& name, ExecRequest req,
                      ExecDone done) {
    Machine* m = nullptr;
    if (Status st = lookup(caller, name, &m); !st) {
        return st;
    }
    if (m->spec.type != "container") {
        return {Errc::invalid_spec, "exec runs commands in containers; " + name + " is a VM"};
    }
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
    if (req.timeout.count() < 1 || req.timeout > kMaxExecTimeout) {
        return {Errc::invalid_spec,
                "timeout_s must be between 1 and " + std::to_string(kMaxExecTimeout.count())};
    }
    if (m->state == MachineState::running && m->unit_live) {
        if (!host_) {
            return {Errc::unavailable, "no systemd connection"};
        }
        host_->leader(name, [this, name, req = std::move(req), done = std::move(done)](
                                const Status& st, pid_t leader) mutable {
            auto it = machines_.find(name);
            if (!st || it == machines_.end()) {
                return done(st ? Status{Errc::conflict, "the machine was deleted"} : st, {});
            }
            run_exec(*it->second, std::move(req), leader, std::move(done));
        });
        return {};
    }
    if (m->state != MachineState::stopped && m->state != MachineState::crashed) {
        return {Errc::invalid_state,
                "cannot exec in " + name + ": it is " + std::string(to_string(m->state))};
    }
    if (!m->op.empty()) {
        return {Errc::busy, "machine " + name + " is busy: " + m->op + " in progress"};
    }
    // The root file system is the command's alone: starts and deletes wait (409 busy).
    m->op = "exec";
    uint64_t gen = m->generation;
    prepare_rootfs(*m, [this, name, gen, req = std::move(req),
                        done = std::move(done)](const Status& st) mutable {
        with_machine(name, gen, [&](Machine& m) {
            auto finish = [this, name, gen, done = std::move(done)](const Status& st,
                                                                    const ExecResult& r) {
                with_machine(name, gen, [&](Machine& m) {
                    if (m.op == "exec") {
                        finish_op(m, {});
                    }
                });
                done(st, r);
            };
            if (!st) {
                return finish(st, {});
            }
            run_exec(m, std::move(req), 0, std::move(finish));
        });
    });
    return {};
}

void Machines::run_exec(Machine& m, ExecRequest req, pid_t leader, ExecDone done) {
    CaptureOptions opts;
    opts.limit = kExecOutputLimit;
    opts.new_session = true;
    opts.timeout = req.timeout;
    if (leader != 0) {
        // The working directory must exist inside the container's root (resolved there,
        // whatever its symlinks say); the container's shell enters it.
        int root = open(("/proc/" + std::to_string(leader) + "/root").c_str(),
                        O_PATH | O_DIRECTORY | O_CLOEXEC);
        open_how how{};
        how.flags = O_PATH | O_DIRECTORY | O_CLOEXEC;
        how.resolve = RESOLVE_IN_ROOT;
        int wd =
            root < 0
                ? -1
                : static_cast<int>(syscall(SYS_openat2, root, req.cwd.c_str(), &how, sizeof how));
        int err = errno;
        for (int fd : {root, wd}) {
            if (fd >= 0) {
                close(fd);
            }
        }
        if (wd < 0) {
            return boost::asio::post(io_, [done = std::move(done), cwd = req.cwd, err] {
                done({Errc::invalid_spec, "cwd " + json::quote(cwd) +
                                              " is not a directory in the container (" +
                                              strerror(err) + ")"},
                     {});
            });
        }
        opts.argv = nspawn::exec_running_argv(leader, req.cwd, req.command);
        opts.env = nspawn::command_env(req.env);
    } else {
        opts.argv = nspawn::exec_stopped_argv(rootfs_of(machine_dir(m.spec.name)), req.cwd, req.env,
                                              req.command);
    }
    bool running = leader != 0;
    auto timeout = req.timeout;
    spdlog::info("{}: exec {} ({})", m.spec.name, json::quote(req.command[0]),
                 running ? "in the running container" : "in its stopped root file system");
    run_capture(io_, std::move(opts),
                [done = std::move(done), running, timeout](const Status& st, CaptureResult r) {
                    if (!st) {
                        return done(st, {});
                    }
                    if (r.timed_out) {
                        return done({Errc::timeout, "the command did not finish within " +
                                                        std::to_string(timeout.count()) +
                                                        " s and was killed"},
                                    {});
                    }
                    ExecResult out;
                    out.exit_code = r.exit.signal ? 128 + r.exit.signal : r.exit.code;
                    out.out = std::move(r.out);
                    out.err = std::move(r.err);
                    out.out_truncated = r.out_truncated;
                    out.err_truncated = r.err_truncated;
                    out.running = running;
                    done({}, out);
                });
}

}  // namespace hangar::core
