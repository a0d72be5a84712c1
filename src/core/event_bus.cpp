#include "core/event_bus.hpp"

#include "store/db.hpp"
#include "util/json.hpp"
#include "util/time.hpp"

namespace hangar::core {

EventBus::EventBus(store::Db& db, size_t ring_size)
    : db_(db), ring_size_(ring_size), seq_(db.last_seq()) {
    for (auto& row : db_.load_events_after(seq_ > ring_size ? seq_ - ring_size : 0, ring_size)) {
        std::string frame;
        frame.reserve(row.data.size() + 128);
        json::Writer w;
        w.begin_object()
            .field("seq", row.seq)
            .field("time", row.time)
            .field("type", row.type)
            .field("machine", row.machine)
            .key("data")
            .raw(row.data)
            .end_object();
        ring_.push_back(
            {row.seq, row.type, row.machine, std::make_shared<const std::string>(w.take())});
    }
}

uint64_t EventBus::publish(std::string_view type, std::string_view machine,
                           std::string_view data_json) {
    uint64_t seq = ++seq_;
    ++published_;
    std::string time = now_rfc3339_us();
    json::Writer w;
    w.begin_object()
        .field("seq", seq)
        .field("time", time)
        .field("type", type)
        .field("machine", machine)
        .key("data")
        .raw(data_json)
        .end_object();
    Event ev{seq, std::string(type), std::string(machine),
             std::make_shared<const std::string>(w.take())};
    db_.append_event({seq, time, ev.type, ev.machine, std::string(data_json)}, ring_size_);
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
