#include "util/time.hpp"

#include <chrono>
#include <cstdio>
#include <ctime>

namespace hangar {

namespace {
std::string format(bool micro) {
    auto now = std::chrono::system_clock::now();
    auto us = std::chrono::duration_cast<std::chrono::microseconds>(now.time_since_epoch()).count();
    time_t secs = static_cast<time_t>(us / 1000000);
    struct tm tm {};
    gmtime_r(&secs, &tm);
    char buf[40];
    size_t n = strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
    if (micro) {
        snprintf(buf + n, sizeof buf - n, ".%06lldZ", static_cast<long long>(us % 1000000));
    } else {
        snprintf(buf + n, sizeof buf - n, "Z");
    }
    return buf;
}
}  // namespace

std::string now_rfc3339() {
    return format(false);
}
std::string now_rfc3339_us() {
    return format(true);
}

}  // namespace hangar
