#include "core/operations.hpp"

#include "util/json.hpp"
#include "util/sha256.hpp"
#include "util/time.hpp"

namespace hangar::core {

std::string Operations::new_id() const {
    return "op-" + random_hex(8);
}

void Operations::start(const std::string& id, const std::string& machine, uint32_t owner,
                       const std::string& action) {
    Operation op;
    op.machine = machine;
    begin(id, std::move(op), owner, action);
}

void Operations::start_image(const std::string& id, const std::string& image, uint32_t owner,
                             const std::string& action) {
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
    json::Writer w;
    w.begin_object().field("id", id).field("action", action);
    if (!op.image.empty()) {
        w.field("image", op.image);
    }
    w.end_object();
    std::string machine = op.machine;
    ops_[id] = std::move(op);
    events_.publish("operation.created", machine, owner, w.str());
}

void Operations::progress(const std::string& id, const std::string& phase, uint64_t bytes,
                          uint64_t total) {
    auto it = ops_.find(id);
    if (it == ops_.end() || it->second.status != "running") {
        return;
    }
    Operation& op = it->second;
    op.phase = phase;
    op.bytes = bytes;
    op.total = total;
    json::Writer w;
    w.begin_object()
        .field("id", id)
        .field("action", op.action)
        .field("image", op.image)
        .field("phase", phase)
        .field("bytes", bytes)
        .field("total", total)
        .end_object();
    events_.publish("operation.progress", op.machine, op.owner, w.str());
}

void Operations::finish_image(const std::string& id, const Status& st) {
    finish(id, st, nullptr);
}

void Operations::finish(const std::string& id, const Status& st, const Machine* m) {
    auto it = ops_.find(id);
    if (it == ops_.end()) {
        return;
    }
    Operation& op = it->second;
    op.status = st ? "succeeded" : "failed";
    op.error = st;
    op.done_at = now_rfc3339();
    if (op.image.empty()) {
        op.state = m ? std::string(to_string(m->state)) : "deleted";
    }
    events_.publish("operation.done", op.machine, op.owner, to_json(op));
    finished_.push_back(id);
    while (finished_.size() > kKeptOperations) {
        ops_.erase(finished_.front());
        finished_.pop_front();
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

std::string Operations::to_json(const Operation& op) const {
    json::Writer w;
    w.begin_object().field("id", op.id);
    if (op.image.empty()) {
        w.field("machine", op.machine);
    }
    w.field("action", op.action).field("status", op.status).field("created_at", op.created_at);
    if (!op.image.empty()) {
        w.field("image", op.image);
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
    if (!op.error.ok()) {
        w.key("error")
            .begin_object()
            .field("code", errc_name(op.error.code()))
            .field("message", op.error.message())
            .end_object();
    }
    w.end_object();
    return w.take();
}

size_t Operations::running() const {
    return ops_.size() - finished_.size();
}

}  // namespace hangar::core
