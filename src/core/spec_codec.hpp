#pragma once
// The one codec of a machine spec: the API's JSON ⇄ MachineSpec, with its shape checks
// (unknown fields, wrong types, NUL bytes, duplicate keys). Which keys a spec has and what
// each holds is the field table here; the JSON reader below and the D-Bus reader
// (dbus/spec_dict) both walk it, so HTTP, D-Bus, hangarctl and the store speak the same
// keys. Range and consistency checks (cpus, memory, boot files) are Machines::validate's.
// No transport here: no Beast, no sd-bus.
#include <set>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "hangar/error.hpp"
#include "hangar/machine.hpp"

namespace hangar::json {
class Writer;
}

namespace hangar::core {

enum class SpecFieldKind { string, u32, boolean, strings, object };

struct SpecField {
    std::string_view key;   // the key within its object: "cpus", "kernel"
    std::string_view path;  // what messages name: "cpus", "boot.kernel"
    SpecFieldKind kind;
};

// The fields of a spec's top level (section "") or of its "boot" object (section "boot"),
// in the order they are encoded.
const std::vector<SpecField>& spec_fields(std::string_view section);
// nullptr when `key` is not a field of `section`.
const SpecField* find_spec_field(std::string_view section, std::string_view key);

// One field's value, as a transport read it.
using SpecValue = std::variant<std::string, uint32_t, bool, std::vector<std::string>>;
// Stores `v` in the field `f` (not an object) of `spec`. A value of another kind than the
// field's, or a string with a NUL byte, is bad_request.
Status set_spec_field(MachineSpec& spec, const SpecField& f, SpecValue v);
// "a string", "a non-negative integer", "a boolean", "an array of strings", "an object".
std::string_view describe(SpecFieldKind kind);
// bad_request "unknown field 'boot.x'" (section "" or "boot").
Status unknown_spec_field(std::string_view section, std::string_view key);

// JSON: reads the fields present in `body` over `spec` (create and PATCH); `seen` gets the
// top-level keys it held.
Status decode_spec_fields(std::string_view body, MachineSpec& spec, std::set<std::string>& seen);
// A create body: the above, and `name` is required and a valid machine name.
Status decode_machine_spec(std::string_view body, MachineSpec& spec);

// Writes the top-level fields listed in `which` as members of the object `w` is in, in the
// table's order; `boot` as an object of its non-empty members. (A spec's own JSON: a create
// body, the store's copy.)
void encode_spec_fields(json::Writer& w, const MachineSpec& spec,
                        const std::set<std::string>& which);
// A create body of `which` fields: {"name": ..., ...}.
std::string encode_spec(const MachineSpec& spec, const std::set<std::string>& which);
// The "boot" object of a machine's JSON: kernel with initrd and cmdline when it has a kernel,
// disk when it has one, command when it has one.
void encode_boot(json::Writer& w, const BootSpec& boot);

// The store keeps a machine's spec as JSON next to its name, uuid, type, owner and
// created_at columns: the fields below. Reading it ignores keys it does not know (a newer
// hangard's); a field of the wrong type is an error, the fields before it are kept.
extern const std::set<std::string> kStoredSpecFields;
std::string encode_stored_spec(const MachineSpec& spec);
Status decode_stored_spec(std::string_view text, MachineSpec& spec);

}  // namespace hangar::core
