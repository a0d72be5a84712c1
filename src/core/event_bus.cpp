#include "core/event_bus.hpp"

#include "store/db.hpp"
#include "util/json.hpp"
#include "util/time.hpp"

namespace hangar::core {

EventBus::EventBus(store::Db& db, size_t ring_size)
    : db_(db), ring_size_(ring_size), seq_(db.last_seq()) {
    for (auto& row : db_.load_events_after(seq_ > ring_size ? seq_ - ring_size : 0, ring_size)) {
        ring_.push_back({row.seq, row.type, row.machine, row.owner,
                         std::make_shared<const std::string>(
                             frame(row.seq, row.time, row.type, row.machine, row.data))});
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

uint64_t EventBus::publish(std::string_view type, std::string_view machine, uint32_t owner,
                           std::string_view data_json) {
    uint64_t seq = ++seq_;
    ++published_;
    std::string time = now_rfc3339_us();
    Event ev{seq, std::string(type), std::string(machine), owner,
             std::make_shared<const std::string>(frame(seq, time, type, machine, data_json))};
    db_.append_event({seq, time, ev.type, ev.machine, std::string(data_json), owner}, ring_size_);
    ring_.push_back(ev);
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
    uint64_t id = next_sub_++;
    subscribers_.emplace(id, std::move(s));
    return id;
}

void EventBus::unsubscribe(uint64_t id) {
    subscribers_.erase(id);
}

}  // namespace hangar::core
