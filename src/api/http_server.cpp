#include "api/http_server.hpp"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <map>
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

#include "api/browser_access.hpp"
#include "api/connection_budget.hpp"
#include "api/event_stream.hpp"
#include "api/ws_session.hpp"
#include "core/admin_group.hpp"
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

std::string_view trim(std::string_view v) {
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) {
        v.remove_prefix(1);
    }
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) {
        v.remove_suffix(1);
    }
    return v;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string quoted(std::string_view v) {
    return "'" + std::string(v.substr(0, 64)) + (v.size() > 64 ? "...'" : "'");
}

// A body is framed by Content-Length or by exactly one "Transfer-Encoding: chunked". Any other
// transfer coding ("xchunked", "chunked, identity", "identity") is refused: Beast would read
// such a body as empty, and a proxy in front might not, which smuggles a second request.
Status check_framing(const http::request_header<>& h) {
    auto [first, last] = h.equal_range(http::field::transfer_encoding);
    if (first == last) {
        return {};
    }
    if (std::next(first) != last) {
        return {Errc::bad_request, "more than one Transfer-Encoding header"};
    }
    std::string_view v = trim({first->value().data(), first->value().size()});
    if (!iequals(v, "chunked")) {
        return {Errc::bad_request, "Transfer-Encoding must be exactly 'chunked', not " + quoted(v)};
    }
    return {};
}

bool is_base64_key(std::string_view key) {
    // 16 bytes in base64: 22 characters of the alphabet, then "==" (RFC 6455 4.2.1).
    if (key.size() != 24 || key.substr(22) != "==") {
        return false;
    }
    return std::all_of(key.begin(), key.begin() + 22, [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
    });
}

// What Beast's WebSocket accept would refuse with a text body, refused here in JSON instead.
Status check_websocket_handshake(const http::request_header<>& h, bool& bad_version) {
    bad_version = false;
    if (!boost::beast::websocket::is_upgrade(h)) {
        return {Errc::bad_request,
                "a WebSocket upgrade needs 'Connection: Upgrade' and 'Upgrade: websocket'"};
    }
    if (h.version() != 11) {
        return {Errc::bad_request, "a WebSocket upgrade needs HTTP/1.1"};
    }
    if (h.count(http::field::host) == 0) {
        return {Errc::bad_request, "a WebSocket upgrade needs a Host header"};
    }
    auto key = h[http::field::sec_websocket_key];
    if (!is_base64_key(trim({key.data(), key.size()}))) {
        return {Errc::bad_request, "Sec-WebSocket-Key must be 16 bytes in base64 (RFC 6455)"};
    }
    auto version = h[http::field::sec_websocket_version];
    if (trim({version.data(), version.size()}) != "13") {
        bad_version = true;
        return {Errc::bad_request, "Sec-WebSocket-Version must be 13, not " +
                                       quoted({version.data(), version.size()})};
    }
    return {};
}

const char* reason_name(ConnectionBudget::Refusal r, bool by_address) {
    switch (r) {
        case ConnectionBudget::Refusal::per_key:
            return by_address ? "address_limit" : "uid_limit";
        case ConnectionBudget::Refusal::shared:
            return "users_share";
        case ConnectionBudget::Refusal::total:
        case ConnectionBudget::Refusal::none:
            break;
    }
    return by_address ? "pending_limit" : "total";
}

// The 503 message of a refused connection.
std::string refusal_message(ConnectionBudget::Refusal r, uint32_t uid,
                            const ConnectionBudget::Limits& l) {
    switch (r) {
        case ConnectionBudget::Refusal::per_key:
            return "too many connections from uid " + std::to_string(uid) + " (at most " +
                   std::to_string(l.per_key) + " at once); close some and try again";
        case ConnectionBudget::Refusal::shared:
            return "every connection for unprivileged users is in use (" +
                   std::to_string(l.total - l.reserved) +
                   "; the rest is kept for root and the admin group); try again later";
        case ConnectionBudget::Refusal::total:
        case ConnectionBudget::Refusal::none:
            break;
    }
    return "too many connections (" + std::to_string(l.total) + "); try again later";
}

