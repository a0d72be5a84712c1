#pragma once
// HTTP/1.1 over a unix socket (Boost.Beast, on the daemon's one reactor). The caller is the
// peer's uid from SO_PEERCRED. Every session has a header limit, a body limit, a read timeout
// and an idle timeout; the number of sessions is bounded. Beast stays inside the .cpp file.
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "api/router.hpp"
#include "hangar/error.hpp"

namespace hangar::api {

struct ServerLimits {
    size_t header_limit = 16 * 1024;
    size_t body_limit = 1024 * 1024;
    std::chrono::seconds read_timeout{30};   // to receive a whole request once it has begun
    std::chrono::seconds idle_timeout{120};  // between requests on a kept-alive connection
    size_t max_connections = 512;
};

class EventStreams;

class UnixServer {
  public:
    // `events` serves GET /v1/events upgrades; without it they are refused.
    UnixServer(boost::asio::io_context& io, const Router& router, ServerLimits limits,
               EventStreams* events = nullptr);
    ~UnixServer();
    // Binds `path` (mode 0660), replacing a stale socket file.
    Status listen(const std::string& path);
    void close();
    size_t connections() const;

    struct Impl;  // defined in the .cpp; public so its sessions can name it

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace hangar::api
