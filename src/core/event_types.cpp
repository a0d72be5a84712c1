#include "core/event_types.hpp"

#include "util/json.hpp"

namespace hangar::core {

namespace {
constexpr std::string_view kNames[] = {
    "machine.created",   "machine.updated",    "machine.deleted",  "machine.state",
    "operation.created", "operation.progress", "operation.done",   "image.created",
    "image.deleted",     "template.created",   "template.deleted", "disk.created",
    "disk.updated",      "disk.deleted",       "snapshot.created", "snapshot.restored",
    "snapshot.deleted",  "console.attached",   "console.detached", "events.gap",
};
constexpr size_t kCount = sizeof(kNames) / sizeof(kNames[0]);
static_assert(kCount == static_cast<size_t>(EventType::events_gap) + 1);
static_assert(std::variant_size_v<EventPayload> == kCount);
static_assert(
    std::is_same_v<
        std::variant_alternative_t<static_cast<size_t>(EventType::machine_state), EventPayload>,
        MachineStateChanged>);
static_assert(std::is_same_v<
              std::variant_alternative_t<static_cast<size_t>(EventType::events_gap), EventPayload>,
              EventsGap>);

struct Data {
    json::Writer& w;
    void operator()(const MachineCreated& p) { w.raw(p.machine); }
    void operator()(const MachineUpdated& p) {
        w.begin_object().key("changed").begin_array();
        for (const auto& f : p.changed) {
            w.value(f);
        }
        w.end_array().field("reason", p.reason).key("machine").raw(p.machine).end_object();
    }
    void operator()(const MachineDeleted&) { w.begin_object().end_object(); }
    void operator()(const MachineStateChanged& p) {
        w.begin_object()
            .field("from", to_string(p.from))
            .field("to", to_string(p.to))
            .field("reason", p.reason)
            .end_object();
    }
    void operator()(const OperationCreated& p) {
        w.begin_object().field("id", p.id).field("action", p.action);
        if (!p.image.empty()) {
            w.field("image", p.image);
        }
        w.end_object();
    }
    void operator()(const OperationProgress& p) {
        w.begin_object()
            .field("id", p.id)
            .field("action", p.action)
            .field("image", p.image)
            .field("phase", p.phase)
            .field("bytes", p.bytes)
            .field("total", p.total)
            .end_object();
    }
    void operator()(const OperationDone& p) { w.raw(p.operation); }
    void operator()(const ImageCreated& p) { w.raw(p.image); }
    void operator()(const ImageDeleted& p) { w.begin_object().field("image", p.name).end_object(); }
    void operator()(const TemplateCreated& p) { w.raw(p.tmpl); }
    void operator()(const TemplateDeleted& p) {
        w.begin_object().field("template", p.name).end_object();
    }
    void operator()(const DiskCreated& p) { w.raw(p.disk); }
    void operator()(const DiskUpdated& p) {
        w.begin_object().field("reason", p.reason).key("disk").raw(p.disk).end_object();
    }
    void operator()(const DiskDeleted& p) { w.begin_object().field("disk", p.name).end_object(); }
    void operator()(const SnapshotCreated& p) { w.raw(p.snapshot); }
    void operator()(const SnapshotRestored& p) { w.raw(p.snapshot); }
    void operator()(const SnapshotDeleted& p) {
        w.begin_object().field("snapshot", p.name).end_object();
    }
    void operator()(const ConsoleAttached& p) {
        w.begin_object()
            .field("viewer", p.viewer)
            .field("uid", p.uid)
            .field("readonly", p.readonly)
            .end_object();
    }
    void operator()(const ConsoleDetached& p) {
        w.begin_object()
            .field("viewer", p.viewer)
            .field("uid", p.uid)
            .field("readonly", p.readonly)
            .field("reason", p.reason)
            .end_object();
    }
    void operator()(const EventsGap& p) {
        w.begin_object()
            .field("since", p.since)
            .field("oldest", p.oldest)
            .field("revision", p.revision)
            .field("message", p.message)
            .end_object();
    }
};
}  // namespace

std::string_view to_string(EventType t) {
    auto i = static_cast<size_t>(t);
    return i < kCount ? kNames[i] : "unknown";
}

std::optional<EventType> parse_event_type(std::string_view name) {
    for (size_t i = 0; i < kCount; ++i) {
        if (kNames[i] == name) {
            return static_cast<EventType>(i);
        }
    }
    return std::nullopt;
}

const std::vector<EventType>& event_types() {
    static const std::vector<EventType> all = [] {
        std::vector<EventType> v;
        for (size_t i = 0; i < kCount; ++i) {
            v.push_back(static_cast<EventType>(i));
        }
        return v;
    }();
    return all;
}

std::string event_data(const EventPayload& p) {
    json::Writer w;
    std::visit(Data{w}, p);
    return w.take();
}

}  // namespace hangar::core
