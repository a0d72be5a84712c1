#pragma once
// Reading JSON bodies strictly: one object, no key twice, typed fields, no NUL bytes in
// strings. The messages name the field ("field 'boot.kernel' must be a string"); every
// reader of request bodies (the spec codec, the HTTP handlers) uses these.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include <simdjson.h>

#include "hangar/error.hpp"

namespace hangar::json {

// A key twice in one object, at any depth, is invalid_json.
Status check_duplicate_keys(simdjson::dom::element e);
// Parses `body` into `out`: it must be one JSON object without duplicate keys. With
// `allow_empty`, an empty body is accepted and leaves `out` a default element.
Status parse_object(simdjson::dom::parser& parser, std::string_view body,
                    simdjson::dom::element& out, bool allow_empty);

Status get_string(simdjson::dom::element v, std::string_view field, std::string& out);
Status get_u32(simdjson::dom::element v, std::string_view field, uint32_t& out);
Status get_bool(simdjson::dom::element v, std::string_view field, bool& out);
Status get_strings(simdjson::dom::element v, std::string_view field, std::vector<std::string>& out);
// "unknown field 'boot.x'" (`where` is "" or a prefix such as "boot.").
Status unknown_field(std::string_view where, std::string_view key);

}  // namespace hangar::json
