#pragma once
// Every change becomes one event {seq, time, type, machine, data}. seq strictly increases and
// survives restarts (it is stored with the event, in the same transaction as the change). The
// newest events are kept in memory (and the store) for replay; each is serialized once and the
// same buffer is handed to every subscriber.
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "core/event_types.hpp"

namespace hangar::store {
class Db;
}

namespace hangar::core {

struct Event {
    uint64_t seq = 0;
    std::string type;  // the wire name, to_string(*kind)
    std::string machine;
    uint32_t owner = 0;                        // uid owning `machine`
    std::shared_ptr<const std::string> frame;  // the serialized event
    // Unset only for a stored event of a type this build does not know (a newer hangard's).
    std::optional<EventType> kind;
    // What the frame says, typed. Set on the events handed to subscribers as they are
    // published; the replay ring (and what is read back from the store) keeps frames only.
    std::shared_ptr<const EventPayload> payload;

    // The payload if it is a T, else nullptr.
    template <typename T>
    const T* data() const {
        return payload ? std::get_if<T>(payload.get()) : nullptr;
    }
};

class EventBus {
  public:
    using Subscriber = std::function<void(const Event&)>;

    EventBus(store::Db& db, size_t ring_size);
    // Records and delivers an event of the payload's type; its frame's data is
    // event_data(payload).
    uint64_t publish(EventPayload payload, std::string_view machine, uint32_t owner);
    // Serializes one event frame: {"seq","time","type","machine","data"}.
    static std::string frame(uint64_t seq, std::string_view time, std::string_view type,
                             std::string_view machine, std::string_view data_json);
    uint64_t revision() const { return seq_; }
    uint64_t published() const { return published_; }
    const std::deque<Event>& ring() const { return ring_; }

    uint64_t subscribe(Subscriber s);
    void unsubscribe(uint64_t id);
    size_t subscribers() const { return subscribers_.size(); }

  private:
    store::Db& db_;
    size_t ring_size_;
    uint64_t seq_;
    uint64_t published_ = 0;
    std::deque<Event> ring_;
    uint64_t next_sub_ = 1;
    std::map<uint64_t, Subscriber> subscribers_;
};

}  // namespace hangar::core
