#pragma once
// HTTP(S) transfers for images, on the reactor (Beast; its own translation unit). HTTPS is
// verified against the system's trust store plus an optional CA file (private mirrors), TLS
// 1.2 or newer. Host names are resolved by `getent ahosts` in a child process, so no resolver
// thread and no blocking getaddrinfo. Up to 5 redirects are followed. A download that breaks
// off is resumed with a Range request (or restarted when the server ignores it), up to
// `attempts` tries; nothing waits longer than `idle_timeout` for a byte.
#include <chrono>
#include <memory>
#include <string>

#include "core/images.hpp"

namespace hangar::images {

struct FetchOptions {
    std::string ca_file;
    std::chrono::seconds connect_timeout{15};
    std::chrono::seconds idle_timeout{30};
    int attempts = 3;
    std::chrono::milliseconds retry_delay{500};  // doubled after each failed attempt
};

std::unique_ptr<core::Transfer> make_transfer(boost::asio::io_context& io, FetchOptions opts);

}  // namespace hangar::images
