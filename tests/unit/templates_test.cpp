#include "core/templates.hpp"

#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

#include "core/machines.hpp"
#include "store/db.hpp"

using namespace hangar;
using core::Template;

namespace {
struct World {
    std::filesystem::path dir;
    std::unique_ptr<store::Db> db;
    std::unique_ptr<core::EventBus> events;
    std::unique_ptr<core::Templates> templates;
    World() {
        char t[] = "/tmp/hangar-templates-XXXXXX";
        dir = mkdtemp(t);
        open();
    }
    void open() {
        templates.reset();
        events.reset();
        db = std::make_unique<store::Db>();  // a reopen closes the last one first
        EXPECT_TRUE(db->open((dir / "hangar.db").string(), nullptr).ok());
        events = std::make_unique<core::EventBus>(*db, 64);
        templates = std::make_unique<core::Templates>(*db, *events);
        templates->load();
    }
    ~World() {
        templates.reset();
        events.reset();
        db.reset();
        std::filesystem::remove_all(dir);
    }
};

const core::Caller kRoot{0, true, true};
const core::Caller kUser{1000, false, true};

Status decode(const std::string& body) {
    Template t;
    return core::decode_template(body, t);
}
}  // namespace

TEST(Templates, DecodeIsStrict) {
    Template t;
    ASSERT_TRUE(
        core::decode_template(
            R"({"name":"small","cpus":2,"memory_mib":2048,"disk_gib":10,"description":"d"})", t)
            .ok());
    EXPECT_EQ(t.cpus, 2u);
    EXPECT_EQ(t.memory_mib, 2048u);
    EXPECT_EQ(t.disk_gib, 10u);
    EXPECT_EQ(t.description, "d");
    EXPECT_TRUE(decode(R"({"name":"only-name"})").ok());
    EXPECT_EQ(decode(R"({"cpus":2})").message(), "field 'name' is required");
    EXPECT_EQ(decode(R"({"name":"../x"})").code(), Errc::invalid_name);
    EXPECT_EQ(decode(R"({"name":"a b"})").code(), Errc::invalid_name);
    EXPECT_EQ(decode("{\"name\":\"" + std::string(300, 'a') + "\"}").code(), Errc::invalid_name);
    EXPECT_EQ(decode(R"({"name":"s","cpus":65})").message(), "cpus must be from 1 to 64");
    EXPECT_EQ(decode(R"({"name":"s","memory_mib":16})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"s","disk_gib":70000})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"s","cpus":-1})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"s","cpus":1.5})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"s","cpus":"2"})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"s","created_at":"x"})").message(), "unknown field 'created_at'");
    EXPECT_EQ(decode(R"({"name":"s","cpus":1,"cpus":2})").code(), Errc::invalid_json);
    EXPECT_EQ(decode(R"({"name":"s")").code(), Errc::invalid_json);
    EXPECT_EQ(decode("[]").code(), Errc::bad_request);
}

TEST(Templates, AdminsCreateEveryoneReadsStoreKeeps) {
    World w;
    const Template* t = nullptr;
    Template small;
    small.name = "small";
    small.cpus = 2;
    small.memory_mib = 512;
    EXPECT_EQ(w.templates->create(kUser, small, &t).code(), Errc::forbidden);
    ASSERT_TRUE(w.templates->create(kRoot, small, &t).ok());
    EXPECT_FALSE(t->created_at.empty());
    EXPECT_EQ(w.templates->create(kRoot, small, &t).code(), Errc::conflict);
    ASSERT_EQ(w.events->ring().size(), 1u);
    EXPECT_EQ(w.events->ring().back().type, "template.created");
    ASSERT_TRUE(w.db->flush());
    w.open();
    ASSERT_EQ(w.templates->list().size(), 1u);
    ASSERT_TRUE(w.templates->get("small", &t).ok());
    EXPECT_EQ(t->cpus, 2u);
    EXPECT_EQ(t->memory_mib, 512u);
    EXPECT_EQ(w.templates->get("big", &t).code(), Errc::not_found);
    EXPECT_EQ(w.templates->remove(kUser, "small").code(), Errc::forbidden);
    ASSERT_TRUE(w.templates->remove(kRoot, "small").ok());
    EXPECT_EQ(w.templates->remove(kRoot, "small").code(), Errc::not_found);
    ASSERT_TRUE(w.db->flush());
    w.open();
    EXPECT_TRUE(w.templates->list().empty());
}

TEST(Templates, TheRequestsOwnFieldsWin) {
    World w;
    const Template* t = nullptr;
    Template cpus_only;
    cpus_only.name = "four";
    cpus_only.cpus = 4;
    ASSERT_TRUE(w.templates->create(kRoot, cpus_only, &t).ok());
    MachineSpec spec;
    spec.template_name = "four";
    spec.given = {"name", "template"};
    ASSERT_TRUE(w.templates->apply(spec).ok());
    EXPECT_EQ(spec.cpus, 4u);
    EXPECT_EQ(spec.memory_mib, 128u);  // the template does not set it
    MachineSpec own;
    own.template_name = "four";
    own.cpus = 1;
    own.given = {"name", "template", "cpus"};
    ASSERT_TRUE(w.templates->apply(own).ok());
    EXPECT_EQ(own.cpus, 1u);
    MachineSpec missing;
    missing.template_name = "nope";
    Status st = w.templates->apply(missing);
    EXPECT_EQ(st.code(), Errc::bad_request);
    EXPECT_EQ(st.message(), "no template named \"nope\" (GET /v1/templates lists them)");
}
