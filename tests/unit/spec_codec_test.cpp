// The spec codec: JSON ⇄ MachineSpec with every refusal, the store's copy, and the D-Bus
// a{sv} reader that walks the same field table.
#include <gtest/gtest.h>

#include "core/spec_codec.hpp"
#include "dbus/spec_dict.hpp"
#include "util/json.hpp"

using namespace hangar;

namespace {
const std::set<std::string> kAll = {"name",  "type",      "cpus",        "memory_mib", "boot",
                                    "image", "autostart", "description", "template"};

Status decode(const std::string& body) {
    MachineSpec s;
    return core::decode_machine_spec(body, s);
}

void expect_refused(const std::string& body, Errc code, const std::string& message) {
    Status st = decode(body);
    EXPECT_EQ(st.code(), code) << body;
    EXPECT_EQ(st.message(), message) << body;
}
}  // namespace

TEST(SpecCodec, JsonRoundTrip) {
    std::string body =
        R"({"name":"web1","type":"container","cpus":3,"memory_mib":512,)"
        R"("boot":{"kernel":"/k","initrd":"/i","cmdline":"console=ttyS0 \"q\"","disk":"/d",)"
        R"("command":["sh","-c","echo hi"]},"image":"debian-12","autostart":true,)"
        R"("description":"é\n","template":"small"})";
    MachineSpec s;
    ASSERT_TRUE(core::decode_machine_spec(body, s).ok());
    EXPECT_EQ(s.template_name, "small");
    // What the body named, for a template to leave alone.
    EXPECT_TRUE(s.given.count("cpus") && s.given.count("boot.kernel") && s.given.count("template"));
    MachineSpec bare;
    ASSERT_TRUE(core::decode_machine_spec(R"({"name":"x","template":"small"})", bare).ok());
    EXPECT_EQ(bare.given, (std::set<std::string>{"name", "template"}));
    EXPECT_EQ(s.name, "web1");
    EXPECT_EQ(s.type, "container");
    EXPECT_EQ(s.cpus, 3u);
    EXPECT_EQ(s.memory_mib, 512u);
    EXPECT_EQ(s.boot.kernel, "/k");
    EXPECT_EQ(s.boot.initrd, "/i");
    EXPECT_EQ(s.boot.cmdline, "console=ttyS0 \"q\"");
    EXPECT_EQ(s.boot.disk, "/d");
    EXPECT_EQ(s.boot.command, (std::vector<std::string>{"sh", "-c", "echo hi"}));
    EXPECT_EQ(s.image, "debian-12");
    EXPECT_TRUE(s.autostart);
    EXPECT_EQ(s.description, "é\n");
    // Encoded in the table's order, it is the same body again.
    EXPECT_EQ(core::encode_spec(s, kAll), body);
    MachineSpec again;
    ASSERT_TRUE(core::decode_machine_spec(core::encode_spec(s, kAll), again).ok());
    EXPECT_EQ(core::encode_spec(again, kAll), body);
}

TEST(SpecCodec, EncodesOnlyTheGivenFieldsAndBootsNonEmptyMembers) {
    MachineSpec s;
    s.name = "a";
    s.boot.cmdline = "quiet";
    EXPECT_EQ(core::encode_spec(s, {"name", "boot"}), R"({"name":"a","boot":{"cmdline":"quiet"}})");
    EXPECT_EQ(core::encode_spec(s, {"name"}), R"({"name":"a"})");
    // The machine's JSON shows initrd and cmdline with a kernel (as it always has).
    s.boot.kernel = "/k";
    json::Writer w;
    core::encode_boot(w, s.boot);
    EXPECT_EQ(w.str(), R"({"kernel":"/k","initrd":"","cmdline":"quiet"})");
}

TEST(SpecCodec, PatchFieldsAreReadOverTheSpecAndListed) {
    MachineSpec s;
    s.name = "a";
    s.cpus = 2;
    s.boot.kernel = "/k";
    std::set<std::string> seen;
    ASSERT_TRUE(
        core::decode_spec_fields(R"({"memory_mib":256,"boot":{"cmdline":"x"}})", s, seen).ok());
    EXPECT_EQ(seen, (std::set<std::string>{"memory_mib", "boot"}));
    EXPECT_EQ(s.cpus, 2u);  // untouched
    EXPECT_EQ(s.memory_mib, 256u);
    EXPECT_EQ(s.boot.kernel, "/k");  // boot's members are read one by one
    EXPECT_EQ(s.boot.cmdline, "x");
}

