#include "drivers/nspawn/runtime.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "drivers/nspawn/nspawn.hpp"
#include "hangar/machine_files.hpp"
#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"

namespace hangar::nspawn {

namespace {
// The cgroup directory of container `name`'s unit, from that of its nspawn (the unit's main
// process, in the unit's cgroup or one below it); "" when it cannot be found.
std::string unit_cgroup_of(pid_t nspawn_pid, const std::string& name) {
    std::string dir = cgroup_dir_of(nspawn_pid);
    std::string unit = "/" + unit_name(name);
    size_t at = (dir + "/").find(unit + "/");
    return at == std::string::npos ? std::string() : dir.substr(0, at + unit.size());
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

NspawnRuntime::NspawnRuntime(boost::asio::io_context& io, std::filesystem::path machines_dir)
    : io_(io), machines_dir_(std::move(machines_dir)) {}

NspawnRuntime::~NspawnRuntime() = default;

void NspawnRuntime::post(Done done, Status st) {
    boost::asio::post(io_, [done = std::move(done), st = std::move(st)] { done(st); });
}

NspawnRuntime::Ct* NspawnRuntime::find(const core::InstanceRef& ref) {
    auto it = cts_.find(ref.machine);
    return it != cts_.end() && it->second.generation == ref.generation ? &it->second : nullptr;
}

std::string NspawnRuntime::rootfs_of(const std::string& name) const {
    return MachineFiles(machines_dir_ / name).rootfs().string();
}

std::vector<std::string> NspawnRuntime::machines() const {
    std::vector<std::string> out;
    for (const auto& [name, c] : cts_) {
        out.push_back(name);
    }
    return out;
}

// ---- specs -----------------------------------------------------------------------------

Status NspawnRuntime::validate(MachineSpec& spec, const core::Privilege&) const {
    const BootSpec& b = spec.boot;
    if (!b.kernel.empty() || !b.initrd.empty() || !b.disk.empty() || !b.cmdline.empty()) {
        return {Errc::invalid_spec,
                "boot.kernel, boot.initrd, boot.disk and boot.cmdline are for VMs; a container "
                "boots its image's init, or boot.command"};
    }
    if (!spec.firmware.empty() || spec.disk_gib != 0 || !spec.cdrom.empty()) {
        return {Errc::invalid_spec, "firmware, disk_gib and cdrom are for VMs"};
    }
    if (spec.image.empty()) {
        return {
            Errc::invalid_spec,
            "a container needs \"image\": a local image (GET /v1/images, hangarctl image list)"};
    }
    if (Status st = check_name("image", spec.image); !st) {
        return st;
    }
    return core::check_command("boot.command", b.command);
}

Status NspawnRuntime::admit(const MachineSpec& spec) const {
    std::string rootfs;
    Status st = image_lookup_ ? image_lookup_(spec.image, rootfs)
                              : Status{Errc::unavailable, "this hangard has no image store"};
    if (!st) {
        return {st.code() == Errc::not_found ? Errc::invalid_spec : st.code(),
                st.message() + " (GET /v1/images lists the local images)"};
    }
    return {};
}

Status NspawnRuntime::supports(core::Capability c, const std::string&) const {
    switch (c) {
        case core::Capability::pause:
            return {Errc::invalid_spec,
                    "pause and resume are for VMs; containers restart gracefully"};
        case core::Capability::reset:
            return {Errc::invalid_spec,
                    "restart with reset are for VMs; containers restart gracefully"};
        case core::Capability::exec:
        case core::Capability::console:
            return {};
        case core::Capability::display:
            return {Errc::bad_request,
                    "containers have no display: VNC and screenshots are for VMs (use the "
                    "console)"};
    }
    return {};
}

// ---- start / stop / kill ---------------------------------------------------------------

Status NspawnRuntime::start(const MachineSpec& spec, const core::InstanceRef& ref,
                            const core::Privilege&, Done failed) {
    Ct& c = cts_[ref.machine];
    c = Ct{};
    c.generation = ref.generation;
    c.live = c.starting = true;
    c.has_command = !spec.boot.command.empty();
    auto fail = [this, ref, failed = std::move(failed)](const Status& st) {
        if (Ct* c = find(ref)) {
            c->live = c->starting = false;
            failed(st);
        }
    };
    if (!host_) {
        boost::asio::post(io_, [fail] {
            fail({Errc::unavailable,
                  "containers need systemd and machined: this hangard has no D-Bus connection "
                  "(--dbus)"});
        });
        return {};
    }
    prepare_rootfs(spec, [this, ref, spec, fail](const Status& st) {
        if (!st) {
            return fail(st);
        }
        if (!find(ref)) {
            return;
        }
        std::string rootfs = rootfs_of(ref.machine);
        InitKind init = detect_init(rootfs);
        ContainerLaunch l;
        l.machine = ref.machine;
        l.unit = unit_name(ref.machine);
        l.argv = unit_argv(spec, rootfs, init);
        l.description = "hangar container " + ref.machine;
        l.cpus = spec.cpus;
        l.memory_mib = spec.memory_mib;
        l.log_path = MachineFiles(machines_dir_ / ref.machine).console_log().string();
        spdlog::info("{}: starting {} (init: {})", ref.machine, l.unit, init.kind);
        host_->start(l, [this, ref, fail](const Status& st) {
            Ct* c = find(ref);
            if (!st && c && c->starting) {
                fail(st);
            }
            // else `running` comes with the unit's ActiveState
        });
    });
    return {};
}

void NspawnRuntime::stop(const core::InstanceRef& ref, std::chrono::seconds timeout,
                         const std::string& reason) {
    Ct* c = find(ref);
    if (!c) {
        return;
    }
    c->reason = reason;
    InitKind init = detect_init(rootfs_of(ref.machine));
    spdlog::info("{}: asking its init ({}) to power off with {}", ref.machine, init.kind,
                 init.signal_name);
    c->timer = std::make_unique<boost::asio::steady_timer>(io_);
    stop_step(ref, std::chrono::steady_clock::now() + timeout, init.poweroff_signal, timeout,
              false);
}

// Sends the power-off signal again every 2 s (an init that has only just started may not
// handle it yet; systemd and busybox take a repeat as the same request); at the deadline,
// systemd stops the unit: nspawn gets SIGTERM and hands its kill signal to the container's
// init, and systemd kills what is left after the unit's stop timeout.
void NspawnRuntime::stop_step(const core::InstanceRef& ref,
                              std::chrono::steady_clock::time_point deadline, int signal,
                              std::chrono::seconds timeout, bool repeat) {
    auto stop_unit = [this, ref](const std::string& why) {
        if (Ct* c = find(ref); c && host_) {
            c->reason = why;
            host_->stop(unit_name(ref.machine), [name = ref.machine](const Status& st) {
                if (!st) {
                    spdlog::warn("{}: StopUnit: {}", name, st.message());
                }
            });
        }
    };
    Ct* c = find(ref);
    if (!c || !c->live || !c->timer || !host_) {
        return;
    }
    auto now = std::chrono::steady_clock::now();
    if (now >= deadline) {
        return stop_unit("api:stop: container did not power off within " +
                         std::to_string(timeout.count()) + " s");
    }
    host_->signal_leader(
        ref.machine, signal, [stop_unit, repeat, name = ref.machine](const Status& st) {
            if (st) {
                return;
            }
            if (repeat) {
                // The first one went through: the init may be gone already, on its way down as
                // asked. The deadline still holds.
                return spdlog::debug("{}: power-off signal again: {}", name, st.message());
            }
            stop_unit("api:stop: the power-off signal could not be sent (" + st.message() + ")");
        });
    c->timer->expires_after(
        std::min<std::chrono::steady_clock::duration>(std::chrono::seconds(2), deadline - now));
    c->timer->async_wait([this, ref, deadline, signal, timeout](boost::system::error_code ec) {
        if (!ec) {
            stop_step(ref, deadline, signal, timeout, true);
        }
    });
}

void NspawnRuntime::kill(const core::InstanceRef& ref, Done done) {
    if (!host_) {
        return post(std::move(done), {Errc::unavailable, "no systemd connection"});
    }
    host_->kill(unit_name(ref.machine), SIGKILL, std::move(done));
}

void NspawnRuntime::pause(const core::InstanceRef& ref, Done done) {
    post(std::move(done), supports(core::Capability::pause, ref.machine));
}

void NspawnRuntime::resume(const core::InstanceRef& ref, Done done) {
    post(std::move(done), supports(core::Capability::pause, ref.machine));
}

void NspawnRuntime::reset(const core::InstanceRef& ref, Done done) {
    post(std::move(done), supports(core::Capability::reset, ref.machine));
}

// ---- what systemd says -----------------------------------------------------------------

void NspawnRuntime::on_unit(const std::string& name, const UnitStatus& st) {
    HANGAR_ASSERT_REACTOR();
    auto it = cts_.find(name);
    if (it == cts_.end() || !sink_) {
        return;
    }
    Ct& c = it->second;
    core::InstanceRef ref = ref_of(name, c);
    sink_->on_responsive(ref, true, "systemd reports " + unit_name(name));
    if (st.up()) {
        // First seen up by this hangard: execs in it can only be an earlier hangard's.
        bool first = !c.seen_up;
        c.seen_up = true;
        c.live = true;  // also when found running: a start hangard did not see through
        if (st.main_pid != 0 && c.pid != static_cast<pid_t>(st.main_pid)) {
            c.pid = static_cast<pid_t>(st.main_pid);
            sink_->on_pid(ref, c.pid);
        }
        if (first && c.pid > 0) {
            end_orphaned_execs(name, c.pid);
        }
        if (st.active_state == "active") {
            const char* reason = c.starting ? "systemd:active" : "adopt:systemd active";
            c.starting = false;
            c.active_seen = true;
            sink_->on_running(ref, reason);
        } else if (st.active_state == "deactivating" && c.active_seen && !c.stopping_reported) {
            c.stopping_reported = true;
            core::StoppingFact f;
            f.reason = "systemd:deactivating";
            f.from_outside = c.reason.empty();  // not a stop hangard asked for
            sink_->on_stopping(ref, f);
        }
        return;
    }
    if (!c.live || (c.starting && !c.seen_up && (!st.exists || st.active_state == "inactive"))) {
        // Known to be down already; or, while starting, looked up before the start reached
        // systemd, or the new unit as it was loaded (inactive) before it started.
        return;
    }
    core::ExitFact f;
    f.how = "systemd:" + st.describe();
    f.clean = st.exists && st.result == "success";
    f.reason = c.reason;
    if (st.exists && st.exec_code == CLD_EXITED && st.exec_status == 133 && c.reason.empty() &&
        c.active_seen) {
        // The container asked for a reboot: nspawn ended with 133; boot it again.
        f.reason = core::kContainerReboot;
        f.reboot = true;
    }
    if (c.starting && f.reason.empty()) {
        if (c.has_command && st.exists && st.result == "success") {
            // A command that was done before systemd reported the unit active: it ran.
            sink_->on_running(ref, "systemd:active");
        } else {
            f.reason = "api:start failed: the container ended during start (" + f.how +
                       "; see its console log)";
        }
    }
    c.live = c.starting = false;
    c.timer.reset();
    c.console.reset();
    sink_->on_exited(ref, f);
}

void NspawnRuntime::on_host_lost(const std::string& why) {
    HANGAR_ASSERT_REACTOR();
    for (auto& [name, c] : cts_) {
        if (c.live && sink_) {
            sink_->on_responsive(ref_of(name, c), false, why);
        }
    }
}

// ---- adoption --------------------------------------------------------------------------

void NspawnRuntime::adopt(const MachineSpec& spec, MachineState stored,
                          const core::InstanceRef& ref,
                          std::function<void(const Status&, const core::Adoption&)> done) {
    Ct& c = cts_[ref.machine];
    c = Ct{};
    c.generation = ref.generation;
    c.live = is_active(stored);
    c.starting = stored == MachineState::starting;
    c.active_seen = stored == MachineState::running || stored == MachineState::stopping;
    c.has_command = !spec.boot.command.empty();
    // Its unit is looked up once the host connects (on_unit).
    core::Adoption a{core::AdoptFact::later, "", 0};
    if (c.live && !host_) {
        a.reason = "unknown: hangard has no systemd connection";
    }
    boost::asio::post(io_, [done = std::move(done), a] { done({}, a); });
}

void NspawnRuntime::forget(const std::string& machine) {
    cts_.erase(machine);
}

void NspawnRuntime::detach_all() {
    for (auto& [name, c] : cts_) {
        c.timer.reset();
        c.console.reset();
    }
}

// ---- console ---------------------------------------------------------------------------

namespace {
// Input the console's pty has not taken (its init does not read it): more is dropped.
constexpr size_t kConsoleInputQueue = 64 * 1024;

// A duplicate of the pty master that nspawn `pid` holds (its one /dev/ptmx descriptor), or -1.
int take_console_master(pid_t pid) {
    int pidfd = open_pidfd(pid);
    if (pidfd < 0) {
        return -1;
    }
    int found = -1, err = 0;
    std::string dir = "/proc/" + std::to_string(pid) + "/fd";
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
        std::error_code lec;
        std::string target = std::filesystem::read_symlink(e.path(), lec).string();
        if (lec || target.size() < 5 || target.compare(target.size() - 5, 5, "/ptmx") != 0) {
            continue;
        }
        int n = 0;
        try {
            n = std::stoi(e.path().filename().string());
        } catch (const std::exception&) {
            continue;
        }
        int fd = static_cast<int>(syscall(SYS_pidfd_getfd, pidfd, n, 0));  // close-on-exec
        unsigned ptn = 0;
        if (fd >= 0 && ioctl(fd, TIOCGPTN, &ptn) == 0) {
            found = fd;
            break;
        }
        if (fd >= 0) {
            close(fd);
        } else {
            err = errno;
        }
    }
    close(pidfd);
    errno = err;
    return found;
}
}  // namespace

NspawnRuntime::Console* NspawnRuntime::console_of(const core::InstanceRef& ref) {
    Ct* c = find(ref);
    if (!c || !c->live || c->pid <= 0) {
        return nullptr;
    }
    if (c->console && c->console->of == c->pid) {
        return c->console.get();
    }
    c->console.reset();
    if (c->console_failed == c->pid) {
        return nullptr;  // said once for this nspawn
    }
    int fd = take_console_master(c->pid);
    if (fd < 0) {
        spdlog::warn("{}: cannot take the console from systemd-nspawn (PID {}): {}", ref.machine,
                     c->pid, errno ? strerror(errno) : "it holds no pty");
        c->console_failed = c->pid;
        return nullptr;
    }
    // The descriptor shares nspawn's open file (non-blocking already): only waited on here,
    // never read, and its flags are left alone.
    c->console = std::make_unique<Console>(io_);
    c->console->of = c->pid;
    c->console->fd.assign(fd);
    return c->console.get();
}

void NspawnRuntime::console_input(const core::InstanceRef& ref, std::string_view bytes) {
    HANGAR_ASSERT_REACTOR();
    Console* con = console_of(ref);
    if (!con || bytes.empty()) {
        return;
    }
    if (con->queue.size() + bytes.size() > kConsoleInputQueue) {
        if (!con->dropped) {
            spdlog::warn("{}: console input dropped: the container does not read its console",
                         ref.machine);
        }
        con->dropped = true;
        return;
    }
    con->queue.append(bytes);
    flush_console(ref);
}

void NspawnRuntime::flush_console(const core::InstanceRef& ref) {
    Ct* c = find(ref);
    Console* con = c ? c->console.get() : nullptr;
    if (!con || con->waiting) {
        return;
    }
    while (!con->queue.empty()) {
        ssize_t n = ::write(con->fd.native_handle(), con->queue.data(), con->queue.size());
        if (n > 0) {
            con->queue.erase(0, static_cast<size_t>(n));
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            con->waiting = true;
            con->fd.async_wait(boost::asio::posix::stream_descriptor::wait_write,
                               [this, ref](boost::system::error_code ec) {
                                   Ct* c = find(ref);
                                   if (ec || !c || !c->console) {
                                       return;
                                   }
                                   c->console->waiting = false;
                                   flush_console(ref);
                               });
            return;
        }
        spdlog::warn("{}: console input: {}", ref.machine, strerror(errno));
        c->console.reset();
        return;
    }
    con->dropped = false;
}

void NspawnRuntime::console_resize(const core::InstanceRef& ref, unsigned cols, unsigned rows) {
    HANGAR_ASSERT_REACTOR();
    Console* con = console_of(ref);
    if (!con) {
        return;
    }
    winsize ws{};
    ws.ws_col = static_cast<unsigned short>(std::min(cols, 0xffffu));
    ws.ws_row = static_cast<unsigned short>(std::min(rows, 0xffffu));
    if (ioctl(con->fd.native_handle(), TIOCSWINSZ, &ws) != 0) {
        spdlog::warn("{}: console resize: {}", ref.machine, strerror(errno));
    }
}

// ---- root file system ------------------------------------------------------------------

void NspawnRuntime::prepare_rootfs(const MachineSpec& spec, Done done) {
    auto dir = machines_dir_ / spec.name;
    std::string rootfs = rootfs_of(spec.name);
    std::error_code ec;
    if (std::filesystem::is_directory(rootfs, ec)) {
        return post(std::move(done), {});
    }
    std::string src;
    Status st = image_lookup_ ? image_lookup_(spec.image, src)
                              : Status{Errc::unavailable, "no image store"};
    if (!st) {
        return post(std::move(done),
                    {Errc::invalid_state, "the container's image: " + st.message()});
    }
    // A copy that a crash interrupted goes first; the copy is renamed into place whole.
    std::string tmp = (dir / ".rootfs-copy").string();
    remove_tree_async(io_, tmp, tmp + "-" + random_hex(4));
    spdlog::info("{}: copying image {} to {}", spec.name, spec.image, rootfs);
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

// ---- exec ------------------------------------------------------------------------------

// What execs of an earlier hangard left running in the container (their answers are lost):
// their cgroups are killed and removed.
void NspawnRuntime::end_orphaned_execs(const std::string& name, pid_t nspawn_pid) {
    std::string unit = unit_cgroup_of(nspawn_pid, name);
    if (unit.empty()) {
        return;
    }
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(unit, ec)) {
        std::string base = e.path().filename().string();
        if (base.rfind("hangar-exec-", 0) == 0 && e.is_directory(ec)) {
            spdlog::info("{}: ending {} (an exec of an earlier hangard)", name, base);
            remove_cgroup_async(io_, e.path().string());
        }
    }
}

void NspawnRuntime::exec(const MachineSpec& spec, const core::InstanceRef& ref, bool running,
                         core::ExecRequest req, ExecDone done) {
    std::string name = spec.name;
    if (running) {
        if (!host_) {
            return boost::asio::post(io_, [done = std::move(done)] {
                done({Errc::unavailable, "no systemd connection"}, {});
            });
        }
        host_->leader(name, [this, ref, req = std::move(req), done = std::move(done)](
                                const Status& st, pid_t leader) mutable {
            Ct* c = find(ref);
            if (!st || !c) {
                return done(st ? Status{Errc::conflict, "the container has ended"} : st, {});
            }
            run_exec(ref.machine, c->pid, std::move(req), leader, std::move(done));
        });
        return;
    }
    if (req.interactive) {
        return boost::asio::post(io_, [done = std::move(done), name] {
            done({Errc::invalid_state, "an interactive exec needs " + name + " running"}, {});
        });
    }
    prepare_rootfs(
        spec, [this, name, req = std::move(req), done = std::move(done)](const Status& st) mutable {
            if (!st) {
                return done(st, {});
            }
            run_exec(name, 0, std::move(req), 0, std::move(done));
        });
}

void NspawnRuntime::exec_on_pty(const std::string& name, core::ExecRequest req, CaptureOptions opts,
                                ExecDone done) {
    PtyOptions po;
    po.argv = std::move(opts.argv);
    po.env = std::move(opts.env);
    po.cgroup = std::move(opts.cgroup);
    po.cols = static_cast<unsigned short>(req.cols);
    po.rows = static_cast<unsigned short>(req.rows);
    core::ExecResult out;
    out.running = true;
    Status st = PtyCommand::start(io_, std::move(po), out.pty);
    if (st) {
        spdlog::info("{}: interactive exec {} ({}x{})", name, json::quote(req.command[0]), req.cols,
                     req.rows);
        if (req.timeout.count() > 0) {
            // Its deadline, whether or not it is attached by then.
            auto timer = std::make_shared<boost::asio::steady_timer>(io_, req.timeout);
            timer->async_wait(
                [timer, weak = std::weak_ptr<PtyCommand>(out.pty)](boost::system::error_code ec) {
                    if (auto pty = weak.lock(); pty && !ec) {
                        pty->kill();
                    }
                });
        }
    }
    boost::asio::post(io_, [done = std::move(done), st, out = std::move(out)] { done(st, out); });
}

void NspawnRuntime::run_exec(const std::string& name, pid_t nspawn_pid, core::ExecRequest req,
                             pid_t leader, ExecDone done) {
    CaptureOptions opts;
    opts.limit = core::kExecOutputLimit;
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
        // Its processes get a cgroup of their own in the unit's (delegated) one, next to nspawn's
        // and the container's: all of them end with the command, even those it detached.
        std::string unit_cgroup = nspawn_pid > 0 ? unit_cgroup_of(nspawn_pid, name) : std::string();
        Status st =
            unit_cgroup.empty()
                ? Status{Errc::unavailable, "cannot find the cgroup of " + unit_name(name) +
                                                " (exec needs the unified cgroup hierarchy)"}
                : make_cgroup(unit_cgroup, "hangar-exec-" + random_hex(8), opts.cgroup);
        if (!st) {
            return boost::asio::post(io_, [done = std::move(done), st] { done(st, {}); });
        }
        opts.argv = exec_running_argv(leader, req.cwd, req.command);
        if (req.interactive && !req.env.count("TERM")) {
            req.env["TERM"] = "xterm-256color";
        }
        opts.env = command_env(req.env);
        if (req.interactive) {
            return exec_on_pty(name, std::move(req), std::move(opts), std::move(done));
        }
    } else {
        opts.argv = exec_stopped_argv(rootfs_of(name), req.cwd, req.env, req.command);
    }
    bool running = leader != 0;
    auto timeout = req.timeout;
    spdlog::info("{}: exec {} ({})", name, json::quote(req.command[0]),
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
                    core::ExecResult out;
                    out.exit_code = r.exit.signal ? 128 + r.exit.signal : r.exit.code;
                    out.out = std::move(r.out);
                    out.err = std::move(r.err);
                    out.out_truncated = r.out_truncated;
                    out.err_truncated = r.err_truncated;
                    out.running = running;
                    done({}, out);
                });
}

}  // namespace hangar::nspawn