constexpr auto kLinger = std::chrono::seconds(1);
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
          tcp_acceptor(io),
          unix_retry(io),
          tcp_retry(io),
          unix_budget({l.unix_connections, l.unix_per_uid, l.unix_reserved}),
          tcp_budget({l.tcp_connections, l.tcp_per_uid, l.tcp_reserved}),
          pending_budget({l.tcp_pending, l.tcp_pending_per_address, 0}) {
        for (const char* r : {"uid_limit", "users_share", "total"}) {
            refusals[{"unix", r}] = 0;
            refusals[{"tcp", r}] = 0;
        }
        for (const char* r : {"address_limit", "pending_limit", "auth_timeout"}) {
            refusals[{"tcp", r}] = 0;
        }
    }

    void accept_unix();
    void accept_tcp();
    std::vector<unsigned> peer_groups(local::socket& sock, unsigned gid) const;
    // A failed accept (out of fds, say): logged, and accepting resumes a little later instead
    // of failing again at once in a loop.
    void accept_failed(const boost::system::error_code& ec, boost::asio::steady_timer& retry,
                       void (Impl::*again)());
    // Counts a refused connection; logs it, at most every 10 s per listener at warning level.
    void note_refusal(const char* listener, const char* reason, const std::string& what);

    boost::asio::io_context& io;
    const Router& router;
    ServerLimits limits;
    EventStreams* events;
    Authenticate authenticate;
    local::acceptor unix_acceptor;
    tcp::acceptor tcp_acceptor;
    boost::asio::ssl::context* tls = nullptr;
    const core::AdminGroup* admins = nullptr;  // none: root only
    std::vector<std::string> allowed_origins;  // --allowed-origin
    boost::asio::steady_timer unix_retry, tcp_retry;
    ConnectionBudget unix_budget;     // by uid
    ConnectionBudget tcp_budget;      // by uid, once authenticated
    ConnectionBudget pending_budget;  // by client address, until authenticated
    std::map<std::pair<std::string, std::string>, uint64_t> refusals;
    std::map<std::string, std::pair<std::chrono::steady_clock::time_point, uint64_t>> last_warn;
    std::array<char, 16 * 1024> scratch{};  // what a closing connection still sends, dropped
    size_t sessions = 0;
    size_t refusing = 0;
    bool closed = false;
};

namespace {

// One HTTP connection. On the unix socket `peer_caller_` is known from SO_PEERCRED; on TCP
// the caller is whoever the request's bearer token or trusted client certificate stands for,
// or else anonymous, and the router answers 401 where a route needs more. A TCP connection is
// pending until a request authenticates: it holds a slot of the pending budget, has
// `auth_timeout` for its TLS handshake and first request, and is closed after its first
// answer. A refused connection (`refusal_`) is answered and closed.
template <typename Stream>
class Session : public std::enable_shared_from_this<Session<Stream>> {
  public:
    Session(std::shared_ptr<HttpServer::Impl> server, Stream stream,
            std::optional<core::Caller> caller, ConnectionBudget::Slot slot, bool pending,
            std::optional<Response> refusal = std::nullopt)
        : server_(std::move(server)),
          stream_(std::move(stream)),
          timer_(lowest(stream_).get_executor()),
          peer_caller_(caller),
          slot_(std::move(slot)),
          refusal_(std::move(refusal)),
          pending_(pending) {
        ++server_->sessions;
        if (refusal_) {
            ++server_->refusing;
        }
    }
    ~Session() {
        --server_->sessions;
        if (refusal_) {
            --server_->refusing;
        }
    }

    void start() {
        if (refusal_) {
            keep_alive_ = false;
            return write(std::move(*refusal_));
        }
        if (pending_) {
            arm(server_->limits.auth_timeout);  // one deadline for handshake and request
        }
        if constexpr (std::is_same_v<Stream, TlsStream>) {
            sniff();
        } else {
            read(server_->limits.idle_timeout);
        }
    }

  private:
    void arm(std::chrono::steady_clock::duration timeout) {
        timer_.expires_after(timeout);
        timer_.async_wait([weak = this->weak_from_this()](boost::system::error_code ec) {
            if (auto self = weak.lock(); self && !ec) {
                if (self->pending_ && !self->answering_) {
                    self->server_->note_refusal("tcp", "auth_timeout",
                                                "a connection that did not authenticate in time");
                }
                boost::system::error_code ignored;
                lowest(self->stream_).close(ignored);
            }
        });
    }