TEST(SpecCodec, EveryRefusalWithItsMessage) {
    expect_refused("{", Errc::invalid_json, "the request body is not valid JSON");
    expect_refused("", Errc::invalid_json, "the request body is not valid JSON");
    expect_refused("[]", Errc::bad_request, "the request body must be a JSON object");
    expect_refused("{}", Errc::bad_request, "field 'name' is required");
    expect_refused(R"({"name":"a","name":"b"})", Errc::invalid_json,
                   "duplicate key 'name' in the request body");
    expect_refused(R"({"name":"a","boot":{"kernel":"/a","kernel":"/b"}})", Errc::invalid_json,
                   "duplicate key 'kernel' in the request body");
    expect_refused(R"({"name":"a","bogus":1})", Errc::bad_request, "unknown field 'bogus'");
    expect_refused(R"({"name":"a","uuid":"x"})", Errc::bad_request, "unknown field 'uuid'");
    expect_refused(R"({"name":"a","boot":{"bogus":""}})", Errc::bad_request,
                   "unknown field 'boot.bogus'");
    expect_refused(R"({"name":5})", Errc::bad_request, "field 'name' must be a string");
    expect_refused(R"({"name":"a\u0000b"})", Errc::bad_request, "field 'name' contains a NUL byte");
    expect_refused(R"({"name":"../x"})", Errc::invalid_name,
                   "machine name \"../x\" is invalid: use 1-63 characters of a-z, 0-9 and '-', "
                   "starting with a letter or digit");
    expect_refused(R"({"name":"a","type":1})", Errc::bad_request, "field 'type' must be a string");
    for (const char* bad : {R"("2")", "-1", "1.5", "4294967296", "true", "null"}) {
        expect_refused(std::string(R"({"name":"a","cpus":)") + bad + "}", Errc::bad_request,
                       "field 'cpus' must be a non-negative integer");
    }
    expect_refused(R"({"name":"a","memory_mib":[]})", Errc::bad_request,
                   "field 'memory_mib' must be a non-negative integer");
    expect_refused(R"({"name":"a","autostart":1})", Errc::bad_request,
                   "field 'autostart' must be a boolean");
    expect_refused(R"({"name":"a","description":{}})", Errc::bad_request,
                   "field 'description' must be a string");
    expect_refused(R"({"name":"a","image":false})", Errc::bad_request,
                   "field 'image' must be a string");
    expect_refused(R"({"name":"a","boot":"/k"})", Errc::bad_request,
                   "field 'boot' must be an object");
    expect_refused(R"({"name":"a","boot":{"kernel":1}})", Errc::bad_request,
                   "field 'boot.kernel' must be a string");
    expect_refused(R"({"name":"a","boot":{"initrd":"a\u0000"}})", Errc::bad_request,
                   "field 'boot.initrd' contains a NUL byte");
    expect_refused(R"({"name":"a","boot":{"command":"sh"}})", Errc::bad_request,
                   "field 'boot.command' must be an array of strings");
    expect_refused(R"({"name":"a","boot":{"command":["sh",1]}})", Errc::bad_request,
                   "field 'boot.command' must be an array of strings without NUL bytes");
    expect_refused(R"({"name":"a","boot":{"command":["s\u0000h"]}})", Errc::bad_request,
                   "field 'boot.command' must be an array of strings without NUL bytes");
}

TEST(SpecCodec, StoredCopyRoundTripsAndIgnoresUnknownKeys) {
    MachineSpec s;
    s.name = "web1";  // a column of its own, not in the copy
    s.cpus = 2;
    s.memory_mib = 256;
    s.boot.kernel = "/k";
    s.boot.cmdline = "console=ttyS0 \"quoted\"";
    s.boot.command = {"a", "b"};
    s.image = "img";
    s.autostart = true;
    s.description = "d";
    s.template_name = "small";
    std::string text = core::encode_stored_spec(s);
    EXPECT_EQ(text.find("web1"), std::string::npos);
    MachineSpec back;
    back.name = "web1";
    ASSERT_TRUE(core::decode_stored_spec(text, back).ok());
    EXPECT_EQ(core::encode_spec(back, kAll), core::encode_spec(s, kAll));
    // What earlier versions stored (every boot member, empty ones too) reads the same.
    MachineSpec old;
    ASSERT_TRUE(core::decode_stored_spec(
                    R"({"cpus":2,"memory_mib":256,"boot":{"kernel":"/k","initrd":"",)"
                    R"("cmdline":"c","disk":"","command":[]},"image":"","autostart":false,)"
                    R"("description":""})",
                    old)
                    .ok());
    EXPECT_EQ(old.cpus, 2u);
    EXPECT_EQ(old.boot.cmdline, "c");
    // A newer hangard's key is skipped, and the copy cannot rename or retype the machine.
    MachineSpec newer;
    newer.name = "x";
    ASSERT_TRUE(core::decode_stored_spec(R"({"cpus":4,"tpm":"v2","name":"y","type":"container",)"
                                         R"("boot":{"shim":1,"disk":"/d"}})",
                                         newer)
                    .ok());
    EXPECT_EQ(newer.cpus, 4u);
    EXPECT_EQ(newer.name, "x");
    EXPECT_EQ(newer.type, "vm");
    EXPECT_EQ(newer.boot.disk, "/d");
    // A wrong type is still an error.
    EXPECT_EQ(core::decode_stored_spec(R"({"cpus":"4"})", newer).message(),
              "field 'cpus' must be a non-negative integer");
}

