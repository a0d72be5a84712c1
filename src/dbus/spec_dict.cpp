#include "dbus/spec_dict.hpp"

#include "core/spec_codec.hpp"
#include "util/json.hpp"

namespace hangar::dbus {

namespace {
using core::SpecField;
using core::SpecFieldKind;

std::string_view signature(SpecFieldKind kind) {
    switch (kind) {
        case SpecFieldKind::string:
            return "s";
        case SpecFieldKind::u32:
            return "u";
        case SpecFieldKind::boolean:
            return "b";
        case SpecFieldKind::strings:
            return "as";
        case SpecFieldKind::object:
            return "a{sv}";
    }
    return "?";
}

Status wrong_type(const SpecField& f, const sdbus::Variant& v) {
    return {Errc::bad_request, "spec key " + json::quote(f.path) + " has the wrong type (" +
                                   v.peekValueType() + "): it must be " +
                                   std::string(signature(f.kind)) + ", " +
                                   std::string(core::describe(f.kind))};
}

Status read_dict(const SpecDict& dict, std::string_view section, MachineSpec& spec) {
    for (const auto& [key, v] : dict) {
        const SpecField* f = core::find_spec_field(section, key);
        if (!f && section.empty()) {
            f = core::find_spec_field("boot", key);  // the first interface's flat boot keys
            if (f && dict.count("boot")) {
                return {Errc::bad_request, "spec key " + json::quote(key) +
                                               " is the old spelling of " + json::quote(f->path) +
                                               ": give it inside \"boot\", not beside it"};
            }
        }
        if (!f) {
            return core::unknown_spec_field(section, key);
        }
        if (v.peekValueType() != signature(f->kind)) {
            return wrong_type(*f, v);
        }
        try {
            if (f->kind == SpecFieldKind::object) {
                if (Status st = read_dict(v.get<SpecDict>(), f->key, spec); !st) {
                    return st;
                }
                continue;
            }
            core::SpecValue value;
            switch (f->kind) {
                case SpecFieldKind::string:
                    value = v.get<std::string>();
                    break;
                case SpecFieldKind::u32:
                    value = v.get<uint32_t>();
                    break;
                case SpecFieldKind::boolean:
                    value = v.get<bool>();
                    break;
                case SpecFieldKind::strings:
                    value = v.get<std::vector<std::string>>();
                    break;
                case SpecFieldKind::object:
                    break;
            }
            if (f->path == "name" && std::get<std::string>(value) != spec.name) {
                return {Errc::bad_request, "spec key \"name\" differs from the name argument"};
            }
            if (Status st = core::set_spec_field(spec, *f, std::move(value)); !st) {
                return st;
            }
        } catch (const sdbus::Error&) {
            return wrong_type(*f, v);
        }
    }
    return {};
}
}  // namespace

Status spec_from_dict(const SpecDict& dict, MachineSpec& spec) {
    return read_dict(dict, "", spec);
}

}  // namespace hangar::dbus
