#pragma once
// The host containers' units run on (dbus::Units over org.freedesktop.systemd1 and machined,
// in the daemon) as NspawnRuntime sees it: what systemd reports of a unit, and the calls the
// runtime makes. The runtime interprets; the host only carries calls and reports.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "hangar/error.hpp"

namespace hangar::nspawn {

// A container's unit, from systemd's PropertiesChanged (Service interface first, then Unit,
// which is when it is reported) or from a listing after (re)connecting.
struct UnitStatus {
    bool exists = false;       // loaded in systemd
    std::string active_state;  // "active", "activating", "deactivating", "inactive", "failed"
    std::string result;        // Service.Result: "success", "exit-code", "signal", ...
    int exec_code = 0;         // ExecMainCode: CLD_EXITED (1), CLD_KILLED (2), CLD_DUMPED (3)
    int exec_status = 0;       // exit status or signal number
    uint32_t main_pid = 0;     // systemd-nspawn's PID while it runs

    // The unit is up (or on its way up or down): its container has processes.
    bool up() const;
    // "result=signal signal=9 (KILL)", "result=success status=0", "unit gone".
    std::string describe() const;
};

// One container unit to start: hangar-NAME.service running systemd-nspawn.
struct ContainerLaunch {
    std::string machine;
    std::string unit;
    std::vector<std::string> argv;
    std::string description;
    uint32_t cpus = 1;
    uint32_t memory_mib = 128;
    std::string log_path;  // the container's console output is appended here
    std::chrono::seconds stop_timeout{10};
};

class ContainerHost {
  public:
    virtual ~ContainerHost() = default;
    using Done = std::function<void(const Status&)>;
    // StartTransientUnit; `done` when its job has finished (ok when its result is "done").
    virtual void start(const ContainerLaunch& launch, Done done) = 0;
    // StopUnit: systemd stops nspawn, which stops the container, and kills what is left after
    // the unit's stop timeout.
    virtual void stop(const std::string& unit, Done done) = 0;
    // KillUnit(all, signal).
    virtual void kill(const std::string& unit, int signal, Done done) = 0;
    // machined's KillMachine(leader, signal): the container's init gets `signal`.
    virtual void signal_leader(const std::string& machine, int signal, Done done) = 0;
    // Whether machined's State of `machine` is "closing": machined itself is ending it
    // (TerminateMachine, `machinectl terminate`). false when that cannot be told.
    virtual void machined_closing(const std::string& machine, std::function<void(bool)> done) = 0;
    // machined's Leader of `machine`: the container's init as seen from the host.
    virtual void leader(const std::string& machine,
                        std::function<void(const Status&, pid_t)> done) = 0;
};

}  // namespace hangar::nspawn
