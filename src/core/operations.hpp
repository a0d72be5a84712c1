#pragma once
// Long-running actions answered with 202 (`?wait=false`): each gets an id, an
// `operation.created` event, and an `operation.done` event with its result. The newest 1,000
// finished operations stay readable through GET /v1/operations/{id}.
#include <cstdint>
#include <deque>
#include <string>
#include <unordered_map>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"

namespace hangar::core {

struct Operation {
    std::string id, machine, action;
    std::string image;  // the image an image operation is about ("" for machine operations)
    uint32_t owner = 0;
    std::string status = "running";  // running, succeeded, failed
    std::string created_at, done_at;
    Status error;
    std::string state;  // the machine's state when it finished
    // Progress of an image operation: its phase ("catalog", "download", "verify", "unpack")
    // and bytes done of total (0 when unknown).
    std::string phase;
    uint64_t bytes = 0, total = 0;
};

class Operations {
  public:
    explicit Operations(EventBus& events) : events_(events) {}

    std::string new_id() const;
    void start(const std::string& id, const std::string& machine, uint32_t owner,
               const std::string& action);
    void finish(const std::string& id, const Status& st, const Machine* m);
    // An operation about an image: operation.created now, operation.progress as it advances
    // (the caller throttles), operation.done from finish_image.
    void start_image(const std::string& id, const std::string& image, uint32_t owner,
                     const std::string& action);
    void progress(const std::string& id, const std::string& phase, uint64_t bytes, uint64_t total);
    void finish_image(const std::string& id, const Status& st);
    Status get(const Caller& caller, const std::string& id, const Operation** out) const;
    std::string to_json(const Operation& op) const;
    size_t running() const;

  private:
    void begin(const std::string& id, Operation op, uint32_t owner, const std::string& action);

    EventBus& events_;
    std::unordered_map<std::string, Operation> ops_;
    std::deque<std::string> finished_;
};

inline constexpr size_t kKeptOperations = 1000;

}  // namespace hangar::core
