#include "api/http_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <optional>
#include <vector>

#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <spdlog/spdlog.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include <boost/asio/ssl/context.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/websocket/rfc6455.hpp>

#include "api/event_stream.hpp"
#include "util/x509.hpp"

namespace hangar::api {

namespace http = boost::beast::http;
using local = boost::asio::local::stream_protocol;
using tcp = boost::asio::ip::tcp;
using TlsStream = boost::beast::ssl_stream<tcp::socket>;

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

tcp::socket& lowest(tcp::socket& s) {
    return s;
}
tcp::socket& lowest(TlsStream& s) {
    return s.next_layer();
}
local::socket& lowest(local::socket& s) {
    return s;
}
}  // namespace

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
    Impl(boost::asio::io_context& io, const Router& r, ServerLimits l, EventStreams* e,
         Authenticate a)
        : io(io),
          router(r),
          limits(l),
          events(e),
          authenticate(std::move(a)),
          unix_acceptor(io),
          tcp_acceptor(io) {}

    void accept_unix();
    void accept_tcp();
    bool in_admin_group(local::socket& sock, unsigned gid) const;
    // false (and logged) for a failed accept or one over the connection limit.
    bool admit(const boost::system::error_code& ec) const;

    boost::asio::io_context& io;
    const Router& router;
    ServerLimits limits;
    EventStreams* events;
    Authenticate authenticate;
    local::acceptor unix_acceptor;
    tcp::acceptor tcp_acceptor;
    boost::asio::ssl::context* tls = nullptr;
    std::optional<unsigned> admin_gid;
    size_t sessions = 0;
    bool closed = false;
};

namespace {

// One HTTP connection. On the unix socket `caller_` is known from SO_PEERCRED; on TCP every
// request must carry a bearer token (except GET /v1/health).
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
  public:
    Session(std::shared_ptr<HttpServer::Impl> server, Stream stream,
            std::optional<core::Caller> caller)
        : server_(std::move(server)),
          stream_(std::move(stream)),
          timer_(lowest(stream_).get_executor()),
          peer_caller_(caller) {
        ++server_->sessions;
    }
    ~Session() { --server_->sessions; }

    void start() {
        if constexpr (std::is_same_v<Stream, TlsStream>) {
            arm(server_->limits.read_timeout);
            stream_.async_handshake(
                boost::asio::ssl::stream_base::server,
                [self = this->shared_from_this()](boost::system::error_code ec) {
                    if (ec) {
                        spdlog::debug("api: TLS handshake failed: {}", ec.message());
                        return self->close();
                    }
                    if (X509* cert = SSL_get1_peer_certificate(self->stream_.native_handle())) {
                        self->cert_fingerprint_ = certificate_fingerprint(cert);
                        X509_free(cert);
                    }
                    self->read(self->server_->limits.idle_timeout);
                });
        } else {
            read(server_->limits.idle_timeout);
        }
    }

  private:
    void arm(std::chrono::seconds timeout) {
        timer_.expires_after(timeout);
        timer_.async_wait([weak = this->weak_from_this()](boost::system::error_code ec) {
            if (auto self = weak.lock(); self && !ec) {
                boost::system::error_code ignored;
                lowest(self->stream_).close(ignored);
            }
        });
    }

    void read(std::chrono::seconds timeout) {
        parser_.emplace();
        parser_->header_limit(static_cast<uint32_t>(server_->limits.header_limit));
        parser_->body_limit(server_->limits.body_limit);
        arm(timeout);
        http::async_read_header(stream_, buffer_, *parser_,
                                [self = this->shared_from_this()](boost::system::error_code ec,
                                                                  size_t) { self->on_header(ec); });
    }

    void on_header(boost::system::error_code ec) {
        if (ec) {
            return on_read_error(ec);
        }
        // The request has begun: the rest must arrive within the read timeout.
        arm(server_->limits.read_timeout);
        http::async_read(stream_, buffer_, *parser_,
                         [self = this->shared_from_this()](boost::system::error_code ec, size_t) {
                             self->on_read(ec);
                         });
    }

    void on_read_error(boost::system::error_code ec) {
        if (ec == http::error::end_of_stream || ec == boost::asio::error::operation_aborted ||
            ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset ||
            !lowest(stream_).is_open()) {
            return close();
        }
        Status st{ec == http::error::body_limit || ec == http::error::header_limit
                      ? Errc::too_large
                      : Errc::bad_request,
                  reason_message(ec)};
        keep_alive_ = false;
        write(error_response(st));
    }

