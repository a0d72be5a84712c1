#include "api/http_server.hpp"

#include "api/event_stream.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <optional>

#include <spdlog/spdlog.h>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

namespace hangar::api {

namespace http = boost::beast::http;
using local = boost::asio::local::stream_protocol;

namespace {
std::string reason_message(const boost::system::error_code& ec) {
    if (ec == http::error::body_limit) {
        return "the request body is too large";
    }
    if (ec == http::error::header_limit) {
        return "the request header is too large";
    }
    return "malformed HTTP request: " + ec.message();
}
}  // namespace

struct UnixServer::Impl : std::enable_shared_from_this<UnixServer::Impl> {
    Impl(boost::asio::io_context& io, const Router& r, ServerLimits l, EventStreams* e)
        : io(io), router(r), limits(l), events(e), acceptor(io) {}

    void accept();

    boost::asio::io_context& io;
    const Router& router;
    ServerLimits limits;
    EventStreams* events;
    local::acceptor acceptor;
    size_t sessions = 0;
    bool closed = false;
};

namespace {

class Session : public std::enable_shared_from_this<Session> {
  public:
    Session(std::shared_ptr<UnixServer::Impl> server, local::socket sock, core::Caller caller)
        : server_(std::move(server)),
          sock_(std::move(sock)),
          timer_(sock_.get_executor()),
          caller_(caller) {
        ++server_->sessions;
    }
    ~Session() { --server_->sessions; }

    void start() { read(server_->limits.idle_timeout); }

  private:
    void arm(std::chrono::seconds timeout) {
        timer_.expires_after(timeout);
        timer_.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
            if (auto self = weak.lock(); self && !ec) {
                boost::system::error_code ignored;
                self->sock_.close(ignored);
            }
        });
    }

    void read(std::chrono::seconds timeout) {
        parser_.emplace();
        parser_->header_limit(static_cast<uint32_t>(server_->limits.header_limit));
        parser_->body_limit(server_->limits.body_limit);
        arm(timeout);
        http::async_read_header(sock_, buffer_, *parser_,
                                [self = shared_from_this()](boost::system::error_code ec, size_t) {
                                    self->on_header(ec);
                                });
    }

    void on_header(boost::system::error_code ec) {
        if (ec) {
            return on_read_error(ec);
        }
        // The request has begun: the rest must arrive within the read timeout.
        arm(server_->limits.read_timeout);
        http::async_read(sock_, buffer_, *parser_,
                         [self = shared_from_this()](boost::system::error_code ec, size_t) {
                             self->on_read(ec);
                         });
    }

    void on_read_error(boost::system::error_code ec) {
        if (ec == http::error::end_of_stream || ec == boost::asio::error::operation_aborted ||
            ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset ||
            !sock_.is_open()) {
            return close();
        }
        Status st{ec == http::error::body_limit     ? Errc::too_large
                  : ec == http::error::header_limit ? Errc::too_large
                                                    : Errc::bad_request,
                  reason_message(ec)};
        keep_alive_ = false;
        write(error_response(st));
    }

    void on_read(boost::system::error_code ec) {
        if (ec) {
            return on_read_error(ec);
        }
        timer_.cancel();
        auto& msg = parser_->get();
        keep_alive_ = msg.keep_alive();
        Request req;
        req.method = std::string(msg.method_string());
        req.caller = caller_;
        if (!parse_target(std::string(msg.target()), req.path, req.query)) {
            return write(error_response({Errc::bad_request, "malformed request target"}));
        }
        if (boost::beast::websocket::is_upgrade(msg) && req.path == "/v1/events" &&
            req.method == "GET" && server_->events) {
            return upgrade_events(req);
        }
        if (msg.count(http::field::upgrade) != 0) {
            return write(error_response(
                {Errc::bad_request, "this route does not accept a protocol upgrade"}));
        }
        req.body = std::move(msg.body());
        server_->router.dispatch(std::move(req), [self = shared_from_this()](Response res) {
            self->write(std::move(res));
        });
    }

    void upgrade_events(const Request& req) {
        EventFilter filter;
        std::optional<uint64_t> since;
        if (Status st = parse_event_query(req.query, caller_, filter, since); !st) {
            return write(error_response(st));
        }
        if (server_->events->full()) {
            return write(
                error_response({Errc::unavailable, "too many event subscribers; try again later"}));
        }
        timer_.cancel();
        // The WebSocket session takes the connection over; this HTTP session ends here.
        server_->events->start(std::move(sock_), parser_->release(), std::move(filter), since);
    }

    void write(Response res) {
        auto out = std::make_shared<http::response<http::string_body>>(
            static_cast<http::status>(res.status), 11);
        out->set(http::field::server, "hangard/" HANGAR_VERSION);
        out->set(http::field::content_type, res.content_type);
        for (auto& [k, v] : res.headers) {
            out->set(k, v);
        }
        out->body() = std::move(res.body);
        out->keep_alive(keep_alive_);
        out->prepare_payload();
        arm(server_->limits.read_timeout);
        http::async_write(sock_, *out,
                          [self = shared_from_this(), out](boost::system::error_code ec, size_t) {
                              if (ec || !self->keep_alive_ || self->server_->closed) {
                                  return self->close();
                              }
                              self->read(self->server_->limits.idle_timeout);
                          });
    }

    void close() {
        timer_.cancel();
        boost::system::error_code ec;
        sock_.shutdown(local::socket::shutdown_both, ec);
        sock_.close(ec);
    }

    std::shared_ptr<UnixServer::Impl> server_;
    local::socket sock_;
    boost::asio::steady_timer timer_;
    boost::beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    core::Caller caller_;
    bool keep_alive_ = true;
};

}  // namespace

void UnixServer::Impl::accept() {
    acceptor.async_accept([self = shared_from_this()](boost::system::error_code ec,
                                                      local::socket sock) {
        if (self->closed) {
            return;
        }
        if (!ec) {
            if (self->sessions >= self->limits.max_connections) {
                spdlog::warn("api: connection limit ({}) reached; refusing a connection",
                             self->limits.max_connections);
            } else {
                ucred cred{};
                socklen_t len = sizeof cred;
                if (getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
                    core::Caller caller{cred.uid, cred.uid == 0};
                    std::make_shared<Session>(self, std::move(sock), caller)->start();
                }
            }
        } else {
            spdlog::warn("api: accept failed: {}", ec.message());
        }
        self->accept();
    });
}

UnixServer::UnixServer(boost::asio::io_context& io, const Router& router, ServerLimits limits,
                       EventStreams* events)
    : impl_(std::make_shared<Impl>(io, router, limits, events)) {}

UnixServer::~UnixServer() {
    close();
}

Status UnixServer::listen(const std::string& path) {
    boost::system::error_code ec;
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return {Errc::internal, path + " exists and is not a socket"};
        }
        unlink(path.c_str());
    }
    impl_->acceptor.open(local(), ec);
    if (!ec) {
        impl_->acceptor.bind(local::endpoint(path), ec);
    }
    if (!ec) {
        impl_->acceptor.listen(boost::asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        return {Errc::internal, "cannot listen on " + path + ": " + ec.message()};
    }
    chmod(path.c_str(), 0660);
    impl_->accept();
    return {};
}

void UnixServer::close() {
    impl_->closed = true;
    boost::system::error_code ec;
    impl_->acceptor.close(ec);
}

size_t UnixServer::connections() const {
    return impl_->sessions;
}

}  // namespace hangar::api