    // TLS only: a client that speaks plain HTTP to this port gets a plain HTTP answer saying
    // so, instead of a failed handshake. A TLS connection begins with a handshake record
    // (0x16); an HTTP request with a method's capital letter.
    void sniff() {
        lowest(stream_).async_wait(tcp::socket::wait_read, [self = this->shared_from_this()](
                                                               boost::system::error_code ec) {
            if (ec) {
                return self->close();
            }
            unsigned char first = 0;
            ssize_t n =
                ::recv(lowest(self->stream_).native_handle(), &first, 1, MSG_PEEK | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                return self->sniff();
            }
            if (n <= 0) {
                return self->close();
            }
            if (first >= 'A' && first <= 'Z') {
                return self->answer_plain_http();
            }
            self->handshake();
        });
    }

    void answer_plain_http() {
        if constexpr (std::is_same_v<Stream, TlsStream>) {
            keep_alive_ = false;
            answering_ = true;
            auto out = prepare(error_response(
                {Errc::bad_request, "this port speaks HTTPS: use https:// (TLS) to reach it"}));
            http::async_write(
                lowest(stream_), *out,
                [self = this->shared_from_this(), out](boost::system::error_code ec, size_t) {
                    if (ec) {
                        return self->close();
                    }
                    self->linger();
                });
        }
    }

    void handshake() {
        if constexpr (std::is_same_v<Stream, TlsStream>) {
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
        }
    }

    void read(std::chrono::steady_clock::duration timeout) {
        parser_.emplace();
        parser_->header_limit(static_cast<uint32_t>(server_->limits.header_limit));
        parser_->body_limit(server_->limits.body_limit);
        if (!pending_) {
            arm(timeout);
        }
        http::async_read_header(stream_, buffer_, *parser_,
                                [self = this->shared_from_this()](boost::system::error_code ec,
                                                                  size_t) { self->on_header(ec); });
    }

    // The header is in: framing, target and caller are decided before any body is read, so a
    // caller that is refused never gets to send one.
    void on_header(boost::system::error_code ec) {
        if (ec) {
            return on_read_error(ec);
        }
        auto& msg = parser_->get();
        keep_alive_ = msg.keep_alive() && !pending_;
        if (Status st = check_framing(msg); !st) {
            return refuse(error_response(st));
        }
        req_ = Request{};
        req_.method = std::string(msg.method_string());
        if (!parse_target(std::string(msg.target()), req_.path, req_.query)) {
            return refuse(error_response({Errc::bad_request, "malformed request target"}));
        }
        req_.caller = identify(msg);
        // The router decides whether this caller may call this route; one nobody stands for
        // is refused before it sends a body.
        target_ = server_->router.resolve(req_);
        if (target_.refusal && target_.refusal->status == 401) {
            keep_alive_ = false;
            return server_->router.run(
                target_, std::move(req_),
                [self = this->shared_from_this()](Response res) { self->write(std::move(res)); });
        }
        const core::Caller* caller = &req_.caller;
        if (pending_ && !is_anonymous(*caller)) {
            // Authenticated: from the pending budget (by address) to the uid's.
            ConnectionBudget::Slot slot;
            auto why = server_->tcp_budget.take(std::to_string(caller->uid), caller->admin, slot);
            if (why != ConnectionBudget::Refusal::none) {
                std::string message =
                    refusal_message(why, caller->uid, server_->tcp_budget.limits());
                server_->note_refusal("tcp", reason_name(why, false), message);
                return refuse(error_response({Errc::unavailable, message}));
            }
            slot_ = std::move(slot);
            pending_ = false;
            keep_alive_ = msg.keep_alive();
        }
        // The request has begun: the rest must arrive within the read timeout.
        if (!pending_) {
            arm(server_->limits.read_timeout);
        }
        http::async_read(stream_, buffer_, *parser_,
                         [self = this->shared_from_this()](boost::system::error_code ec, size_t) {
                             self->on_read(ec);
                         });
    }

    // An answer before the body was read: the connection cannot go on.
    void refuse(Response res) {
        keep_alive_ = false;
        write(std::move(res));
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
        refuse(error_response(st));
    }

