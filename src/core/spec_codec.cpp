#include "core/spec_codec.hpp"

#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"

namespace hangar::core {

namespace {
using simdjson::dom::element;

const std::vector<SpecField> kTop = {
    {"name", "name", SpecFieldKind::string},
    {"type", "type", SpecFieldKind::string},
    {"cpus", "cpus", SpecFieldKind::u32},
    {"memory_mib", "memory_mib", SpecFieldKind::u32},
    {"boot", "boot", SpecFieldKind::object},
    {"image", "image", SpecFieldKind::string},
    {"disk_gib", "disk_gib", SpecFieldKind::u32},
    {"firmware", "firmware", SpecFieldKind::string},
    {"cdrom", "cdrom", SpecFieldKind::string},
    {"autostart", "autostart", SpecFieldKind::boolean},
    {"description", "description", SpecFieldKind::string},
    {"template", "template", SpecFieldKind::string},
};
const std::vector<SpecField> kBoot = {
    {"kernel", "boot.kernel", SpecFieldKind::string},
    {"initrd", "boot.initrd", SpecFieldKind::string},
    {"cmdline", "boot.cmdline", SpecFieldKind::string},
    {"disk", "boot.disk", SpecFieldKind::string},
    {"command", "boot.command", SpecFieldKind::strings},
};
const std::vector<SpecField> kNone;

// The string member at `path` (const or not, as `s` is).
template <typename Spec>
auto string_member(Spec& s, std::string_view path) -> decltype(&s.name) {
    return path == "name"           ? &s.name
           : path == "type"         ? &s.type
           : path == "image"        ? &s.image
           : path == "description"  ? &s.description
           : path == "template"     ? &s.template_name
           : path == "firmware"     ? &s.firmware
           : path == "cdrom"        ? &s.cdrom
           : path == "boot.kernel"  ? &s.boot.kernel
           : path == "boot.initrd"  ? &s.boot.initrd
           : path == "boot.cmdline" ? &s.boot.cmdline
           : path == "boot.disk"    ? &s.boot.disk
                                    : nullptr;
}

Status wrong_kind(const SpecField& f) {
    return {Errc::bad_request,
            "field '" + std::string(f.path) + "' must be " + std::string(describe(f.kind))};
}

// One JSON value of the field `f` (not an object).
Status read_value(element v, const SpecField& f, SpecValue& out) {
    switch (f.kind) {
        case SpecFieldKind::string:
            return json::get_string(v, f.path, out.emplace<std::string>());
        case SpecFieldKind::u32:
            return json::get_u32(v, f.path, out.emplace<uint32_t>());
        case SpecFieldKind::boolean:
            return json::get_bool(v, f.path, out.emplace<bool>());
        case SpecFieldKind::strings:
            return json::get_strings(v, f.path, out.emplace<std::vector<std::string>>());
        case SpecFieldKind::object:
            break;
    }
    return wrong_kind(f);
}

// With `only`, the top-level keys not in it are skipped (the store's copy); without it, an
// unknown key is an error.
Status decode_object(simdjson::dom::object obj, std::string_view section, MachineSpec& spec,
                     std::set<std::string>* seen, const std::set<std::string>* only) {
    for (auto [key, v] : obj) {
        if (seen) {
            seen->insert(std::string(key));
        }
        const SpecField* f = find_spec_field(section, key);
        if (only && (!f || (section.empty() && !only->count(std::string(key))))) {
            continue;
        }
        if (!f) {
            return unknown_spec_field(section, key);
        }
        if (f->kind == SpecFieldKind::object) {
            simdjson::dom::object inner;
            if (v.get(inner) != simdjson::SUCCESS) {
                return wrong_kind(*f);
            }
            if (Status st = decode_object(inner, f->key, spec, nullptr, only); !st) {
                return st;
            }
            continue;
        }
        SpecValue value;
        if (Status st = read_value(v, *f, value); !st) {
            return st;
        }
        if (Status st = set_spec_field(spec, *f, std::move(value)); !st) {
            return st;
        }
    }
    return {};
}

Status decode(std::string_view body, MachineSpec& spec, std::set<std::string>* seen,
              const std::set<std::string>* only) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = json::parse_object(parser, body, doc, false); !st) {
        return st;
    }
    return decode_object(doc.get_object().value_unsafe(), "", spec, seen, only);
}
}  // namespace

const std::vector<SpecField>& spec_fields(std::string_view section) {
    return section.empty() ? kTop : section == "boot" ? kBoot : kNone;
}

const SpecField* find_spec_field(std::string_view section, std::string_view key) {
    for (const auto& f : spec_fields(section)) {
        if (f.key == key) {
            return &f;
        }
    }
    return nullptr;
}

std::string_view describe(SpecFieldKind kind) {
    switch (kind) {
        case SpecFieldKind::string:
            return "a string";
        case SpecFieldKind::u32:
            return "a non-negative integer";
        case SpecFieldKind::boolean:
            return "a boolean";
        case SpecFieldKind::strings:
            return "an array of strings";
        case SpecFieldKind::object:
            return "an object";
    }
    return "?";
}

