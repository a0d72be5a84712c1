#pragma once
// Which events a subscriber of GET /v1/events receives. Free of Beast, so the plain HTTP
// route can validate the same query.
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"

namespace hangar::api {

struct EventFilter {
    std::set<std::string> types;    // empty: all
    std::string machine;            // empty: all
    std::optional<uint32_t> owner;  // set for callers who may see only their own machines
    bool matches(const core::Event& e) const;
};

// Builds the filter and `since` from the query (?since=SEQ&types=a,b&machine=NAME).
Status parse_event_query(const std::map<std::string, std::string>& query,
                         const core::Caller& caller, EventFilter& filter,
                         std::optional<uint64_t>& since);

}  // namespace hangar::api
