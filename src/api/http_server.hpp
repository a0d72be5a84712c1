#pragma once
// HTTP/1.1 listeners (Boost.Beast, on the daemon's one reactor): the unix socket, where the
// caller is the peer's uid from SO_PEERCRED, and TCP — HTTPS, or plain HTTP only when asked
// for — where the caller is whoever the bearer token stands for. Every session has a header
// limit, a body limit, a read timeout and an idle timeout. Each listener has budgets of its
// own (per uid, in all, a share kept for root and the admin group; on TCP a small one for
// connections not yet authenticated, per address, with a short deadline), so no one caller
// can lock the others out. Beast stays inside the .cpp files.
#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "api/router.hpp"
#include "hangar/error.hpp"

namespace boost::asio::ssl {
class context;
}

namespace hangar::core {
class AdminGroup;
}
namespace hangar::api {

struct ServerLimits {
    size_t header_limit = 16 * 1024;
    size_t body_limit = 1024 * 1024;
    std::chrono::seconds read_timeout{30};   // to receive a whole request once it has begun
    std::chrono::seconds idle_timeout{120};  // between requests on a kept-alive connection
    // The unix socket: connections per uid, and in all, of which `unix_reserved` only for root
    // and the admin group.
    size_t unix_connections = 1024;
    size_t unix_per_uid = 128;
    size_t unix_reserved = 64;
    // TCP once a request has authenticated (the token's or certificate's uid), likewise.
    size_t tcp_connections = 512;
    size_t tcp_per_uid = 128;
    size_t tcp_reserved = 32;
    // TCP before that: the TLS handshake and the first request must arrive within
    // `auth_timeout`; at most `tcp_pending` such connections, `tcp_pending_per_address` from
    // one client address. Connections over these are closed at once.
    size_t tcp_pending = 64;
    size_t tcp_pending_per_address = 16;
    std::chrono::milliseconds auth_timeout{5000};
    // Refused unix-socket connections being answered (503) and closed; past it, closed at once.
    size_t refusing = 1024;
};

// Connections refused (or closed unauthenticated) since start, by listener and reason.
struct RefusedConnections {
    std::string listener;  // "unix" or "tcp"
    std::string reason;    // "uid_limit", "users_share", "total", "address_limit",
                           // "pending_limit", "auth_timeout"
    uint64_t count = 0;
};

class EventStreams;

// Who an HTTPS caller is: the caller a bearer token stands for, or the one a TLS client
// certificate (by its SHA-256 fingerprint) stands for; nothing when unknown or revoked.
struct Authenticate {
    std::function<std::optional<core::Caller>(std::string_view token)> token;
    std::function<std::optional<core::Caller>(std::string_view fingerprint)> certificate;
    // A browser's ?ticket= on the request path `path` (api::Tickets::redeem: used up).
    std::function<std::optional<core::Caller>(std::string_view ticket, std::string_view path)>
        ticket;
};

class HttpServer {
  public:
    // `events` serves GET /v1/events upgrades; without it they are refused.
    HttpServer(boost::asio::io_context& io, const Router& router, ServerLimits limits,
               EventStreams* events, Authenticate authenticate);
    ~HttpServer();
    // Binds `path` with `mode`, group `gid` when given (else the daemon's), replacing a stale
    // socket file. The socket is never reachable with a wider mode than `mode`.
    Status listen_unix(const std::string& path, unsigned mode = 0666,
                       std::optional<unsigned> gid = std::nullopt);
    // Listens on "ADDR:PORT" ("[::1]:8443" for IPv6); HTTPS with `tls`, plain HTTP without.
    // PORT 0 picks a free port; bound_port() tells which.
    Status listen_tcp(const std::string& addr_port, boost::asio::ssl::context* tls);
    // Serve on listening sockets passed by socket activation instead of binding.
    Status adopt_unix(int fd);
    Status adopt_tcp(int fd, boost::asio::ssl::context* tls);
    uint16_t bound_port() const;
    std::string bound_address() const;  // of the TCP listener, "[v6]" in brackets
    // Unix-socket peers in this group (primary or supplementary) are admins, like uid 0.
    void set_admins(const core::AdminGroup* admins);
    // Origins besides the server's own whose pages may open WebSockets (--allowed-origin).
    void set_allowed_origins(std::vector<std::string> origins);
    void close();
    size_t connections() const;
    std::vector<RefusedConnections> refused() const;

    struct Impl;  // defined in the .cpp; public so its sessions can name it

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace hangar::api
