#include "api/event_filter.hpp"

#include <cstdlib>

#include "hangar/names.hpp"
#include "util/json.hpp"

namespace hangar::api {

bool EventFilter::matches(const core::Event& e) const {
    // Every user may list every image and template, so image.* and template.* events are
    // everyone's; the rest are their owner's (and the admins').
    return (types.empty() || types.count(e.type)) && (machine.empty() || machine == e.machine) &&
           (!owner || *owner == e.owner || e.type.rfind("image.", 0) == 0 ||
            e.type.rfind("template.", 0) == 0);
}

Status parse_event_query(const std::map<std::string, std::string>& query,
                         const core::Caller& caller, EventFilter& filter,
                         std::optional<uint64_t>& since) {
    for (const auto& [k, v] : query) {
        if (k == "since") {
            char* end = nullptr;
            uint64_t s = std::strtoull(v.c_str(), &end, 10);
            if (v.empty() || *end != '\0' || v[0] == '-') {
                return {Errc::bad_request, "since must be an event sequence number"};
            }
            since = s;
        } else if (k == "types") {
            size_t i = 0;
            while (i <= v.size()) {
                size_t j = v.find(',', i);
                if (j == std::string::npos) {
                    j = v.size();
                }
                std::string t = v.substr(i, j - i);
                if (!core::parse_event_type(t)) {
                    return {Errc::bad_request, "unknown event type " + json::quote(t)};
                }
                filter.types.insert(t);
                i = j + 1;
            }
        } else if (k == "machine") {
            if (Status st = check_name("machine", v); !st) {
                return st;
            }
            filter.machine = v;
        } else {
            return {Errc::bad_request,
                    "unknown query parameter " + json::quote(k) + " (since, types, machine)"};
        }
    }
    if (!caller.admin) {
        filter.owner = caller.uid;
    }
    return {};
}

}  // namespace hangar::api