TEST(SpecCodec, FieldTable) {
    ASSERT_NE(core::find_spec_field("", "boot"), nullptr);
    EXPECT_EQ(core::find_spec_field("", "boot")->kind, core::SpecFieldKind::object);
    EXPECT_EQ(core::find_spec_field("boot", "kernel")->path, "boot.kernel");
    EXPECT_EQ(core::find_spec_field("", "kernel"), nullptr);
    EXPECT_EQ(core::find_spec_field("nope", "kernel"), nullptr);
    MachineSpec s;
    // A value of another kind than the field's is refused whatever the transport.
    EXPECT_FALSE(core::set_spec_field(s, *core::find_spec_field("", "cpus"), std::string("2")));
    EXPECT_TRUE(core::set_spec_field(s, *core::find_spec_field("", "cpus"), uint32_t{2}));
    EXPECT_EQ(s.cpus, 2u);
}

// ---- D-Bus: CreateMachine's a{sv} ------------------------------------------------------

TEST(SpecDict, SameKeysAsTheJsonWithBootNested) {
    dbus::SpecDict boot{{"kernel", sdbus::Variant(std::string("/k"))},
                        {"cmdline", sdbus::Variant(std::string("console=ttyS0"))},
                        {"command", sdbus::Variant(std::vector<std::string>{"sh"})}};
    dbus::SpecDict d{{"cpus", sdbus::Variant(uint32_t{2})},
                     {"memory_mib", sdbus::Variant(uint32_t{256})},
                     {"autostart", sdbus::Variant(true)},
                     {"description", sdbus::Variant(std::string("d"))},
                     {"template", sdbus::Variant(std::string("small"))},
                     {"name", sdbus::Variant(std::string("web1"))},
                     {"boot", sdbus::Variant(boot)}};
    MachineSpec s;
    s.name = "web1";
    ASSERT_TRUE(dbus::spec_from_dict(d, s).ok());
    MachineSpec j;
    ASSERT_TRUE(core::decode_machine_spec(
                    R"({"name":"web1","cpus":2,"memory_mib":256,"autostart":true,)"
                    R"("description":"d","template":"small",)"
                    R"("boot":{"kernel":"/k","cmdline":"console=ttyS0","command":["sh"]}})",
                    j)
                    .ok());
    EXPECT_EQ(core::encode_spec(s, kAll), core::encode_spec(j, kAll));
}

TEST(SpecDict, OldFlatBootKeysStillRead) {
    MachineSpec s;
    s.name = "ct2";
    ASSERT_TRUE(dbus::spec_from_dict({{"type", sdbus::Variant(std::string("container"))},
                                      {"image", sdbus::Variant(std::string("busybox"))},
                                      {"command", sdbus::Variant(std::vector<std::string>{"sh"})},
                                      {"kernel", sdbus::Variant(std::string("/k"))}},
                                     s)
                    .ok());
    EXPECT_EQ(s.boot.command, std::vector<std::string>{"sh"});
    EXPECT_EQ(s.boot.kernel, "/k");
}

TEST(SpecDict, Refusals) {
    auto refused = [](const dbus::SpecDict& d) {
        MachineSpec s;
        s.name = "a";
        Status st = dbus::spec_from_dict(d, s);
        EXPECT_EQ(st.code(), Errc::bad_request);
        return st.message();
    };
    EXPECT_EQ(refused({{"cpus", sdbus::Variant(std::string("two"))}}),
              "spec key \"cpus\" has the wrong type (s): it must be u, a non-negative integer");
    EXPECT_EQ(refused({{"cpus", sdbus::Variant(int32_t{2})}}),
              "spec key \"cpus\" has the wrong type (i): it must be u, a non-negative integer");
    EXPECT_EQ(refused({{"autostart", sdbus::Variant(uint32_t{1})}}),
              "spec key \"autostart\" has the wrong type (u): it must be b, a boolean");
    EXPECT_EQ(refused({{"boot", sdbus::Variant(std::string("/k"))}}),
              "spec key \"boot\" has the wrong type (s): it must be a{sv}, an object");
    EXPECT_EQ(
        refused({{"boot",
                  sdbus::Variant(dbus::SpecDict{{"command", sdbus::Variant(std::string("sh"))}})}}),
        "spec key \"boot.command\" has the wrong type (s): it must be as, an array of "
        "strings");
    EXPECT_EQ(refused({{"bogus", sdbus::Variant(uint32_t{1})}}), "unknown field 'bogus'");
    EXPECT_EQ(
        refused({{"boot", sdbus::Variant(dbus::SpecDict{{"bogus", sdbus::Variant(uint32_t{1})}})}}),
        "unknown field 'boot.bogus'");
    EXPECT_EQ(
        refused(
            {{"boot", sdbus::Variant(dbus::SpecDict{{"boot", sdbus::Variant(dbus::SpecDict{})}})}}),
        "unknown field 'boot.boot'");
    EXPECT_EQ(refused({{"name", sdbus::Variant(std::string("b"))}}),
              "spec key \"name\" differs from the name argument");
    EXPECT_EQ(refused({{"kernel", sdbus::Variant(std::string("/k"))},
                       {"boot", sdbus::Variant(dbus::SpecDict{})}}),
              "spec key \"kernel\" is the old spelling of \"boot.kernel\": give it inside "
              "\"boot\", not beside it");
}
