#pragma once
// The machine registry and the state machine of each machine. REST handlers (and later the
// D-Bus adaptor) are thin faces over this class; every business rule lives here.
//
// State is driven only by what QEMU reports: QMP events (STOP, RESUME, SHUTDOWN, RESET,
// POWERDOWN, GUEST_PANICKED) and the exit seen through the process's pidfd. An operation in
// flight holds the machine's operation lock; a conflicting request fails at once with `busy`.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/containers.hpp"
#include "core/event_bus.hpp"
#include "drivers/qemu/argv.hpp"
#include "drivers/qemu/qemu_process.hpp"
#include "hangar/error.hpp"
#include "hangar/machine.hpp"

namespace hangar::store {
class Db;
}
namespace hangar::core {

// Who is asking: over the unix socket, the peer's uid.
struct Caller {
    uint32_t uid = 0;
    bool admin = false;
    bool local = false;  // over the unix socket (not through a token)
    // How the caller was identified: "unix", "token", "certificate" or "anonymous".
    const char* method = "unix";
};

enum class Action { start, stop, kill, restart, pause, resume };
std::optional<Action> parse_action(std::string_view s);

struct ActionArgs {
    std::chrono::seconds stop_timeout{60};  // graceful stop: then quit, then SIGKILL
    bool reset = false;                     // restart through system_reset
    std::string reason;                     // of a start; "" is "api:start"
};

struct Machine {
    MachineSpec spec;
    MachineState state = MachineState::stopped;
    std::string state_reason;
    bool unresponsive = false;
    std::shared_ptr<qemu::QemuProcess> proc;
    // Containers: hangar-NAME.service was started (or found) and has not been seen to end.
    bool unit_live = false;
    bool unit_seen_up = false;  // since the start: a fresh transient unit is reported inactive
    pid_t pid = 0;              // QEMU, or a container's systemd-nspawn

    // Operation lock: the operation in flight ("" when none) and who waits for it.
    std::string op;
    std::vector<std::pair<std::string, std::function<void(const Status&)>>> waiters;
    // What the next exit of QEMU means (set by SHUTDOWN, api:kill, a forced stop...).
    std::string exit_reason;
    bool exit_is_crash = false;
    bool restart_pending = false;
    bool delete_after_exit = false;
    bool quit_sent = false;  // "quit" went out for the current QEMU
    // An ExitExplainer is asked why QEMU was signalled; its exit waits for the answer.
    bool explaining = false;
    std::optional<std::pair<std::string, bool>> deferred_exit;  // (how, clean)
    std::unique_ptr<boost::asio::steady_timer> stop_timer;
    uint64_t generation = 0;  // identifies the current QEMU; stale callbacks compare it

    // Bumped whenever `spec` is replaced.
    uint64_t spec_rev = 0;
    // Machines::to_json's last answer and what it was made from; reused while they match,
    // so listing many machines copies strings instead of serializing each one again.
    struct JsonCache {
        std::string json;
        uint64_t spec_rev = UINT64_MAX;
        MachineState state = MachineState::stopped;
        std::string state_reason, op;
        bool unresponsive = false;
        pid_t pid = 0;
    };
    mutable JsonCache json_cache;
};

struct MachinesConfig {
    std::filesystem::path machines_dir;  // <state dir>/machines
    qemu::Settings qemu;
    BootSpec default_boot;  // the built-in guest; empty kernel when none was found
    size_t max_machines_per_owner = 4096;
};

class Machines {
  public:
    using Done = std::function<void(const Status&, const Machine*)>;

    Machines(boost::asio::io_context& io, store::Db& db, EventBus& events, MachinesConfig cfg);
    ~Machines();

    // Loads the store and adopts every QEMU left running; `done(adopted, total)` when all
    // machines are settled. The API may serve meanwhile: machines being adopted are `busy`.
    void load_and_adopt(std::function<void(size_t adopted, size_t total)> done);
    // Leaves every QEMU running and lets go of it (daemon shutdown).
    void detach_all();

    Status create(const Caller& caller, MachineSpec spec, const Machine** out);
    // Replaces the spec of `name` with `spec`, whose fields listed in `changed` differ from
    // the request's view. cpus, memory_mib and boot change only while QEMU is not running.
    Status update(const Caller& caller, const std::string& name, MachineSpec spec,
                  const std::set<std::string>& changed, const Machine** out);
    Status get(const Caller& caller, const std::string& name, const Machine** out) const;
    std::vector<const Machine*> list(const Caller& caller, std::optional<MachineState> state,
                                     const std::string& type) const;
    // Starts an action. A refusal (bad name, not found, wrong state, busy) is returned at once;
    // otherwise `done` is called, never from inside this call, when the transition completed.
    Status act(const Caller& caller, const std::string& name, Action action, ActionArgs args,
               Done done);
    void remove(const Caller& caller, const std::string& name, bool force,
                std::function<void(const Status&)> done);
    // Starts, one after another in name order, every machine with autostart set that is
    // stopped or crashed, with the reason "autostart"; a failure is logged and the next one
    // started. `done(started, failed)` at the end.
    void autostart(std::function<void(size_t started, size_t failed)> done);