    // The one place where a request gets its caller.
    std::optional<core::Caller> identify(const http::request<http::string_body>& msg,
                                         const std::string& path, Response& refusal) {
        if (peer_caller_) {
            return peer_caller_;
        }
        auto header = msg[http::field::authorization];
        std::string_view auth(header.data(), header.size());
        constexpr std::string_view kBearer = "Bearer ";
        if (auth.size() > kBearer.size() && auth.substr(0, kBearer.size()) == kBearer &&
            server_->authenticate.token) {
            std::string_view token(auth.data() + kBearer.size(), auth.size() - kBearer.size());
            if (auto caller = server_->authenticate.token(token)) {
                return caller;
            }
        } else if (!cert_fingerprint_.empty() && server_->authenticate.certificate) {
            if (auto caller = server_->authenticate.certificate(cert_fingerprint_)) {
                return caller;
            }
        }
        if (path == "/v1/health") {
            return core::Caller{static_cast<uint32_t>(-1), false, false, "anonymous"};
        }
        std::string why =
            !auth.empty() ? "the bearer token is not valid"
            : !cert_fingerprint_.empty()
                ? "the client certificate (SHA-256 " + cert_fingerprint_ + ") is not trusted"
                : "this request needs a bearer token (Authorization: Bearer ...) or "
                  "a trusted client certificate";
        refusal = error_response({Errc::unauthorized, why});
        refusal.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"hangar\"");
        return std::nullopt;
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
        if (!parse_target(std::string(msg.target()), req.path, req.query)) {
            return write(error_response({Errc::bad_request, "malformed request target"}));
        }
        Response refusal;
        auto caller = identify(msg, req.path, refusal);
        if (!caller) {
            return write(std::move(refusal));
        }
        req.caller = *caller;
        if (boost::beast::websocket::is_upgrade(msg) && req.path == "/v1/events" &&
            req.method == "GET" && server_->events) {
            return upgrade_events(req);
        }
        if (msg.count(http::field::upgrade) != 0) {
            return write(error_response(
                {Errc::bad_request, "this route does not accept a protocol upgrade"}));
        }
        req.body = std::move(msg.body());
        server_->router.dispatch(std::move(req), [self = this->shared_from_this()](Response res) {
            self->write(std::move(res));
        });
    }

    void upgrade_events(const Request& req) {
        EventFilter filter;
        std::optional<uint64_t> since;
        if (Status st = parse_event_query(req.query, req.caller, filter, since); !st) {
            return write(error_response(st));
        }
        if (server_->events->full()) {
            return write(
                error_response({Errc::unavailable, "too many event subscribers; try again later"}));
        }
        timer_.cancel();
        // The WebSocket session takes the connection over; this HTTP session ends here.
        server_->events->start(std::move(stream_), parser_->release(), std::move(filter), since);
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
        http::async_write(
            stream_, *out,
            [self = this->shared_from_this(), out](boost::system::error_code ec, size_t) {
                if (ec || !self->keep_alive_ || self->server_->closed) {
                    return self->close();
                }
                self->read(self->server_->limits.idle_timeout);
            });
    }

    void close() {
        timer_.cancel();
        boost::system::error_code ec;
        lowest(stream_).shutdown(std::remove_reference_t<decltype(lowest(stream_))>::shutdown_both,
                                 ec);
        lowest(stream_).close(ec);
    }

    std::shared_ptr<HttpServer::Impl> server_;
    Stream stream_;
    boost::asio::steady_timer timer_;
    boost::beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::optional<core::Caller> peer_caller_;
    std::string cert_fingerprint_;  // of the TLS peer certificate, when it sent one
    bool keep_alive_ = true;
};

}  // namespace

bool HttpServer::Impl::in_admin_group(local::socket& sock, unsigned gid) const {
    if (!admin_gid) {
        return false;
    }
    if (gid == *admin_gid) {
        return true;
    }
    std::vector<gid_t> groups(64);
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    if (getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0 &&
        errno == ERANGE) {
        groups.resize(len / sizeof(gid_t) + 1);
        len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        if (getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len) != 0) {
            return false;
        }
    }
    groups.resize(len / sizeof(gid_t));
    return std::find(groups.begin(), groups.end(), *admin_gid) != groups.end();
}

bool HttpServer::Impl::admit(const boost::system::error_code& ec) const {
    if (ec) {
        spdlog::warn("api: accept failed: {}", ec.message());
        return false;
    }
    if (sessions >= limits.max_connections) {
        spdlog::warn("api: connection limit ({}) reached; refusing a connection",
                     limits.max_connections);
        return false;
    }
    return true;
}

void HttpServer::Impl::accept_unix() {
    unix_acceptor.async_accept([self = shared_from_this()](boost::system::error_code ec,
                                                           local::socket sock) {
        if (self->closed) {
            return;
        }
        if (self->admit(ec)) {
            ucred cred{};
            socklen_t len = sizeof cred;
            if (getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
                core::Caller caller{cred.uid, cred.uid == 0 || self->in_admin_group(sock, cred.gid),
                                    true};
                std::make_shared<Session<local::socket>>(self, std::move(sock), caller)->start();
            }
        }
        self->accept_unix();
    });
}