    // The one place where a request gets its caller: the unix peer, the one its token or
    // certificate stands for, or else anonymous (with why, for the router's 401).
    core::Caller identify(const http::request_header<>& msg) {
        if (peer_caller_) {
            return *peer_caller_;
        }
        auto header = msg[http::field::authorization];
        std::string_view auth(header.data(), header.size());
        constexpr std::string_view kBearer = "Bearer ";
        if (auth.size() > kBearer.size() && auth.substr(0, kBearer.size()) == kBearer &&
            server_->authenticate.token) {
            std::string_view token(auth.data() + kBearer.size(), auth.size() - kBearer.size());
            if (auto caller = server_->authenticate.token(token)) {
                return *caller;
            }
        } else if (auto t = req_.query.find("ticket");
                   t != req_.query.end() && server_->authenticate.ticket) {
            if (auto caller = server_->authenticate.ticket(t->second, req_.path)) {
                return *caller;
            }
            req_.unauthenticated =
                "the ticket is not valid for this route: unknown, used already (a ticket is good "
                "for one connection), or older than 30 s; ask for a new one";
            return anonymous_caller();
        } else if (!cert_fingerprint_.empty() && server_->authenticate.certificate) {
            if (auto caller = server_->authenticate.certificate(cert_fingerprint_)) {
                return *caller;
            }
        }
        req_.unauthenticated =
            !auth.empty() ? "the bearer token is not valid"
            : !cert_fingerprint_.empty()
                ? "the client certificate (SHA-256 " + cert_fingerprint_ + ") is not trusted"
                : "this request needs a bearer token (Authorization: Bearer ...) or "
                  "a trusted client certificate";
        return anonymous_caller();
    }