    // Runs a command in a container: inside it while it runs (its namespaces and root), in its
    // root file system while it is stopped (holding the operation lock). Refusals are returned.
    using ExecDone = std::function<void(const Status&, const ExecResult&)>;
    Status exec(const Caller& caller, const std::string& name, ExecRequest req, ExecDone done);

    // Containers run through `host` (systemd + machined); without one they cannot start.
    void set_container_host(ContainerHost* host) { host_ = host; }
    // The root file system directory of a local image, or an error naming what is wrong.
    using ImageLookup = std::function<Status(const std::string& image, std::string& rootfs)>;
    void set_image_lookup(ImageLookup lookup) { image_lookup_ = std::move(lookup); }
    // What systemd says of container `name`'s unit (a change, or the state found on connect).
    void on_unit(const std::string& name, const UnitStatus& st);
    // The host lost (false) or regained (true) its connection: until it reports, container
    // states are marked unresponsive.
    void on_container_host(bool reachable, const std::string& why);

    // Asked when QEMU says something outside hangar signalled it (SHUTDOWN reason=host-signal):
    // calls `answer` once, soon, with the reason to report for the stop, e.g.
    // "machined:terminated", or "" to keep QEMU's. The machine's exit waits for the answer.
    using ExitExplainer = std::function<void(const Machine&, std::function<void(std::string)>)>;
    void set_exit_explainer(ExitExplainer e) { explainer_ = std::move(e); }

    const std::string& to_json(const Machine& m) const;
    uint64_t revision() const { return events_.revision(); }
    const std::map<std::string, std::unique_ptr<Machine>>& all() const { return machines_; }
    const MachinesConfig& config() const { return cfg_; }
    std::filesystem::path machine_dir(const std::string& name) const {
        return cfg_.machines_dir / name;
    }

  private:
    // Checks limits and files; fills the built-in guest in when no boot source is given.
    Status validate(MachineSpec& spec) const;
    Machine* find_visible(const Caller& caller, const std::string& name) const;
    // invalid_name, not_found (also for others' machines), or the machine in `out`.
    Status lookup(const Caller& caller, const std::string& name, Machine** out) const;
    void set_state(Machine& m, MachineState to, const std::string& reason);
    void begin_op(Machine& m, const std::string& op, std::function<void(const Status&)> done);
    void finish_op(Machine& m, const Status& st);
    void launch(Machine& m, const std::string& reason);
    // Containers (machines_container.cpp).
    void launch_container(Machine& m);
    void stop_container(Machine& m, std::chrono::seconds timeout);
    void stop_container_step(const std::string& name, uint64_t gen,
                             std::chrono::steady_clock::time_point deadline, int signal,
                             std::chrono::seconds timeout);
    void kill_container(Machine& m);
    void explain_container_stop(Machine& m);
    // Copies the image's root file system to the machine's directory unless it is there.
    void prepare_rootfs(Machine& m, std::function<void(const Status&)> done);
    void run_exec(Machine& m, ExecRequest req, pid_t leader, ExecDone done);
    Status validate_container(MachineSpec& spec) const;
    // Removes a directory tree in a child process, after moving it out of the way.
    void remove_tree(const std::filesystem::path& dir);
    // Kills whatever runs the machine (QEMU or the container's unit).
    void kill_now(Machine& m);
    // What a QEMU of machine `name` (generation `gen`) reports, routed to the handlers below.
    qemu::QemuProcess::Callbacks callbacks(const std::string& name, uint64_t gen);
    void graceful_stop(Machine& m, std::chrono::seconds timeout);
    void force_quit(Machine& m, const std::string& why);
    void on_qmp_event(Machine& m, std::string_view event, const std::string& detail);
    void on_exit(Machine& m, const std::string& how, bool clean);
    // The answer to why a machine is ending is in (any reason set): the exit that waited goes on.
    void explained(Machine& m);
    void on_responsive(Machine& m, bool responsive, const std::string& why);
    void adopted(Machine& m, const std::string& status);
    void erase(Machine& m);
    // Runs `fn(machine)` if the machine still exists with the same QEMU generation.
    template <typename Fn>
    void with_machine(const std::string& name, uint64_t generation, Fn&& fn) {
        auto it = machines_.find(name);
        if (it != machines_.end() && it->second->generation == generation) {
            fn(*it->second);
        }
    }

    boost::asio::io_context& io_;
    store::Db& db_;
    EventBus& events_;
    MachinesConfig cfg_;
    std::map<std::string, std::unique_ptr<Machine>> machines_;
    ExitExplainer explainer_;
    ContainerHost* host_ = nullptr;
    ImageLookup image_lookup_;
};

// The reason of a container's stop and start when it rebooted itself (nspawn exits 133).
inline constexpr const char* kContainerReboot = "container:reboot";
// The reason of an end that machined brought about (TerminateMachine from someone else).
inline constexpr const char* kMachinedTerminated = "machined:terminated";

// QEMU runs, or the container's unit is up.
inline bool is_live(const Machine& m) {
    return m.proc || m.unit_live;
}

}  // namespace hangar::core
