#include "core/templates.hpp"

#include <simdjson.h>
#include <spdlog/spdlog.h>

#include "core/machines.hpp"
#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"
#include "util/reactor.hpp"
#include "util/time.hpp"

namespace hangar::core {

namespace {
constexpr const char* kTable = "templates";

// A size field: absent (0) or within [lo, hi].
Status check_range(std::string_view field, uint32_t v, uint32_t lo, uint32_t hi) {
    if (v != 0 && (v < lo || v > hi)) {
        return {Errc::bad_request, std::string(field) + " must be from " + std::to_string(lo) +
                                       " to " + std::to_string(hi)};
    }
    return {};
}
}  // namespace

Status decode_template(std::string_view body, Template& out, bool stored) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (Status st = json::parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool named = false;
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        Status st;
        if (key == "name") {
            named = true;
            st = json::get_string(v, key, out.name);
        } else if (key == "cpus") {
            st = json::get_u32(v, key, out.cpus);
        } else if (key == "memory_mib") {
            st = json::get_u32(v, key, out.memory_mib);
        } else if (key == "disk_gib") {
            st = json::get_u32(v, key, out.disk_gib);
        } else if (key == "description") {
            st = json::get_string(v, key, out.description);
        } else if (stored && key == "created_at") {
            st = json::get_string(v, key, out.created_at);
        } else {
            st = json::unknown_field("", key);
        }
        if (!st) {
            return st;
        }
    }
    if (!named) {
        return {Errc::bad_request, "field 'name' is required"};
    }
    if (Status st = check_name("template", out.name); !st) {
        return st;
    }
    if (out.description.size() > kMaxDescription) {
        return {Errc::bad_request,
                "description is longer than " + std::to_string(kMaxDescription) + " bytes"};
    }
    if (Status st = check_range("cpus", out.cpus, 1, kMaxCpus); !st) {
        return st;
    }
    if (Status st = check_range("memory_mib", out.memory_mib, kMinMemoryMib, kMaxMemoryMib); !st) {
        return st;
    }
    return check_range("disk_gib", out.disk_gib, 1, kMaxDiskGib);
}

void Templates::load() {
    HANGAR_ASSERT_REACTOR();
    for (const auto& [name, text] : db_.load_documents(kTable)) {
        Template t;
        if (Status st = decode_template(text, t, true); !st || t.name != name) {
            spdlog::warn("templates: skipping the unreadable record of {}: {}", name,
                         st ? "its name differs" : st.message());
            continue;
        }
        templates_[name] = std::move(t);
    }
}

std::vector<const Template*> Templates::list() const {
    std::vector<const Template*> out;
    out.reserve(templates_.size());
    for (const auto& [name, t] : templates_) {
        out.push_back(&t);
    }
    return out;
}

Status Templates::get(const std::string& name, const Template** out) const {
    if (Status st = check_name("template", name); !st) {
        return st;
    }
    auto it = templates_.find(name);
    if (it == templates_.end()) {
        return {Errc::not_found, "no template named " + json::quote(name)};
    }
    *out = &it->second;
    return {};
}

Status Templates::create(const Caller& caller, Template t, const Template** out) {
    HANGAR_ASSERT_REACTOR();
    if (!caller.admin) {
        return {Errc::forbidden, "only an admin may create templates"};
    }
    if (templates_.count(t.name)) {
        return {Errc::conflict, "a template named " + json::quote(t.name) + " already exists"};
    }
    if (templates_.size() >= kMaxTemplates) {
        return {Errc::unavailable, "there are " + std::to_string(kMaxTemplates) +
                                       " templates already; delete one first"};
    }
    t.created_at = now_rfc3339();
    auto& stored = templates_[t.name] = std::move(t);
    std::string js = to_json(stored);
    db_.put_document(kTable, stored.name, js);
    events_.publish(TemplateCreated{stored.name, js}, "", caller.uid);
    *out = &stored;
    return {};
}

Status Templates::remove(const Caller& caller, const std::string& name) {
    HANGAR_ASSERT_REACTOR();
    const Template* t = nullptr;
    if (Status st = get(name, &t); !st) {
        return st;
    }
    if (!caller.admin) {
        return {Errc::forbidden, "only an admin may delete templates"};
    }
    db_.delete_document(kTable, name);
    events_.publish(TemplateDeleted{name}, "", caller.uid);
    templates_.erase(name);
    return {};
}

Status Templates::apply(MachineSpec& spec) const {
    auto it = templates_.find(spec.template_name);
    if (it == templates_.end()) {
        return {Errc::bad_request, "no template named " + json::quote(spec.template_name) +
                                       " (GET /v1/templates lists them)"};
    }
    const Template& t = it->second;
    if (t.cpus && !spec.given.count("cpus")) {
        spec.cpus = t.cpus;
    }
    if (t.memory_mib && !spec.given.count("memory_mib")) {
        spec.memory_mib = t.memory_mib;
    }
    // The root disk's size, for a VM made from a disk image.
    if (t.disk_gib && !spec.given.count("disk_gib") && spec.type == "vm" && !spec.image.empty()) {
        spec.disk_gib = t.disk_gib;
    }
    return {};
}

std::string Templates::to_json(const Template& t) const {
    json::Writer w;
    w.begin_object().field("name", t.name);
    if (t.cpus) {
        w.field("cpus", t.cpus);
    }
    if (t.memory_mib) {
        w.field("memory_mib", t.memory_mib);
    }
    if (t.disk_gib) {
        w.field("disk_gib", t.disk_gib);
    }
    w.field("description", t.description).field("created_at", t.created_at).end_object();
    return w.take();
}

}  // namespace hangar::core
