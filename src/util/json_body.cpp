#include "util/json_body.hpp"

#include <set>

namespace hangar::json {

using simdjson::dom::element;

// Which of two equal keys counts differs between parsers (simdjson finds the first, others
// take the last), so a body with one is refused rather than read either way.
Status check_duplicate_keys(element e) {
    if (simdjson::dom::object obj; e.get(obj) == simdjson::SUCCESS) {
        std::set<std::string_view> keys;
        for (auto [key, v] : obj) {
            if (!keys.insert(key).second) {
                return {Errc::invalid_json, "duplicate key '" + std::string(key.substr(0, 64)) +
                                                "' in the request body"};
            }
            if (Status st = check_duplicate_keys(v); !st) {
                return st;
            }
        }
    } else if (simdjson::dom::array arr; e.get(arr) == simdjson::SUCCESS) {
        for (element v : arr) {
            if (Status st = check_duplicate_keys(v); !st) {
                return st;
            }
        }
    }
    return {};
}

Status parse_object(simdjson::dom::parser& parser, std::string_view body, element& out,
                    bool allow_empty) {
    if (body.empty() && allow_empty) {
        out = element();
        return {};
    }
    if (parser.parse(body.data(), body.size()).get(out) != simdjson::SUCCESS) {
        return {Errc::invalid_json, "the request body is not valid JSON"};
    }
    if (!out.is_object()) {
        return {Errc::bad_request, "the request body must be a JSON object"};
    }
    return check_duplicate_keys(out);
}

Status get_string(element v, std::string_view field, std::string& out) {
    std::string_view s;
    if (v.get(s) != simdjson::SUCCESS) {
        return {Errc::bad_request, "field '" + std::string(field) + "' must be a string"};
    }
    if (s.find('\0') != std::string_view::npos) {
        return {Errc::bad_request, "field '" + std::string(field) + "' contains a NUL byte"};
    }
    out = s;
    return {};
}

Status get_u32(element v, std::string_view field, uint32_t& out) {
    uint64_t u = 0;
    if (v.get(u) != simdjson::SUCCESS || u > UINT32_MAX) {
        return {Errc::bad_request,
                "field '" + std::string(field) + "' must be a non-negative integer"};
    }
    out = static_cast<uint32_t>(u);
    return {};
}

Status get_bool(element v, std::string_view field, bool& out) {
    if (v.get(out) != simdjson::SUCCESS) {
        return {Errc::bad_request, "field '" + std::string(field) + "' must be a boolean"};
    }
    return {};
}

Status get_strings(element v, std::string_view field, std::vector<std::string>& out) {
    simdjson::dom::array arr;
    if (v.get(arr) != simdjson::SUCCESS) {
        return {Errc::bad_request,
                "field '" + std::string(field) + "' must be an array of strings"};
    }
    out.clear();
    for (element e : arr) {
        if (Status st = get_string(e, field, out.emplace_back()); !st) {
            return {Errc::bad_request, "field '" + std::string(field) +
                                           "' must be an array of strings without NUL bytes"};
        }
    }
    return {};
}

Status unknown_field(std::string_view where, std::string_view key) {
    return {Errc::bad_request, "unknown field '" + std::string(where) + std::string(key) + "'"};
}

}  // namespace hangar::json