    void on_read(boost::system::error_code ec) {
        if (ec) {
            return on_read_error(ec);
        }
        timer_.cancel();
        answering_ = true;
        auto& msg = parser_->get();
        Request req = std::move(req_);
        auto answer = [self = this->shared_from_this()](Response res) {
            self->write(std::move(res));
        };
        if (msg.count(http::field::upgrade) != 0) {
            // The route names the WebSocket; the router has checked who may open it.
            Upgrade upgrade = target_.upgrade();
            if (upgrade == Upgrade::events && !server_->events) {
                upgrade = Upgrade::none;
            }
            if (upgrade == Upgrade::none) {
                return write(error_response(
                    {Errc::bad_request, "this route does not accept a protocol upgrade"}));
            }
            if (!target_.permitted()) {
                return server_->router.run(target_, std::move(req), std::move(answer));
            }
            bool bad_version = false;
            if (Status st = check_websocket_handshake(msg, bad_version); !st) {
                auto res = error_response(st);
                if (bad_version) {
                    res.headers.emplace_back("Sec-WebSocket-Version", "13");
                }
                return write(std::move(res));
            }
            // A browser's page may open a WebSocket to any site: only this server's own origin
            // and the allowed ones may (cross-site WebSocket hijacking).
            auto origin = msg[http::field::origin];
            auto host = msg[http::field::host];
            if (Status st = check_origin({origin.data(), origin.size()},
                                         std::is_same_v<Stream, TlsStream> ? "https" : "http",
                                         {host.data(), host.size()}, server_->allowed_origins);
                !st) {
                return write(error_response(st));
            }
            switch (upgrade) {
                case Upgrade::events:
                    return upgrade_events(req);
                case Upgrade::channel:
                    return upgrade_channel(std::move(req));
                case Upgrade::none:
                    break;
            }
            return;
        }
        req.body = std::move(msg.body());
        server_->router.run(target_, std::move(req), std::move(answer));
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

    void upgrade_channel(Request req) {
        timer_.cancel();
        server_->router.upgrade(
            target_, std::move(req),
            [self = this->shared_from_this()](Response res) { self->write(std::move(res)); },
            [self = this->shared_from_this()](std::shared_ptr<WsChannel> channel,
                                              WsOptions options) {
                // The WebSocket session takes the connection over; this one ends here.
                self->timer_.cancel();
                start_ws_channel(std::move(self->stream_), self->parser_->release(),
                                 std::move(channel), std::move(options));
            });
    }

    std::shared_ptr<http::response<http::string_body>> prepare(Response res) const {
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
        return out;
    }

    void write(Response res) {
        answering_ = true;
        auto out = prepare(std::move(res));
        arm(server_->limits.read_timeout);
        http::async_write(
            stream_, *out,
            [self = this->shared_from_this(), out](boost::system::error_code ec, size_t) {
                if (ec) {
                    return self->close();
                }
                if (!self->keep_alive_ || self->server_->closed) {
                    return self->linger();
                }
                self->answering_ = false;
                self->read(self->server_->limits.idle_timeout);
            });
    }

    // After a last answer: stop sending, then drop what the client still sends until it
    // closes (or for a second). Closing with unread input would reset the connection, and
    // the client could lose the answer (what Apache calls a lingering close).
    void linger() {
        boost::system::error_code ec;
        lowest(stream_).shutdown(boost::asio::socket_base::shutdown_send, ec);
        if (ec) {
            return close();
        }
        arm(kLinger);
        drain();
    }

    void drain() {
        lowest(stream_).async_read_some(
            boost::asio::buffer(server_->scratch),
            [self = this->shared_from_this()](boost::system::error_code ec, size_t) {
                if (ec) {
                    return self->close();
                }
                self->drain();
            });
    }

    void close() {
        timer_.cancel();
        boost::system::error_code ec;
        lowest(stream_).shutdown(boost::asio::socket_base::shutdown_both, ec);
        lowest(stream_).close(ec);
    }

    std::shared_ptr<HttpServer::Impl> server_;
    Stream stream_;
    boost::asio::steady_timer timer_;
    boost::beast::flat_buffer buffer_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::optional<core::Caller> peer_caller_;
    ConnectionBudget::Slot slot_;      // pending (by address) or open (by uid)
    std::optional<Response> refusal_;  // what a refused connection is answered
    Request req_;                      // the request being read, from its header
    Router::Target target_;            // its route, resolved from the header
    std::string cert_fingerprint_;     // of the TLS peer certificate, when it sent one
    bool pending_ = false;             // TCP, not authenticated yet
    bool answering_ = false;           // a request is in: the deadline is no longer auth's
    bool keep_alive_ = true;
};

}  // namespace

// The peer's groups as the kernel recorded them at connect (its primary group first).
std::vector<unsigned> HttpServer::Impl::peer_groups(local::socket& sock, unsigned gid) const {
    std::vector<gid_t> groups(64);
    socklen_t len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
    int rc = getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len);
    if (rc != 0 && errno == ERANGE) {  // `len` is the size it needs
        groups.resize(len / sizeof(gid_t) + 1);
        len = static_cast<socklen_t>(groups.size() * sizeof(gid_t));
        rc = getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERGROUPS, groups.data(), &len);
    }
    groups.resize(rc == 0 ? len / sizeof(gid_t) : 0);
    std::vector<unsigned> out{gid};
    out.insert(out.end(), groups.begin(), groups.end());
    return out;
}

void HttpServer::Impl::accept_failed(const boost::system::error_code& ec,
                                     boost::asio::steady_timer& retry, void (Impl::*again)()) {
    spdlog::warn("api: accept failed: {}; accepting again in 100 ms", ec.message());
    retry.expires_after(std::chrono::milliseconds(100));
    retry.async_wait([self = shared_from_this(), again](boost::system::error_code e) {
        if (!e && !self->closed) {
            ((*self).*again)();
        }
    });
}

void HttpServer::Impl::note_refusal(const char* listener, const char* reason,
                                    const std::string& what) {
    ++refusals[{listener, reason}];
    auto now = std::chrono::steady_clock::now();
    auto& [at, since] = last_warn[listener];
    ++since;
    if (at == std::chrono::steady_clock::time_point{} || now - at >= std::chrono::seconds(10)) {
        spdlog::warn("api: {} connection refused ({}): {}; {} refused since the last such line",
                     listener, reason, what, since);
        at = now;
        since = 0;
    } else {
        spdlog::debug("api: {} connection refused ({}): {}", listener, reason, what);
    }
}

