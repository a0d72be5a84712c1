#pragma once
// The machine registry and the state machine of each machine, over one Runtime per machine
// type (core/runtime.hpp). The faces (HTTP, D-Bus, the spool) are thin: every business rule
// lives here, and nothing here is a type's own (no QMP, no systemd word).
//
// State changes only with what the runtime reports (running, paused, stopping, exited); an
// operation in flight holds the machine's operation lock, and a conflicting request fails at
// once with `busy`.
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

#include "core/admin_group.hpp"
#include "core/event_bus.hpp"
#include "core/exec.hpp"
#include "core/quotas.hpp"
#include "core/runtime.hpp"
#include "core/templates.hpp"
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
    std::chrono::seconds stop_timeout{60};  // graceful stop: then forced
    bool reset = false;                     // restart through a reset of the guest
    std::string reason;                     // of a start; "" is "api:start"
};

// The operation holding a machine's lock.
enum class Op {
    none,
    start,
    stop,
    kill,
    restart,
    pause,
    resume,
    remove,
    exec,
    adopt,
    snapshot,
    clone
};
// "start" ... "delete", "exec", "adopt"; "" for none.
std::string_view to_string(Op op);

struct Machine {
    MachineSpec spec;
    MachineType type = MachineType::vm;
    Runtime* runtime = nullptr;
    MachineState state = MachineState::stopped;
    std::string state_reason;
    bool unresponsive = false;
    bool live = false;  // its runtime runs an instance (QEMU, the container's unit)
    pid_t pid = 0;      // QEMU, or a container's systemd-nspawn

    // Operation lock: the operation in flight and who waits for it.
    Op op = Op::none;
    std::vector<std::pair<Op, std::function<void(const Status&)>>> waiters;
    // hangard's own reason for the coming end (api:kill, api:delete force, machined:terminated):
    // it wins over what the runtime reports.
    std::string exit_reason;
    bool restart_pending = false;
    bool delete_after_exit = false;
    // The end came from outside: who did it is being asked; the exit waits for the answer.
    bool explaining = false;
    std::optional<ExitFact> deferred_exit;
    uint64_t generation = 0;  // the current instance; reports about others are dropped

    // Bumped whenever `spec` is replaced, or what the JSON shows besides the state changes.
    uint64_t spec_rev = 0;
    std::string console_viewers = "[]";  // a JSON array, kept by core::Consoles
    // Machines::to_json's last answer and what it was made from; reused while they match,
    // so listing many machines copies strings instead of serializing each one again.
    struct JsonCache {
        std::string json;
        uint64_t spec_rev = UINT64_MAX;
        MachineState state = MachineState::stopped;
        std::string state_reason;
        Op op = Op::none;
        bool unresponsive = false;
        pid_t pid = 0;
    };
    mutable JsonCache json_cache;

    InstanceRef instance() const { return {spec.name, generation}; }
};

struct MachinesConfig {
    std::filesystem::path machines_dir;  // <state dir>/machines
    // Per-owner quotas and the host's bound on one machine; none: no limits.
    const Quotas* quotas = nullptr;
    // Who is an admin now (root, the admin group); none: root only.
    const AdminGroup* admins = nullptr;
    // The size templates a create may name; none: a create that names one is refused.
    const Templates* templates = nullptr;
};

class Machines final : private RuntimeSink {
  public:
    using Done = std::function<void(const Status&, const Machine*)>;

    // `runtimes`: one per machine type, not owned; a type without one cannot be created.
    Machines(boost::asio::io_context& io, store::Db& db, EventBus& events, MachinesConfig cfg,
             std::vector<Runtime*> runtimes);
    ~Machines();

    // Loads the store and adopts every instance left running; `done(adopted, total)` when all
    // machines are settled. The API may serve meanwhile: machines being adopted are `busy`.
    void load_and_adopt(std::function<void(size_t adopted, size_t total)> done);
    // Leaves every instance running and lets go of it (daemon shutdown).
    void detach_all();

    Status create(const Caller& caller, MachineSpec spec, const Machine** out);
    // Replaces the spec of `name` with `spec`, whose fields listed in `changed` differ from
    // the request's view. cpus, memory_mib and boot change only while nothing runs.
    Status update(const Caller& caller, const std::string& name, MachineSpec spec,
                  const std::set<std::string>& changed, const Machine** out);
    // The same, and what a running instance can take at once (its CD-ROM) goes to it first;
    // `done` after that, never from inside the call. The HTTP face's PATCH.
    void update_live(const Caller& caller, const std::string& name, MachineSpec spec,
                     std::set<std::string> changed, Done done);
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

    // Runs a command in a machine: inside it while it runs, in its stopped files while it is
    // stopped (holding the operation lock). Refusals are returned. An interactive one needs the
    // machine running; its result holds the command, running on its pty.
    using ExecDone = std::function<void(const Status&, const ExecResult&)>;
    Status exec(const Caller& caller, const std::string& name, ExecRequest req, ExecDone done);
    boost::asio::io_context& io() { return io_; }

    // Holds `name`'s operation lock for a change another part of the core makes to its files
    // (a snapshot): busy while another operation holds it. release() lets it go.
    Status hold(const std::string& name, Op op);
    void release(const std::string& name, Op op);
    // What hold() would refuse (not_found, busy), without holding.
    Status idle(const std::string& name) const;

