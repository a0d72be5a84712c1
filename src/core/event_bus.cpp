#include "core/event_bus.hpp"

#include "store/db.hpp"
#include "util/json.hpp"
#include "util/reactor.hpp"
#include "util/time.hpp"

namespace hangar::core {

EventBus::EventBus(store::Db& db, size_t ring_size)
    : db_(db), ring_size_(ring_size), seq_(db.last_seq()) {
    for (auto& row : db_.load_events_after(seq_ > ring_size ? seq_ - ring_size : 0, ring_size)) {
        ring_.push_back({row.seq, row.type, row.machine, row.owner,
                         std::make_shared<const std::string>(
                             frame(row.seq, row.time, row.type, row.machine, row.data)),
                         parse_event_type(row.type), nullptr});
    }
}

std::string EventBus::frame(uint64_t seq, std::string_view time, std::string_view type,
                            std::string_view machine, std::string_view data_json) {
    json::Writer w;
    w.begin_object()
        .field("seq", seq)
        .field("time", time)
        .field("type", type)
        .field("machine", machine)
        .key("data")
        .raw(data_json)
        .end_object();
    return w.take();
}

uint64_t EventBus::publish(EventPayload payload, std::string_view machine, uint32_t owner) {
    HANGAR_ASSERT_REACTOR();
    uint64_t seq = ++seq_;
    ++published_;
    std::string time = now_rfc3339_us();
    EventType kind = type_of(payload);
    std::string_view type = to_string(kind);
    std::string data_json = event_data(payload);
    Event ev{seq,
             std::string(type),
             std::string(machine),
             owner,
             std::make_shared<const std::string>(frame(seq, time, type, machine, data_json)),
             kind,
             nullptr};
    db_.append_event({seq, time, ev.type, ev.machine, std::move(data_json), owner}, ring_size_);
    ring_.push_back(ev);  // frames only: the ring is for replay
    ev.payload = std::make_shared<const EventPayload>(std::move(payload));
    if (ring_.size() > ring_size_) {
        ring_.pop_front();
    }
    for (auto it = subscribers_.begin(); it != subscribers_.end();) {
        auto cur = it++;  // a subscriber may unsubscribe itself
        cur->second(ev);
    }
    return seq;
}

uint64_t EventBus::subscribe(Subscriber s) {
    HANGAR_ASSERT_REACTOR();
    uint64_t id = next_sub_++;
    subscribers_.emplace(id, std::move(s));
    return id;
}

void EventBus::unsubscribe(uint64_t id) {
    HANGAR_ASSERT_REACTOR();
    subscribers_.erase(id);
}

}  // namespace hangar::core
