#pragma once
// Long-running actions answered with 202 (`?wait=false`, D-Bus's *Async methods, image pulls):
// each gets an id, an `operation.created` event, and an `operation.done` event with its result.
// The core creates them (run_action for a machine's action), so every face offers the same.
// They are stored: the newest 1,000 finished operations stay readable through
// GET /v1/operations/{id}, across restarts too, and one that was in flight when hangard died
// ends after the restart as `failed` with the error `interrupted` — or, for a start that the
// adoption of the machine completed, as `succeeded` (its `detail` says so).
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <set>
#include <string>
#include <unordered_map>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"

namespace hangar::store {
class Db;
}

namespace hangar::core {

struct Operation {
    std::string id, machine, action;
    std::string image;  // the image an image operation is about ("" for machine operations)
    uint32_t owner = 0;
    std::string status = "running";  // running, succeeded, failed, cancelled
    std::string created_at, done_at;
    Status error;
    std::string state;   // the machine's state when it finished
    std::string detail;  // how it ended when that is not the usual way (completed by adoption)
    // Progress of an image operation: its phase ("catalog", "download", "verify", "unpack")
    // and bytes done of total (0 when unknown).
    std::string phase;
    uint64_t bytes = 0, total = 0;
    bool cancelling = false;  // cancel() was asked: a failure that follows is "cancelled"
};

class Operations {
  public:
    // Loads the stored operations. One an earlier hangard left running ends: an image's at
    // once (interrupted), a machine's when adoption_settled() is called.
    Operations(boost::asio::io_context& io, EventBus& events, store::Db& db, Machines& machines);
    ~Operations();
    Operations(const Operations&) = delete;
    Operations& operator=(const Operations&) = delete;

    // A machine's action as an operation. Machines::act's refusals are returned at once, and
    // then there is no operation; otherwise `id` names it, it is stored (and operation.created
    // published) before this returns, and it ends when the action completes.
    Status run_action(const Caller& caller, const std::string& name, Action action, ActionArgs args,
                      std::string& id);
    // Machines::load_and_adopt has settled: every machine operation an earlier hangard left
    // running ends — a start whose machine adoption found running (or finished starting)
    // `succeeded`, anything else `failed` with `interrupted`. A start whose machine is still
    // `starting` (adoption is finishing it; a container whose unit is not reported yet) ends
    // when the machine leaves `starting`.
    void adoption_settled();

    std::string new_id() const;
    // An operation about an image: operation.created now, operation.progress as it advances
    // (the caller throttles), operation.done from finish_image.
    void start_image(const std::string& id, const std::string& image, uint32_t owner,
                     const std::string& action);
    void progress(const std::string& id, const std::string& phase, uint64_t bytes, uint64_t total);
    // Another long step about a machine (a snapshot with memory): operation.created now,
    // operation.done from finish_step.
    void start_step(const std::string& id, const std::string& machine, uint32_t owner,
                    const std::string& action);
    void finish_step(const std::string& id, const Status& st);
    void finish_image(const std::string& id, const Status& st);
    Status get(const Caller& caller, const std::string& id, const Operation** out) const;
    // Makes a running operation cancellable: `cancel(uid)` must end it (finish with an error)
    // at once, killing what it runs.
    void set_canceller(const std::string& id, std::function<void(uint32_t by)> cancel);
    // DELETE /v1/operations/{id}: by its owner or an admin. not_found (also for others'),
    // invalid_state when it has ended, conflict when it cannot be cancelled.
    Status cancel(const Caller& caller, const std::string& id, const Operation** out);
    std::string to_json(const Operation& op) const;
    size_t running() const;

    // For faces that show operations as objects (D-Bus): `w` is called when one is created,
    // advances and ends. Every operation kept: the running ones, then the finished ones in
    // the order they ended.
    enum class Change { created, progress, done };
    using Watcher = std::function<void(const Operation&, Change)>;
    uint64_t watch(Watcher w);
    void unwatch(uint64_t id);
    std::vector<const Operation*> list() const;
    const Operation* find(const std::string& id) const;

  private:
    void start(const std::string& id, const std::string& machine, uint32_t owner,
               const std::string& action);
    void finish(const std::string& id, const Status& st, const Machine* m);
    void begin(const std::string& id, Operation op, uint32_t owner, const std::string& action);
    void store(const Operation& op);
    void notify(const Operation& op, Change c);
    void load();
    // Ends what it can of the operations an earlier hangard left running (see
    // adoption_settled); watches the machines of the others.
    void resolve_interrupted();

    boost::asio::io_context& io_;
    EventBus& events_;
    store::Db& db_;
    Machines& machines_;
    std::unordered_map<std::string, Operation> ops_;
    std::unordered_map<std::string, std::function<void(uint32_t)>> cancellers_;
    std::deque<std::string> finished_;
    uint64_t done_count_ = 0;            // orders the finished ones in the store
    std::set<std::string> interrupted_;  // machine operations of an earlier hangard, running
    uint64_t subscription_ = 0;          // machine events, while some of interrupted_ wait for one
    bool resolve_posted_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
    uint64_t next_watcher_ = 1;
    std::map<uint64_t, Watcher> watchers_;
};

inline constexpr size_t kKeptOperations = 1000;

}  // namespace hangar::core
