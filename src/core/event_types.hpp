#pragma once
// hangar's events, typed: one EventType per kind, one payload struct per type. A payload
// serializes to the `data` of the event's frame (the API's JSON, /work/shared/API.md "Events");
// faces that act on events (D-Bus) read the payload and never parse a frame back.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "hangar/error.hpp"
#include "hangar/machine.hpp"

namespace hangar::core {

enum class EventType {
    machine_created,
    machine_updated,
    machine_deleted,
    machine_state,
    operation_created,
    operation_progress,
    operation_done,
    image_created,
    image_deleted,
    template_created,
    template_deleted,
    disk_created,
    disk_updated,
    disk_deleted,
    snapshot_created,
    snapshot_restored,
    snapshot_deleted,
    console_attached,
    console_detached,
    events_gap,
};

// "machine.created", ...
std::string_view to_string(EventType t);
std::optional<EventType> parse_event_type(std::string_view name);
// Every type, in declaration order.
const std::vector<EventType>& event_types();

// data: the machine's JSON.
struct MachineCreated {
    std::string machine;
};
// data: {"changed": [...], "reason": "...", "machine": {...}}: what changed (spec fields, or
// "unresponsive"), why ("api:update" for a PATCH, the QMP failure for responsiveness), and the
// machine after the change. The one shape of machine.updated.
struct MachineUpdated {
    std::vector<std::string> changed;
    std::string reason;
    std::string machine;  // the machine's JSON
};
// data: {"from", "to", "reason"}.
struct MachineStateChanged {
    MachineState from = MachineState::stopped, to = MachineState::stopped;
    std::string reason;
};
// data: {}.
struct MachineDeleted {};
// data: {"id", "action"} and "image" for an image operation.
struct OperationCreated {
    std::string id, action, image;
};
// data: {"id", "action", "image", "phase", "bytes", "total"}.
struct OperationProgress {
    std::string id, action, image, phase;
    uint64_t bytes = 0, total = 0;
};
// data: the operation's JSON.
struct OperationDone {
    std::string id;
    std::string status;  // succeeded, failed, cancelled
    Status error;
    std::string operation;  // the operation's JSON
};
// data: the image's JSON.
struct ImageCreated {
    std::string name;
    std::string image;  // the image's JSON
};
// data: {"image"}.
struct ImageDeleted {
    std::string name;
};
// data: the template's JSON.
struct TemplateCreated {
    std::string name;
    std::string tmpl;  // the template's JSON
};
// data: {"template"}.
struct TemplateDeleted {
    std::string name;
};
// data: the disk's JSON (created, and updated: grown, attached, detached).
struct DiskCreated {
    std::string name;
    std::string disk;
};
struct DiskUpdated {
    std::string name;
    std::string disk;
    std::string reason;  // "api:resize", "api:attach", "api:detach", "qmp:DEVICE_DELETED"
};
// data: {"disk"}.
struct DiskDeleted {
    std::string name;
};
// data: the snapshot's JSON (taken; restored: the machine's disks are back at it).
struct SnapshotCreated {
    std::string name;
    std::string snapshot;
};
struct SnapshotRestored {
    std::string name;
    std::string snapshot;
};
// data: {"snapshot"}.
struct SnapshotDeleted {
    std::string name;
};
// data: {"viewer", "uid", "readonly"}: a console viewer of the event's machine came.
struct ConsoleAttached {
    std::string viewer;
    uint32_t uid = 0;
    bool readonly = false;
};
// data: {"viewer", "uid", "readonly", "reason"}: it went, and why.
struct ConsoleDetached {
    std::string viewer;
    uint32_t uid = 0;
    bool readonly = false;
    std::string reason;
};
// data: {"since", "oldest", "revision", "message"} (a WebSocket's own frame, seq 0).
struct EventsGap {
    uint64_t since = 0, oldest = 0, revision = 0;
    std::string message;
};

// Alternatives in EventType's order.
using EventPayload =
    std::variant<MachineCreated, MachineUpdated, MachineDeleted, MachineStateChanged,
                 OperationCreated, OperationProgress, OperationDone, ImageCreated, ImageDeleted,
                 TemplateCreated, TemplateDeleted, DiskCreated, DiskUpdated, DiskDeleted,
                 SnapshotCreated, SnapshotRestored, SnapshotDeleted, ConsoleAttached,
                 ConsoleDetached, EventsGap>;

inline EventType type_of(const EventPayload& p) {
    return static_cast<EventType>(p.index());
}
// The frame's `data` object.
std::string event_data(const EventPayload& p);

}  // namespace hangar::core
