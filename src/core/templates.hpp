#pragma once
// Size templates: named defaults for a machine's size ({"name": "small", "cpus": 2,
// "memory_mib": 2048, "disk_gib": 10}). A create that names one with "template" gets the
// template's fields for those it does not give itself; the machine keeps the template's
// name, and its own copy of the values (deleting or replacing a template changes no
// machine). Every user may read them; admins create and delete them. Kept in the store.
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "core/event_bus.hpp"
#include "hangar/error.hpp"
#include "hangar/machine.hpp"
#include "store/db.hpp"

namespace hangar::core {

struct Caller;

struct Template {
    std::string name;
    // 0: the template does not set it.
    uint32_t cpus = 0;
    uint32_t memory_mib = 0;
    uint32_t disk_gib = 0;  // a VM's root disk made from an image
    std::string description;
    std::string created_at;
};

inline constexpr size_t kMaxTemplates = 1024;

// A template's JSON (a POST body, the store's copy): strict, unknown fields refused, values
// in the ranges a machine accepts. `stored` also reads created_at.
Status decode_template(std::string_view body, Template& out, bool stored = false);

class Templates {
  public:
    Templates(store::Db& db, EventBus& events) : db_(db), events_(events) {}

    // Reads the store; a record that does not decode is logged and skipped.
    void load();

    std::vector<const Template*> list() const;
    Status get(const std::string& name, const Template** out) const;
    // Admins only; a name in use is a conflict.
    Status create(const Caller& caller, Template t, const Template** out);
    Status remove(const Caller& caller, const std::string& name);

    // Fills the fields of `spec` that name a template's values and that `spec.given` does not
    // hold (the request's own fields win). A template that does not exist is bad_request.
    Status apply(MachineSpec& spec) const;

    std::string to_json(const Template& t) const;
    size_t size() const { return templates_.size(); }

  private:
    store::Db& db_;
    EventBus& events_;
    std::map<std::string, Template> templates_;
};

}  // namespace hangar::core
