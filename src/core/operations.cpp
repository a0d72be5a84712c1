#include "core/operations.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "store/db.hpp"
#include "util/json.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"
#include "util/time.hpp"

namespace hangar::core {

namespace {
const char* action_name(Action a) {
    switch (a) {
        case Action::start:
            return "start";
        case Action::stop:
            return "stop";
        case Action::kill:
            return "kill";
        case Action::restart:
            return "restart";
        case Action::pause:
            return "pause";
        case Action::resume:
            return "resume";
    }
    return "start";
}

Errc errc_from_name(std::string_view name) {
    for (int i = 0; i <= static_cast<int>(Errc::interrupted); ++i) {
        if (errc_name(static_cast<Errc>(i)) == name) {
            return static_cast<Errc>(i);
        }
    }
    return Errc::internal;
}
}  // namespace

Operations::Operations(boost::asio::io_context& io, EventBus& events, store::Db& db,
                       Machines& machines)
    : io_(io), events_(events), db_(db), machines_(machines) {
    load();
}

Operations::~Operations() {
    *alive_ = false;
    if (subscription_) {
        events_.unsubscribe(subscription_);
    }
}

void Operations::load() {
    std::vector<std::string> images_interrupted;
    for (auto& r : db_.load_operations()) {
        Operation op;
        op.id = r.id;
        op.owner = r.owner;
        op.machine = std::move(r.machine);
        op.image = std::move(r.image);
        op.action = std::move(r.action);
        op.status = std::move(r.status);
        op.created_at = std::move(r.created_at);
        op.done_at = std::move(r.done_at);
        op.state = std::move(r.state);
        op.detail = std::move(r.detail);
        op.phase = std::move(r.phase);
        op.bytes = r.bytes;
        op.total = r.total;
        if (!r.error_code.empty()) {
            op.error = {errc_from_name(r.error_code), r.error_message};
        }
        if (op.status == "running" && op.image.empty()) {
            interrupted_.insert(r.id);
        } else if (op.status == "running") {
            images_interrupted.push_back(r.id);
        } else {
            finished_.push_back(r.id);
            done_count_ = std::max(done_count_, r.done);
        }
        ops_[r.id] = std::move(op);
    }
    // A pull or import is not resumed: what it had fetched is gone with its process.
    for (const auto& id : images_interrupted) {
        finish(id,
               {Errc::interrupted, "hangard was restarted while this " + ops_[id].action +
                                       " was in flight; it was not resumed"},
               nullptr);
    }
    if (!ops_.empty()) {
        spdlog::info("operations: {} kept from before the restart, {} of them interrupted",
                     ops_.size(), interrupted_.size() + images_interrupted.size());
    }
}

std::string Operations::new_id() const {
    return "op-" + random_hex(8);
}

Status Operations::run_action(const Caller& caller, const std::string& name, Action action,
                              ActionArgs args, std::string& id) {
    std::string op_id = new_id();
    // act's completion never comes from inside act: the operation exists by then.
    Status st = machines_.act(caller, name, action, std::move(args),
                              [this, op_id, alive = alive_](const Status& st, const Machine* m) {
                                  if (*alive) {
                                      finish(op_id, st, m);
                                  }
                              });
    if (!st) {
        return st;
    }
    const Machine* m = nullptr;
    machines_.get(caller, name, &m);
    start(op_id, name, m ? m->spec.owner : caller.uid, action_name(action));
    id = op_id;
    return {};
}

void Operations::start(const std::string& id, const std::string& machine, uint32_t owner,
                       const std::string& action) {
    HANGAR_ASSERT_REACTOR();
    Operation op;
    op.machine = machine;
    begin(id, std::move(op), owner, action);
}

void Operations::start_image(const std::string& id, const std::string& image, uint32_t owner,
                             const std::string& action) {
    HANGAR_ASSERT_REACTOR();
    Operation op;
    op.image = image;
    begin(id, std::move(op), owner, action);
}

void Operations::begin(const std::string& id, Operation op, uint32_t owner,
                       const std::string& action) {
    op.id = id;
    op.owner = owner;
    op.action = action;
    op.created_at = now_rfc3339();
    OperationCreated created{id, action, op.image};
    std::string machine = op.machine;
    Operation& stored = ops_[id] = std::move(op);
    store(stored);
    events_.publish(std::move(created), machine, owner);
    // The 202 that names it is an acknowledgement: the operation is stored first.
    if (!db_.flush()) {
        spdlog::error("operation {}: the store could not record it", id);
    }
    notify(stored, Change::created);
}

void Operations::store(const Operation& op) {
    store::OperationRow r;
    r.id = op.id;
    r.owner = op.owner;
    r.machine = op.machine;
    r.image = op.image;
    r.action = op.action;
    r.status = op.status;
    r.created_at = op.created_at;
    r.done_at = op.done_at;
    r.done = op.status == "running" ? 0 : done_count_;
    r.state = op.state;
    if (!op.error.ok()) {
        r.error_code = errc_name(op.error.code());
        r.error_message = op.error.message();
    }
    r.detail = op.detail;
    r.phase = op.phase;
    r.bytes = op.bytes;
    r.total = op.total;
    db_.put_operation(r);
}

void Operations::progress(const std::string& id, const std::string& phase, uint64_t bytes,
                          uint64_t total) {
    HANGAR_ASSERT_REACTOR();
    auto it = ops_.find(id);
    if (it == ops_.end() || it->second.status != "running") {
        return;
    }
    Operation& op = it->second;
    op.phase = phase;
    op.bytes = bytes;
    op.total = total;
    events_.publish(OperationProgress{id, op.action, op.image, phase, bytes, total}, op.machine,
                    op.owner);
    notify(op, Change::progress);
}

void Operations::start_step(const std::string& id, const std::string& machine, uint32_t owner,
                            const std::string& action) {
    start(id, machine, owner, action);
}

void Operations::finish_step(const std::string& id, const Status& st) {
    HANGAR_ASSERT_REACTOR();
    auto it = ops_.find(id);
    const Machine* m = nullptr;
    if (it != ops_.end()) {
        machines_.get({0, true}, it->second.machine, &m);
    }
    finish(id, st, m);
}

void Operations::finish_image(const std::string& id, const Status& st) {
    HANGAR_ASSERT_REACTOR();
    finish(id, st, nullptr);
}

void Operations::finish(const std::string& id, const Status& st, const Machine* m) {
    HANGAR_ASSERT_REACTOR();
    auto it = ops_.find(id);
    if (it == ops_.end() || it->second.status != "running") {
        return;
    }
    Operation& op = it->second;
    cancellers_.erase(id);
    op.status = st ? "succeeded" : op.cancelling ? "cancelled" : "failed";
    op.error = st;
    op.done_at = now_rfc3339();
    if (op.image.empty()) {
        op.state = m ? std::string(to_string(m->state)) : "deleted";
    }
    ++done_count_;
    store(op);
    events_.publish(OperationDone{op.id, op.status, op.error, to_json(op)}, op.machine, op.owner);
    notify(op, Change::done);
    finished_.push_back(id);
    while (finished_.size() > kKeptOperations) {
        db_.delete_operation(finished_.front());
        ops_.erase(finished_.front());
        finished_.pop_front();
    }
}

void Operations::adoption_settled() {
    resolve_interrupted();
}

void Operations::resolve_interrupted() {
    resolve_posted_ = false;
    for (auto it = interrupted_.begin(); it != interrupted_.end();) {
        std::string id = *it;
        Operation& op = ops_[id];
        auto mit = machines_.all().find(op.machine);
        const Machine* m = mit == machines_.all().end() ? nullptr : mit->second.get();
        bool start = op.action == "start";
        if (m && start && m->state == MachineState::starting) {
            ++it;  // adoption is finishing the start: its end is this operation's
            continue;
        }
        it = interrupted_.erase(it);
        if (m && start && m->state == MachineState::running) {
            op.detail =
                "completed by adoption after hangard was restarted (" + m->state_reason + ")";
            spdlog::info("operation {}: {} of {} completed by adoption", id, op.action, op.machine);
            finish(id, {}, m);
        } else {
            std::string now = m ? "is " + std::string(to_string(m->state)) : "was deleted";
            spdlog::info("operation {}: {} of {} interrupted (the machine {})", id, op.action,
                         op.machine, now);
            finish(id,
                   {Errc::interrupted, "hangard was restarted while this " + op.action +
                                           " was in flight; the machine " + now},
                   m);
        }
    }
    if (interrupted_.empty()) {
        if (subscription_) {
            events_.unsubscribe(subscription_);
            subscription_ = 0;
        }
        return;
    }
    if (!subscription_) {
        // Decided after the event's turn, on the machine as it is then (not from within the
        // bus's delivery, which other subscribers have not seen yet).
        subscription_ = events_.subscribe([this](const Event& e) {
            if (resolve_posted_ || (e.type != "machine.state" && e.type != "machine.deleted")) {
                return;
            }
            resolve_posted_ = true;
            boost::asio::post(io_, [this, alive = alive_] {
                if (*alive) {
                    resolve_interrupted();
                }
            });
        });
    }
}

Status Operations::get(const Caller& caller, const std::string& id, const Operation** out) const {
    auto it = ops_.find(id);
    if (it == ops_.end() || (!caller.admin && it->second.owner != caller.uid)) {
        return {Errc::not_found, "no operation " + json::quote(id)};
    }
    *out = &it->second;
    return {};
}

void Operations::set_canceller(const std::string& id, std::function<void(uint32_t)> cancel) {
    HANGAR_ASSERT_REACTOR();
    if (ops_.count(id)) {
        cancellers_[id] = std::move(cancel);
    }
}

Status Operations::cancel(const Caller& caller, const std::string& id, const Operation** out) {
    HANGAR_ASSERT_REACTOR();
    const Operation* op = nullptr;
    if (Status st = get(caller, id, &op); !st) {
        return st;
    }
    *out = op;
    if (op->status != "running") {
        return {Errc::invalid_state, "operation " + id + " has ended (" + op->status + ")"};
    }
    auto c = cancellers_.find(id);
    if (c == cancellers_.end()) {
        return {Errc::conflict, "a " + op->action + " operation cannot be cancelled"};
    }
    auto fn = std::move(c->second);
    cancellers_.erase(c);
    ops_[id].cancelling = true;
    fn(caller.uid);
    return {};
}

std::string Operations::to_json(const Operation& op) const {
    json::Writer w;
    w.begin_object().field("id", op.id);
    if (op.image.empty()) {
        w.field("machine", op.machine);
    }
    w.field("action", op.action).field("status", op.status).field("created_at", op.created_at);
    if (!op.image.empty()) {
        w.field("image", op.image);
    }
    if (!op.image.empty() || !op.phase.empty()) {
        w.key("progress")
            .begin_object()
            .field("phase", op.phase)
            .field("bytes", op.bytes)
            .field("total", op.total)
            .end_object();
    }
    if (!op.done_at.empty()) {
        w.field("done_at", op.done_at);
        if (op.image.empty()) {
            w.field("state", op.state);
        }
    }
    if (!op.detail.empty()) {
        w.field("detail", op.detail);
    }
    if (!op.error.ok()) {
        w.field("error", op.error);
    }
    w.end_object();
    return w.take();
}

size_t Operations::running() const {
    return ops_.size() - finished_.size();
}

uint64_t Operations::watch(Watcher w) {
    uint64_t id = next_watcher_++;
    watchers_.emplace(id, std::move(w));
    return id;
}

void Operations::unwatch(uint64_t id) {
    watchers_.erase(id);
}

void Operations::notify(const Operation& op, Change c) {
    for (auto it = watchers_.begin(); it != watchers_.end();) {
        auto cur = it++;  // a watcher may unwatch itself
        cur->second(op, c);
    }
}

std::vector<const Operation*> Operations::list() const {
    std::vector<const Operation*> out;
    out.reserve(ops_.size());
    for (const auto& [id, op] : ops_) {
        if (op.status == "running") {
            out.push_back(&op);
        }
    }
    for (const auto& id : finished_) {
        out.push_back(&ops_.at(id));
    }
    return out;
}

const Operation* Operations::find(const std::string& id) const {
    auto it = ops_.find(id);
    return it == ops_.end() ? nullptr : &it->second;
}

}  // namespace hangar::core
