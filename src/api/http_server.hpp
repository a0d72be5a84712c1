#pragma once
// HTTP/1.1 listeners (Boost.Beast, on the daemon's one reactor): the unix socket, where the
// caller is the peer's uid from SO_PEERCRED, and TCP — HTTPS, or plain HTTP only when asked
// for — where the caller is whoever the bearer token stands for. Every session has a header
// limit, a body limit, a read timeout and an idle timeout; the number of sessions is bounded.
// Beast stays inside the .cpp files.
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <boost/asio/io_context.hpp>

#include "api/router.hpp"
#include "hangar/error.hpp"

namespace boost::asio::ssl {
class context;
}

namespace hangar::api {

struct ServerLimits {
    size_t header_limit = 16 * 1024;
    size_t body_limit = 1024 * 1024;
    std::chrono::seconds read_timeout{30};   // to receive a whole request once it has begun
    std::chrono::seconds idle_timeout{120};  // between requests on a kept-alive connection
    size_t max_connections = 512;
};

class EventStreams;

// Who an HTTPS caller is: the caller a bearer token stands for, or the one a TLS client
// certificate (by its SHA-256 fingerprint) stands for; nothing when unknown or revoked.
struct Authenticate {
    std::function<std::optional<core::Caller>(std::string_view token)> token;
    std::function<std::optional<core::Caller>(std::string_view fingerprint)> certificate;
};

class HttpServer {
  public:
    // `events` serves GET /v1/events upgrades; without it they are refused.
    HttpServer(boost::asio::io_context& io, const Router& router, ServerLimits limits,
               EventStreams* events, Authenticate authenticate);
    ~HttpServer();
    // Binds `path` (mode 0660), replacing a stale socket file.
    Status listen_unix(const std::string& path);
    // Listens on "ADDR:PORT" ("[::1]:8443" for IPv6); HTTPS with `tls`, plain HTTP without.
    // PORT 0 picks a free port; bound_port() tells which.
    Status listen_tcp(const std::string& addr_port, boost::asio::ssl::context* tls);
    // Serve on listening sockets passed by socket activation instead of binding.
    Status adopt_unix(int fd);
    Status adopt_tcp(int fd, boost::asio::ssl::context* tls);
    uint16_t bound_port() const;
    std::string bound_address() const;  // of the TCP listener, "[v6]" in brackets
    // Unix-socket peers in this group (primary or supplementary) are admins, like uid 0.
    void set_admin_gid(std::optional<unsigned> gid);
    void close();
    size_t connections() const;

    struct Impl;  // defined in the .cpp; public so its sessions can name it

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace hangar::api
