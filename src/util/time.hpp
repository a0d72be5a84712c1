#pragma once
#include <string>

namespace hangar {

// Current UTC time as RFC 3339: "2026-11-23T10:00:00Z".
std::string now_rfc3339();
// Same with microseconds: "2026-11-23T10:00:00.123456Z".
std::string now_rfc3339_us();

}  // namespace hangar