    // Asked when a machine ends from outside (QEMU signalled by someone, a container's unit
    // stopped by someone): calls `answer` once, soon, with the reason to report for the end
    // ("machined:terminated"), or "" to keep the runtime's. The machine's exit waits for it.
    using ExitExplainer = std::function<void(const Machine&, std::function<void(std::string)>)>;
    void set_exit_explainer(ExitExplainer e) { explainer_ = std::move(e); }

    // Console input and window size for the running instance of `name` (the core's
    // Consoles, for a viewer it has checked). invalid_state when nothing runs.
    Status console_input(const std::string& name, std::string_view bytes);
    Status console_resize(const std::string& name, unsigned cols, unsigned rows);
    // The console's viewers as the machine JSON shows them (a JSON array).
    void set_console_viewers(const std::string& name, std::string viewers_json);

    // Told when a running machine's guest is reset in place (its console says so).
    using ResetListener = std::function<void(const std::string& machine, const std::string& why)>;
    void set_reset_listener(ResetListener l) { reset_listener_ = std::move(l); }

    // The disks attached to a machine, each as an item of its JSON's "disks" array
    // (core::Disks), after a VM's root disk.
    using DisksJson = std::function<std::vector<std::string>(const std::string& machine)>;
    void set_disks_json(DisksJson f) { disks_json_ = std::move(f); }
    // The names of the disks attached to `name`, in order (for faces such as D-Bus).
    using DiskNames = std::function<std::vector<std::string>(const std::string& machine)>;
    void set_disk_names(DiskNames f) { disk_names_ = std::move(f); }
    std::vector<std::string> disk_names(const std::string& name) const {
        return disk_names_ ? disk_names_(name) : std::vector<std::string>{};
    }
    // What is attached to `name` changed: its JSON is made again, machine.updated published.
    void disks_changed(const std::string& name, const std::string& reason);
    // Told when a guest releases a disk after its detach's deadline passed.
    using DiskReleased = std::function<void(const std::string& machine, const std::string& disk)>;
    void set_disk_released(DiskReleased f) { disk_released_ = std::move(f); }

    const std::string& to_json(const Machine& m) const;
    uint64_t revision() const { return events_.revision(); }
    const std::map<std::string, std::unique_ptr<Machine>>& all() const { return machines_; }
    std::filesystem::path machine_dir(const std::string& name) const {
        return cfg_.machines_dir / name;
    }

  private:
    Runtime* runtime_for(MachineType t) const;
    // Checks limits and the runtime's part of the spec (files opened as `owner`).
    Status validate(MachineSpec& spec, uid_t owner, Runtime** rt) const;
    // update(); `applied`: what the running instance takes at once has been given to it.
    Status update_checked(const Caller& caller, const std::string& name, MachineSpec spec,
                          const std::set<std::string>& changed, bool applied, const Machine** out);
    Privilege privilege(uid_t owner) const;
    Machine* find_visible(const Caller& caller, const std::string& name) const;
    // invalid_name, not_found (also for others' machines), or the machine in `out`.
    Status lookup(const Caller& caller, const std::string& name, Machine** out) const;
    void set_state(Machine& m, MachineState to, const std::string& reason);
    void begin_op(Machine& m, Op op, std::function<void(const Status&)> done);
    void finish_op(Machine& m, const Status& st);
    void launch(Machine& m, const std::string& reason);
    void start_failed(Machine& m, const Status& st);
    void graceful_stop(Machine& m, std::chrono::seconds timeout);
    void kill_now(Machine& m);
    // The answer to why a machine is ending is in (any reason set): the exit that waited goes on.
    void explained(Machine& m);
    void exited(Machine& m, const ExitFact& fact);
    void adopted(Machine& m, const Adoption& a);
    void erase(Machine& m);
    // Removes a directory tree in a child process, after moving it out of the way.
    void remove_tree(const std::filesystem::path& dir);
    // Runs `fn(machine)` if the machine still exists with the same instance.
    template <typename Fn>
    void with_machine(const std::string& name, uint64_t generation, Fn&& fn) {
        auto it = machines_.find(name);
        if (it != machines_.end() && it->second->generation == generation) {
            fn(*it->second);
        }
    }
    template <typename Fn>
    void with_instance(const InstanceRef& ref, Fn&& fn) {
        with_machine(ref.machine, ref.generation, std::forward<Fn>(fn));
    }

    // RuntimeSink
    void on_pid(const InstanceRef& ref, pid_t pid) override;
    void on_running(const InstanceRef& ref, const std::string& reason) override;
    void on_paused(const InstanceRef& ref, const std::string& reason) override;
    void on_stopping(const InstanceRef& ref, const StoppingFact& fact) override;
    void on_exited(const InstanceRef& ref, const ExitFact& fact) override;
    void on_responsive(const InstanceRef& ref, bool responsive, const std::string& why) override;
    void on_reset(const InstanceRef& ref, const std::string& reason) override;
    void on_disk_released(const InstanceRef& ref, const std::string& disk) override;
    void set_responsive(Machine& m, bool responsive, const std::string& why);

    boost::asio::io_context& io_;
    store::Db& db_;
    EventBus& events_;
    MachinesConfig cfg_;
    std::vector<Runtime*> runtimes_;
    std::map<std::string, std::unique_ptr<Machine>> machines_;
    ExitExplainer explainer_;
    ResetListener reset_listener_;
    DisksJson disks_json_;
    DiskNames disk_names_;
    DiskReleased disk_released_;
};

}  // namespace hangar::core