void HttpServer::Impl::accept_tcp() {
    tcp_acceptor.async_accept(
        [self = shared_from_this()](boost::system::error_code ec, tcp::socket sock) {
            if (self->closed) {
                return;
            }
            if (self->admit(ec)) {
                boost::system::error_code ignored;
                sock.set_option(tcp::no_delay(true), ignored);
                if (self->tls) {
                    std::make_shared<Session<TlsStream>>(
                        self, TlsStream(std::move(sock), *self->tls), std::nullopt)
                        ->start();
                } else {
                    std::make_shared<Session<tcp::socket>>(self, std::move(sock), std::nullopt)
                        ->start();
                }
            }
            self->accept_tcp();
        });
}

HttpServer::HttpServer(boost::asio::io_context& io, const Router& router, ServerLimits limits,
                       EventStreams* events, Authenticate authenticate)
    : impl_(std::make_shared<Impl>(io, router, limits, events, std::move(authenticate))) {}

HttpServer::~HttpServer() {
    close();
}

Status HttpServer::listen_unix(const std::string& path) {
    boost::system::error_code ec;
    struct stat st {};
    if (lstat(path.c_str(), &st) == 0) {
        if (!S_ISSOCK(st.st_mode)) {
            return {Errc::internal, path + " exists and is not a socket"};
        }
        unlink(path.c_str());
    }
    auto& a = impl_->unix_acceptor;
    a.open(local(), ec);
    if (!ec) {
        a.bind(local::endpoint(path), ec);
    }
    if (!ec) {
        a.listen(boost::asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        return {Errc::internal, "cannot listen on " + path + ": " + ec.message()};
    }
    chmod(path.c_str(), 0660);
    impl_->accept_unix();
    return {};
}

Status HttpServer::listen_tcp(const std::string& addr_port, boost::asio::ssl::context* tls) {
    size_t colon = addr_port.rfind(':');
    if (colon == std::string::npos) {
        return {Errc::bad_request, "--listen needs ADDR:PORT, got " + addr_port};
    }
    std::string host = addr_port.substr(0, colon);
    if (host.size() > 1 && host.front() == '[' && host.back() == ']') {
        host = host.substr(1, host.size() - 2);
    }
    char* end = nullptr;
    unsigned long port = std::strtoul(addr_port.c_str() + colon + 1, &end, 10);
    boost::system::error_code ec;
    auto addr = boost::asio::ip::make_address(host, ec);
    if (ec || *end != '\0' || colon + 1 == addr_port.size() || port > 65535) {
        return {Errc::bad_request, "--listen needs a numeric ADDR:PORT, got " + addr_port};
    }
    tcp::endpoint ep(addr, static_cast<uint16_t>(port));
    auto& a = impl_->tcp_acceptor;
    a.open(ep.protocol(), ec);
    if (!ec) {
        a.set_option(boost::asio::socket_base::reuse_address(true), ec);
        a.bind(ep, ec);
    }
    if (!ec) {
        a.listen(boost::asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        return {Errc::internal, "cannot listen on " + addr_port + ": " + ec.message()};
    }
    impl_->tls = tls;
    impl_->accept_tcp();
    return {};
}

Status HttpServer::adopt_unix(int fd) {
    boost::system::error_code ec;
    impl_->unix_acceptor.assign(local(), fd, ec);
    if (ec) {
        return {Errc::internal, "cannot use the activated unix socket: " + ec.message()};
    }
    impl_->accept_unix();
    return {};
}

Status HttpServer::adopt_tcp(int fd, boost::asio::ssl::context* tls) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
        return {Errc::internal, std::string("activated TCP socket: ") + strerror(errno)};
    }
    boost::system::error_code ec;
    impl_->tcp_acceptor.assign(addr.ss_family == AF_INET6 ? tcp::v6() : tcp::v4(), fd, ec);
    if (ec) {
        return {Errc::internal, "cannot use the activated TCP socket: " + ec.message()};
    }
    impl_->tls = tls;
    impl_->accept_tcp();
    return {};
}

std::string HttpServer::bound_address() const {
    boost::system::error_code ec;
    auto ep = impl_->tcp_acceptor.local_endpoint(ec);
    if (ec) {
        return {};
    }
    return ep.address().is_v6() ? "[" + ep.address().to_string() + "]" : ep.address().to_string();
}

uint16_t HttpServer::bound_port() const {
    boost::system::error_code ec;
    auto ep = impl_->tcp_acceptor.local_endpoint(ec);
    return ec ? 0 : ep.port();
}

void HttpServer::set_admin_gid(std::optional<unsigned> gid) {
    impl_->admin_gid = gid;
}

void HttpServer::close() {
    impl_->closed = true;
    boost::system::error_code ec;
    impl_->unix_acceptor.close(ec);
    impl_->tcp_acceptor.close(ec);
}

size_t HttpServer::connections() const {
    return impl_->sessions;
}

}  // namespace hangar::api
