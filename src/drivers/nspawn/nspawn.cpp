#include "drivers/nspawn/nspawn.hpp"

#include <fcntl.h>
#include <linux/openat2.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <climits>

namespace hangar::nspawn {

namespace {
constexpr const char* kDefaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

// The host path of `path` resolved inside `root` as if `root` were /; "" when absent.
std::string resolve_in_root(const std::string& root, const char* path) {
    int dir = open(root.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (dir < 0) {
        return {};
    }
    open_how how{};
    how.flags = O_PATH | O_CLOEXEC;
    how.resolve = RESOLVE_IN_ROOT;
    int fd = static_cast<int>(syscall(SYS_openat2, dir, path, &how, sizeof how));
    close(dir);
    if (fd < 0) {
        return {};
    }
    char buf[PATH_MAX];
    ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), buf, sizeof buf - 1);
    close(fd);
    return n > 0 ? std::string(buf, static_cast<size_t>(n)) : std::string{};
}
}  // namespace

std::string unit_name(const std::string& name) {
    return "hangar-" + name + ".service";
}

InitKind detect_init(const std::string& rootfs) {
    std::string init = resolve_in_root(rootfs, "sbin/init");
    std::string base = init.substr(init.rfind('/') + 1);
    if (base == "systemd") {
        return {"systemd", SIGRTMIN + 4, "SIGRTMIN+4"};
    }
    if (base == "busybox") {
        return {"busybox", SIGUSR2, "SIGUSR2"};
    }
    return {"other", SIGTERM, "SIGTERM"};
}

std::vector<std::string> unit_argv(const MachineSpec& spec, const std::string& rootfs,
                                   const InitKind& init) {
    std::vector<std::string> argv = {"systemd-nspawn", "--quiet", "--keep-unit", "--register=yes",
                                     "--machine=" + spec.name, "--uuid=" + spec.uuid,
                                     "--directory=" + rootfs, "--private-network",
                                     // Unprivileged: its root is an unprivileged uid range
                                     // on the host (an idmapped mount where the file system
                                     // has them, else a one-time chown of the tree).
                                     "--private-users=pick", "--private-users-ownership=auto",
                                     "--console=read-only", "--kill-signal=" + init.signal_name};
    if (spec.boot.command.empty()) {
        // systemd inside says READY=1 once booted; other inits cannot say it.
        argv.push_back(init.kind == "systemd" ? "--notify-ready=yes" : "--notify-ready=no");
        argv.push_back("--boot");
    } else {
        argv.push_back("--notify-ready=no");
        argv.push_back("--as-pid2");
        argv.push_back("--");
        argv.insert(argv.end(), spec.boot.command.begin(), spec.boot.command.end());
    }
    return argv;
}

std::vector<std::string> command_env(const std::map<std::string, std::string>& env) {
    std::map<std::string, std::string> all = {
        {"PATH", kDefaultPath}, {"HOME", "/root"}, {"TERM", "dumb"}, {"container", "hangar"}};
    for (const auto& [k, v] : env) {
        all[k] = v;
    }
    std::vector<std::string> out;
    for (const auto& [k, v] : all) {
        out.push_back(k + "=" + v);
    }
    return out;
}

std::vector<std::string> exec_running_argv(pid_t leader, const std::string& cwd,
                                           const std::vector<std::string>& command) {
    // --wd without a value: the leader's working directory. nsenter would resolve a given
    // directory from the host (where the container's absolute symlinks point elsewhere), so
    // any other directory is entered inside, by the container's own shell.
    std::vector<std::string> argv = {
        "nsenter", "--target", std::to_string(leader), "--all", "--root", "--wd", "--"};
    if (cwd != "/") {
        argv.insert(argv.end(), {"/bin/sh", "-c", "cd -- \"$1\" || exit 126; shift; exec \"$@\"",
                                 "hangar-exec", cwd});
    }
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
}

std::vector<std::string> exec_stopped_argv(const std::string& rootfs, const std::string& cwd,
                                           const std::map<std::string, std::string>& env,
                                           const std::vector<std::string>& command) {
    // nspawn is the first process of a PID namespace of its own: when it ends, however it ends
    // (killed at the deadline too), the kernel kills everything below it, the container's init
    // and whatever the command left. (Killed alone, nspawn would leave its container running.)
    // It also ends with hangard (its lock on the root file system would be gone).
    // The same user namespacing as its boots, so what it writes is owned alike.
    std::vector<std::string> argv = {"setpriv",
                                     "--pdeathsig",
                                     "KILL",
                                     "--",
                                     "unshare",
                                     "--pid",
                                     "--fork",
                                     "--kill-child",
                                     "--mount-proc",
                                     "--",
                                     "systemd-nspawn",
                                     "--quiet",
                                     "--register=no",
                                     "--keep-unit",
                                     "--pipe",
                                     "--as-pid2",
                                     "--private-users=pick",
                                     "--private-users-ownership=auto",
                                     "--directory=" + rootfs,
                                     "--chdir=" + cwd};
    for (const auto& kv : command_env(env)) {
        argv.push_back("--setenv=" + kv);
    }
    argv.push_back("--");
    argv.insert(argv.end(), command.begin(), command.end());
    return argv;
}

}  // namespace hangar::nspawn