Status unknown_spec_field(std::string_view section, std::string_view key) {
    return json::unknown_field(section.empty() ? "" : std::string(section) + ".", key);
}

Status set_spec_field(MachineSpec& spec, const SpecField& f, SpecValue v) {
    spec.given.emplace(f.path);
    auto nul = [](std::string_view s) { return s.find('\0') != std::string_view::npos; };
    if (auto* s = std::get_if<std::string>(&v); s && f.kind == SpecFieldKind::string) {
        if (nul(*s)) {
            return {Errc::bad_request, "field '" + std::string(f.path) + "' contains a NUL byte"};
        }
        if (std::string* to = string_member(spec, f.path)) {
            *to = std::move(*s);
            return {};
        }
    } else if (auto* u = std::get_if<uint32_t>(&v); u && f.kind == SpecFieldKind::u32) {
        if (f.path == "cpus") {
            spec.cpus = *u;
            return {};
        }
        if (f.path == "memory_mib") {
            spec.memory_mib = *u;
            return {};
        }
        if (f.path == "disk_gib") {
            spec.disk_gib = *u;
            return {};
        }
    } else if (auto* b = std::get_if<bool>(&v); b && f.kind == SpecFieldKind::boolean) {
        if (f.path == "autostart") {
            spec.autostart = *b;
            return {};
        }
    } else if (auto* l = std::get_if<std::vector<std::string>>(&v);
               l && f.kind == SpecFieldKind::strings) {
        for (const auto& arg : *l) {
            if (nul(arg)) {
                return {Errc::bad_request, "field '" + std::string(f.path) +
                                               "' must be an array of strings without NUL bytes"};
            }
        }
        if (f.path == "boot.command") {
            spec.boot.command = std::move(*l);
            return {};
        }
    }
    return wrong_kind(f);
}

Status decode_spec_fields(std::string_view body, MachineSpec& spec, std::set<std::string>& seen) {
    return decode(body, spec, &seen, nullptr);
}

Status decode_machine_spec(std::string_view body, MachineSpec& spec) {
    std::set<std::string> seen;
    if (Status st = decode_spec_fields(body, spec, seen); !st) {
        return st;
    }
    if (!seen.count("name")) {
        return {Errc::bad_request, "field 'name' is required"};
    }
    return check_name("machine", spec.name);
}

void encode_spec_fields(json::Writer& w, const MachineSpec& s, const std::set<std::string>& which) {
    for (const auto& f : kTop) {
        if (!which.count(std::string(f.key))) {
            continue;
        }
        w.key(f.key);
        if (f.path == "cpus") {
            w.value(s.cpus);
        } else if (f.path == "memory_mib") {
            w.value(s.memory_mib);
        } else if (f.path == "disk_gib") {
            w.value(s.disk_gib);
        } else if (f.path == "autostart") {
            w.value(s.autostart);
        } else if (f.path == "boot") {
            w.begin_object();
            for (const auto& b : kBoot) {
                if (b.kind == SpecFieldKind::strings) {
                    if (!s.boot.command.empty()) {
                        w.key(b.key).begin_array();
                        for (const auto& arg : s.boot.command) {
                            w.value(arg);
                        }
                        w.end_array();
                    }
                } else if (const std::string* v = string_member(s, b.path); v && !v->empty()) {
                    w.field(b.key, *v);
                }
            }
            w.end_object();
        } else if (const std::string* v = string_member(s, f.path)) {
            w.value(*v);
        }
    }
}

std::string encode_spec(const MachineSpec& spec, const std::set<std::string>& which) {
    json::Writer w;
    w.begin_object();
    encode_spec_fields(w, spec, which);
    w.end_object();
    return w.take();
}

void encode_boot(json::Writer& w, const BootSpec& boot) {
    w.begin_object();
    if (!boot.kernel.empty()) {
        w.field("kernel", boot.kernel).field("initrd", boot.initrd);
        w.field("cmdline", boot.cmdline);
    }
    if (!boot.disk.empty()) {
        w.field("disk", boot.disk);
    }
    if (!boot.command.empty()) {
        w.key("command").begin_array();
        for (const auto& arg : boot.command) {
            w.value(arg);
        }
        w.end_array();
    }
    w.end_object();
}

const std::set<std::string> kStoredSpecFields = {
    "cpus",      "memory_mib",  "boot",     "image",    "disk_gib",
    "autostart", "description", "template", "firmware", "cdrom"};

std::string encode_stored_spec(const MachineSpec& spec) {
    return encode_spec(spec, kStoredSpecFields);
}

Status decode_stored_spec(std::string_view text, MachineSpec& spec) {
    return decode(text, spec, nullptr, &kStoredSpecFields);
}

}  // namespace hangar::core
