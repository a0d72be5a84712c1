// Typed events: names round trip, and each payload serializes to the API's data shape.
#include <gtest/gtest.h>

#include "core/event_types.hpp"

using namespace hangar;
using namespace hangar::core;

TEST(EventTypes, NamesRoundTrip) {
    std::set<std::string> names;
    for (EventType t : event_types()) {
        std::string_view name = to_string(t);
        EXPECT_EQ(parse_event_type(name), t) << name;
        names.insert(std::string(name));
    }
    EXPECT_EQ(
        names,
        (std::set<std::string>{
            "machine.created",   "machine.updated",    "machine.deleted",  "machine.state",
            "operation.created", "operation.progress", "operation.done",   "image.created",
            "image.deleted",     "template.created",   "template.deleted", "disk.created",
            "disk.updated",      "disk.deleted",       "snapshot.created", "snapshot.restored",
            "snapshot.deleted",  "console.attached",   "console.detached", "events.gap"}));
    EXPECT_EQ(parse_event_type("machine.bogus"), std::nullopt);
    EXPECT_EQ(parse_event_type(""), std::nullopt);
    EXPECT_EQ(parse_event_type("Machine.State"), std::nullopt);
}

TEST(EventTypes, PayloadKnowsItsType) {
    EXPECT_EQ(type_of(MachineCreated{}), EventType::machine_created);
    EXPECT_EQ(type_of(MachineUpdated{}), EventType::machine_updated);
    EXPECT_EQ(type_of(MachineDeleted{}), EventType::machine_deleted);
    EXPECT_EQ(type_of(MachineStateChanged{}), EventType::machine_state);
    EXPECT_EQ(type_of(OperationCreated{}), EventType::operation_created);
    EXPECT_EQ(type_of(OperationProgress{}), EventType::operation_progress);
    EXPECT_EQ(type_of(OperationDone{}), EventType::operation_done);
    EXPECT_EQ(type_of(ImageCreated{}), EventType::image_created);
    EXPECT_EQ(type_of(ImageDeleted{}), EventType::image_deleted);
    EXPECT_EQ(type_of(TemplateCreated{}), EventType::template_created);
    EXPECT_EQ(type_of(TemplateDeleted{}), EventType::template_deleted);
    EXPECT_EQ(type_of(DiskCreated{}), EventType::disk_created);
    EXPECT_EQ(type_of(DiskUpdated{}), EventType::disk_updated);
    EXPECT_EQ(type_of(DiskDeleted{}), EventType::disk_deleted);
    EXPECT_EQ(type_of(SnapshotCreated{}), EventType::snapshot_created);
    EXPECT_EQ(type_of(SnapshotRestored{}), EventType::snapshot_restored);
    EXPECT_EQ(type_of(SnapshotDeleted{}), EventType::snapshot_deleted);
    EXPECT_EQ(type_of(EventsGap{}), EventType::events_gap);
}

TEST(EventTypes, DataShapes) {
    EXPECT_EQ(event_data(
                  MachineStateChanged{MachineState::starting, MachineState::running, "qmp:RESUME"}),
              R"({"from":"starting","to":"running","reason":"qmp:RESUME"})");
    EXPECT_EQ(event_data(MachineCreated{R"({"name":"a"})"}), R"({"name":"a"})");
    EXPECT_EQ(event_data(MachineDeleted{}), "{}");
    // machine.updated: one shape for a PATCH and for responsiveness.
    EXPECT_EQ(event_data(MachineUpdated{{"cpus", "memory_mib"}, "api:update", R"({"name":"a"})"}),
              R"({"changed":["cpus","memory_mib"],"reason":"api:update","machine":{"name":"a"}})");
    EXPECT_EQ(event_data(MachineUpdated{{"unresponsive"}, "QMP timed out", R"({"name":"a"})"}),
              R"({"changed":["unresponsive"],"reason":"QMP timed out","machine":{"name":"a"}})");
    EXPECT_EQ(event_data(OperationCreated{"op-1", "start", ""}),
              R"({"id":"op-1","action":"start"})");
    EXPECT_EQ(event_data(OperationCreated{"op-2", "image.pull", "deb"}),
              R"({"id":"op-2","action":"image.pull","image":"deb"})");
    EXPECT_EQ(event_data(OperationProgress{"op-2", "image.pull", "deb", "download", 5, 10}),
              R"({"id":"op-2","action":"image.pull","image":"deb","phase":"download",)"
              R"("bytes":5,"total":10})");
    EXPECT_EQ(event_data(OperationDone{"op-1", "succeeded", {}, R"({"id":"op-1"})"}),
              R"({"id":"op-1"})");
    EXPECT_EQ(event_data(ImageCreated{"deb", R"({"name":"deb"})"}), R"({"name":"deb"})");
    EXPECT_EQ(event_data(TemplateCreated{"s", R"({"name":"s"})"}), R"({"name":"s"})");
    EXPECT_EQ(event_data(TemplateDeleted{"s"}), R"({"template":"s"})");
    EXPECT_EQ(event_data(ImageDeleted{"deb"}), R"({"image":"deb"})");
    EXPECT_EQ(event_data(DiskCreated{"d", R"({"name":"d"})"}), R"({"name":"d"})");
    EXPECT_EQ(event_data(DiskUpdated{"d", R"({"name":"d"})", "api:attach"}),
              R"({"reason":"api:attach","disk":{"name":"d"}})");
    EXPECT_EQ(event_data(DiskDeleted{"d"}), R"({"disk":"d"})");
    EXPECT_EQ(event_data(EventsGap{1, 5, 9, "m"}),
              R"({"since":1,"oldest":5,"revision":9,"message":"m"})");
}
