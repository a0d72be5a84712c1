#pragma once
// Container command lines: systemd-nspawn for a container's unit and for a command in a
// stopped container's root file system, nsenter for a command in a running one, and what the
// root file system's init is (which decides its power-off signal).
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

#include "hangar/machine.hpp"

namespace hangar::nspawn {

// The transient unit of container `name`.
std::string unit_name(const std::string& name);

struct InitKind {
    std::string kind;     // "systemd", "busybox" or "other"
    int poweroff_signal;  // SIGRTMIN+4 for systemd, SIGUSR2 for busybox, SIGTERM otherwise
    std::string signal_name;
};
// Resolves /sbin/init inside `rootfs` (symlinks taken relative to it, never leaving it).
InitKind detect_init(const std::string& rootfs);

// systemd-nspawn for the unit: registered with machined under the machine's name and UUID,
// private network, console to its stdout; --boot, or the spec's command as PID 2.
std::vector<std::string> unit_argv(const MachineSpec& spec, const std::string& rootfs,
                                   const InitKind& init);

// The environment a command gets: a default PATH/HOME/TERM, then `env` over it.
std::vector<std::string> command_env(const std::map<std::string, std::string>& env);

// nsenter into every namespace and the root of `leader`; a `cwd` other than / is entered by
// the container's /bin/sh.
std::vector<std::string> exec_running_argv(pid_t leader, const std::string& cwd,
                                           const std::vector<std::string>& command);
// systemd-nspawn without boot or registration, on the stopped container's root file system,
// as the first process of a new PID namespace (unshare), so nothing outlives it; it ends with
// the process that started it (setpriv --pdeathsig).
std::vector<std::string> exec_stopped_argv(const std::string& rootfs, const std::string& cwd,
                                           const std::map<std::string, std::string>& env,
                                           const std::vector<std::string>& command);

}  // namespace hangar::nspawn