void HttpServer::Impl::accept_unix() {
    unix_acceptor.async_accept([self = shared_from_this()](boost::system::error_code ec,
                                                           local::socket sock) {
        if (self->closed) {
            return;
        }
        if (ec) {
            return self->accept_failed(ec, self->unix_retry, &Impl::accept_unix);
        }
        ucred cred{};
        socklen_t len = sizeof cred;
        if (getsockopt(sock.native_handle(), SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0) {
            bool admin = cred.uid == 0 ||
                         (self->admins &&
                          self->admins->peer_is_admin(cred.uid, self->peer_groups(sock, cred.gid)));
            core::Caller caller{cred.uid, admin, true};
            ConnectionBudget::Slot slot;
            auto why = self->unix_budget.take(std::to_string(cred.uid), caller.admin, slot);
            if (why == ConnectionBudget::Refusal::none) {
                std::make_shared<Session<local::socket>>(self, std::move(sock), caller,
                                                         std::move(slot), false)
                    ->start();
            } else {
                std::string message = refusal_message(why, cred.uid, self->unix_budget.limits());
                self->note_refusal("unix", reason_name(why, false), message);
                // Answered 503, unless so many are being answered already.
                if (self->refusing < self->limits.refusing) {
                    std::make_shared<Session<local::socket>>(
                        self, std::move(sock), caller, ConnectionBudget::Slot{}, false,
                        error_response({Errc::unavailable, message}))
                        ->start();
                }
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
            if (ec) {
                return self->accept_failed(ec, self->tcp_retry, &Impl::accept_tcp);
            }
            boost::system::error_code ignored;
            std::string address = sock.remote_endpoint(ignored).address().to_string();
            ConnectionBudget::Slot slot;
            auto why = self->pending_budget.take(address, false, slot);
            if (why != ConnectionBudget::Refusal::none) {
                // Nothing is known about this client yet: no TLS handshake, no answer; closed.
                self->note_refusal(
                    "tcp", reason_name(why, true),
                    "too many connections not yet authenticated" +
                        std::string(why == ConnectionBudget::Refusal::per_key ? " from " + address
                                                                              : ""));
                sock.close(ignored);
                return self->accept_tcp();
            }
            sock.set_option(tcp::no_delay(true), ignored);
            if (self->tls) {
                std::make_shared<Session<TlsStream>>(self, TlsStream(std::move(sock), *self->tls),
                                                     std::nullopt, std::move(slot), true)
                    ->start();
            } else {
                std::make_shared<Session<tcp::socket>>(self, std::move(sock), std::nullopt,
                                                       std::move(slot), true)
                    ->start();
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

Status HttpServer::listen_unix(const std::string& path, unsigned mode,
                               std::optional<unsigned> gid) {
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
        // Created 0600 (one thread: nothing else runs under this umask), then given its group
        // and mode before anyone can connect: it is never reachable more widely than `mode`.
        mode_t old = umask(0177);
        a.bind(local::endpoint(path), ec);
        umask(old);
    }
    if (!ec && gid && chown(path.c_str(), static_cast<uid_t>(-1), *gid) != 0) {
        ec.assign(errno, boost::system::system_category());
    }
    if (!ec && chmod(path.c_str(), mode) != 0) {
        ec.assign(errno, boost::system::system_category());
    }
    if (!ec) {
        a.listen(boost::asio::socket_base::max_listen_connections, ec);
    }
    if (ec) {
        return {Errc::internal, "cannot listen on " + path + ": " + ec.message()};
    }
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

void HttpServer::set_admins(const core::AdminGroup* admins) {
    impl_->admins = admins;
}

void HttpServer::set_allowed_origins(std::vector<std::string> origins) {
    impl_->allowed_origins = std::move(origins);
}

void HttpServer::close() {
    impl_->closed = true;
    impl_->unix_retry.cancel();
    impl_->tcp_retry.cancel();
    boost::system::error_code ec;
    impl_->unix_acceptor.close(ec);
    impl_->tcp_acceptor.close(ec);
}

size_t HttpServer::connections() const {
    return impl_->sessions;
}

std::vector<RefusedConnections> HttpServer::refused() const {
    std::vector<RefusedConnections> out;
    for (const auto& [key, n] : impl_->refusals) {
        out.push_back({key.first, key.second, n});
    }
    return out;
}

}  // namespace hangar::api
