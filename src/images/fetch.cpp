// Boost 1.74's awaitable needs <utility> first.
#include <utility>

#include "images/fetch.hpp"

#include <fcntl.h>
#include <openssl/ssl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <exception>
#include <stdexcept>

#include <spdlog/spdlog.h>
#include <boost/asio/awaitable.hpp>
#include <boost/asio/co_spawn.hpp>
#include <boost/asio/redirect_error.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/use_awaitable.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>

#include "util/process.hpp"

namespace hangar::images {

namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using asio::awaitable;
using asio::use_awaitable;
using tcp = asio::ip::tcp;

struct Url {
    bool tls = false;
    std::string host, port, target;
};

bool parse_url(const std::string& url, Url& u) {
    std::string_view rest;
    if (url.rfind("https://", 0) == 0) {
        u.tls = true;
        rest = std::string_view(url).substr(8);
    } else if (url.rfind("http://", 0) == 0) {
        rest = std::string_view(url).substr(7);
    } else {
        return false;
    }
    size_t slash = rest.find('/');
    std::string_view authority = rest.substr(0, slash);
    u.target = slash == std::string_view::npos ? "/" : std::string(rest.substr(slash));
    if (authority.empty() || authority.find('@') != std::string_view::npos) {
        return false;
    }
    if (authority.front() == '[') {  // [v6]:port
        size_t close = authority.find(']');
        if (close == std::string_view::npos) {
            return false;
        }
        u.host = authority.substr(1, close - 1);
        authority.remove_prefix(close + 1);
        if (!authority.empty() && authority.front() != ':') {
            return false;
        }
        u.port = authority.empty() ? "" : std::string(authority.substr(1));
    } else {
        size_t colon = authority.rfind(':');
        u.host = authority.substr(0, colon);
        u.port = colon == std::string_view::npos ? "" : std::string(authority.substr(colon + 1));
    }
    if (u.port.empty()) {
        u.port = u.tls ? "443" : "80";
    }
    return !u.host.empty() && u.port.find_first_not_of("0123456789") == std::string::npos &&
           u.port.size() <= 5;
}

// Where a redirect leads: an absolute URL, or a path on the same server.
std::string resolve_location(const Url& from, std::string_view location) {
    if (location.rfind("https://", 0) == 0 || location.rfind("http://", 0) == 0) {
        return std::string(location);
    }
    std::string host = from.host.find(':') != std::string::npos ? "[" + from.host + "]" : from.host;
    std::string base = (from.tls ? "https://" : "http://") + host + ":" + from.port;
    if (!location.empty() && location.front() == '/') {
        return base + std::string(location);
    }
    std::string dir = from.target.substr(0, from.target.rfind('/') + 1);
    return base + dir + std::string(location);
}

// The first address `getent ahosts HOST` prints, run as a child so the reactor never blocks.
awaitable<asio::ip::address> resolve(asio::io_context& io, const std::string& host) {
    boost::system::error_code ec;
    auto addr = asio::ip::make_address(host, ec);
    if (!ec) {
        co_return addr;
    }
    if (host == "localhost") {
        co_return asio::ip::make_address("127.0.0.1");
    }
    std::string out = co_await asio::async_initiate<const asio::use_awaitable_t<>,
                                                    void(boost::system::error_code, std::string)>(
        [&io, host](auto handler) {
            // The handler is move-only; the callback must be copyable.
            auto h = std::make_shared<decltype(handler)>(std::move(handler));
            run_command(io, {"getent", "ahosts", host}, 64 * 1024,
                        [h](const Status& st, const ExitInfo& ex, std::string out) {
                            if (!st || ex.code != 0 || ex.signal != 0) {
                                out.clear();
                            }
                            std::move (*h)(boost::system::error_code{}, std::move(out));
                        });
        },
        use_awaitable);
    std::string first = out.substr(0, out.find_first_of(" \t\n"));
    addr = asio::ip::make_address(first, ec);
    if (first.empty() || ec) {
        throw std::runtime_error("cannot resolve host " + host);
    }
    co_return addr;
}

// One attempt's outcome.
struct Outcome {
    Status status;
    bool retry = false;    // a transport failure worth another attempt
    std::string redirect;  // follow this URL instead
    std::string body;      // for requests into memory
};

struct Request {
    std::string url;
    size_t limit = 0;  // into memory, at most this many bytes
    std::string path;  // or into this file
    core::Transfer::Progress progress;
    core::Transfer::Control ctl;
    bool cancelled() const { return ctl.cancelled && *ctl.cancelled; }
};

class Transfer final : public core::Transfer {
  public:
    Transfer(asio::io_context& io, FetchOptions opts)
        : io_(io), opts_(std::move(opts)), ctx_(asio::ssl::context::tls_client) {
        ctx_.set_default_verify_paths();
        if (!opts_.ca_file.empty()) {
            boost::system::error_code ec;
            ctx_.load_verify_file(opts_.ca_file, ec);
            if (ec) {
                spdlog::error("images: cannot load CA file {}: {}", opts_.ca_file, ec.message());
            }
        }
        ctx_.set_verify_mode(asio::ssl::verify_peer);
        SSL_CTX_set_min_proto_version(ctx_.native_handle(), TLS1_2_VERSION);
    }
    ~Transfer() override { *alive_ = false; }

    void get(const std::string& url, size_t limit, const Control& ctl, Got done) override {
        Request r;
        r.url = url;
        r.limit = limit;
        r.ctl = ctl;
        start(std::move(r), [done = std::move(done)](const Status& st, std::string body) {
            done(st, std::move(body));
        });
    }

    void download(const std::string& url, const std::string& path, const Control& ctl,
                  Progress progress, std::function<void(const Status&)> done) override {
        Request r;
        r.url = url;
        r.path = path;
        r.ctl = ctl;
        r.progress = std::move(progress);
        start(std::move(r), [done = std::move(done)](const Status& st, std::string) { done(st); });
    }

  private:
    using Done = std::function<void(const Status&, std::string)>;

    void start(Request r, Done done) {
        // What escapes run() is a bug: on to the reactor, which ends the daemon
        // (util/reactor.hpp); asio::detached would drop it.
        asio::co_spawn(io_, run(std::move(r), std::move(done), alive_), [](std::exception_ptr e) {
            if (e) {
                std::rethrow_exception(e);
            }
        });
    }

    awaitable<void> run(Request r, Done done, std::shared_ptr<bool> alive) {
        Outcome out;
        std::string url = r.url;
        auto delay = opts_.retry_delay;
        int redirects = 0;
        if (r.ctl.allow) {
            if (Status st = r.ctl.allow(url); !st) {
                done(st, {});
                co_return;
            }
        }
        for (int attempt = 1;;) {
            if (r.cancelled()) {
                out = Outcome{{Errc::conflict, "cancelled"}, false, {}, {}};
                break;
            }
            try {
                out = co_await once(r, url);
            } catch (const std::runtime_error& e) {
                // Asio's and Beast's system_error (use_awaitable), resolve()'s failure.
                out = Outcome{{Errc::unavailable, e.what()}, true, {}, {}};
            }
            if (!*alive) {
                co_return;
            }
            if (!out.redirect.empty()) {
                if (++redirects > 5) {
                    out.status = {Errc::unavailable, "too many redirects from " + r.url};
                    break;
                }
                if (r.ctl.allow) {
                    if (Status st = r.ctl.allow(out.redirect); !st) {
                        out.status = {st.code(), "redirected to " + out.redirect +
                                                     ", which is refused: " + st.message()};
                        break;
                    }
                }
                url = out.redirect;
                continue;
            }
            if (out.status || !out.retry || attempt >= opts_.attempts) {
                break;
            }
            spdlog::warn("images: {} (attempt {} of {}): {}; trying again", url, attempt,
                         opts_.attempts, out.status.message());
            ++attempt;
            asio::steady_timer t(io_, delay);
            co_await t.async_wait(use_awaitable);
            delay *= 2;
            if (!*alive) {
                co_return;
            }
        }
        if (!out.status) {
            out.status = {out.status.code(), url + ": " + out.status.message()};
        }
        done(out.status, std::move(out.body));
    }

    awaitable<Outcome> once(Request& r, const std::string& url) {
        Url u;
        if (!parse_url(url, u)) {
            co_return Outcome{{Errc::bad_request, "not an http(s) URL"}, false, {}, {}};
        }
        auto addr = co_await resolve(io_, u.host);
        tcp::endpoint ep(addr, static_cast<unsigned short>(std::stoul(u.port)));
        if (!u.tls) {
            beast::tcp_stream stream(io_);
            stream.expires_after(opts_.connect_timeout);
            co_await stream.async_connect(ep, use_awaitable);
            co_return co_await exchange(stream, r, u);
        }
        beast::ssl_stream<beast::tcp_stream> stream(io_, ctx_);
        boost::system::error_code ec;
        asio::ip::make_address(u.host, ec);
        if (ec && !SSL_set_tlsext_host_name(stream.native_handle(), u.host.c_str())) {
            co_return Outcome{{Errc::internal, "cannot set the TLS server name"}, false, {}, {}};
        }
        stream.set_verify_callback(asio::ssl::host_name_verification(u.host));
        beast::get_lowest_layer(stream).expires_after(opts_.connect_timeout);
        co_await beast::get_lowest_layer(stream).async_connect(ep, use_awaitable);
        co_await stream.async_handshake(asio::ssl::stream_base::client,
                                        asio::redirect_error(use_awaitable, ec));
        if (ec) {
            // A certificate that does not verify will not verify on the next attempt either.
            bool cert = ec.category() == asio::error::get_ssl_category();
            co_return Outcome{
                {Errc::unavailable, "TLS handshake failed: " + ec.message()}, !cert, {}, {}};
        }
        co_return co_await exchange(stream, r, u);
    }

    template <class Stream>
    awaitable<Outcome> exchange(Stream& stream, Request& r, const Url& u) {
        auto& tcp_layer = beast::get_lowest_layer(stream);
        // Resume what an earlier attempt left.
        uint64_t offset = 0;
        if (!r.path.empty()) {
            struct stat sb {};
            if (::stat(r.path.c_str(), &sb) == 0) {
                offset = static_cast<uint64_t>(sb.st_size);
            }
        }
        http::request<http::empty_body> req{http::verb::get, u.target, 11};
        bool default_port = u.port == (u.tls ? "443" : "80");
        std::string host = u.host.find(':') != std::string::npos ? "[" + u.host + "]" : u.host;
        req.set(http::field::host, default_port ? host : host + ":" + u.port);
        req.set(http::field::user_agent, "hangar");
        req.set(http::field::accept_encoding, "identity");
        req.set(http::field::connection, "close");
        if (offset > 0) {
            req.set(http::field::range, "bytes=" + std::to_string(offset) + "-");
        }
        tcp_layer.expires_after(opts_.idle_timeout);
        co_await http::async_write(stream, req, use_awaitable);

        beast::flat_buffer buf;
        http::response_parser<http::buffer_body> parser;
        // Not boost::none: Boost 1.74 compares a Content-Length with "none" as greater.
        parser.body_limit(std::numeric_limits<std::uint64_t>::max());
        parser.header_limit(64 * 1024);
        tcp_layer.expires_after(opts_.idle_timeout);
        co_await http::async_read_header(stream, buf, parser, use_awaitable);
        auto& res = parser.get();
        int status = res.result_int();
        if (status >= 300 && status < 400 && status != 304) {
            auto loc = res.find(http::field::location);
            if (loc == res.end()) {
                co_return Outcome{
                    {Errc::unavailable, "a redirect without Location"}, false, {}, {}};
            }
            auto v = loc->value();
            co_return Outcome{{}, false, resolve_location(u, std::string(v.data(), v.size())), {}};
        }
        if (status == 416 && offset > 0) {
            // The partial file is no prefix of this one: start over.
            if (int fd = ::open(r.path.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC); fd >= 0) {
                ::close(fd);
            }
            co_return Outcome{{Errc::unavailable, "the server refused to resume"}, true, {}, {}};
        }
        if (status == 404) {
            co_return Outcome{{Errc::not_found, "not found (HTTP 404)"}, false, {}, {}};
        }
        if (status != 200 && status != 206) {
            co_return Outcome{
                {Errc::unavailable, "HTTP " + std::to_string(status)}, status >= 500, {}, {}};
        }
        if (status == 200) {
            offset = 0;  // the whole file again
        }
        uint64_t total = 0;
        if (auto len = parser.content_length()) {
            total = offset + *len;
            if (r.path.empty() && *len > r.limit) {
                co_return Outcome{
                    {Errc::too_large, "larger than " + std::to_string(r.limit) + " bytes"},
                    false,
                    {},
                    {}};
            }
        }
        int fd = -1;
        if (!r.path.empty()) {
            int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (offset > 0 ? O_APPEND : O_TRUNC);
            fd = ::open(r.path.c_str(), flags, 0600);
            if (fd < 0) {
                co_return Outcome{{Errc::internal,
                                   "cannot write " + r.path + ": " + std::string(strerror(errno))},
                                  false,
                                  {},
                                  {}};
            }
        }
        struct Closer {
            int fd;
            ~Closer() {
                if (fd >= 0) {
                    ::close(fd);
                }
            }
        } closer{fd};
        Outcome out;
        uint64_t bytes = offset;
        static constexpr size_t kChunk = 64 * 1024;
        std::unique_ptr<char[]> chunk(new char[kChunk]);
        while (!parser.is_done()) {
            res.body().data = chunk.get();
            res.body().size = kChunk;
            boost::system::error_code ec;
            tcp_layer.expires_after(opts_.idle_timeout);
            co_await http::async_read(stream, buf, parser, asio::redirect_error(use_awaitable, ec));
            size_t n = kChunk - res.body().size;
            if (n > 0) {
                if (fd >= 0) {
                    for (size_t off = 0; off < n;) {
                        ssize_t w = ::write(fd, chunk.get() + off, n - off);
                        if (w < 0 && errno == EINTR) {
                            continue;
                        }
                        if (w <= 0) {
                            co_return Outcome{{Errc::internal, "cannot write " + r.path + ": " +
                                                                   std::string(strerror(errno))},
                                              false,
                                              {},
                                              {}};
                        }
                        off += static_cast<size_t>(w);
                    }
                } else {
                    if (out.body.size() + n > r.limit) {
                        co_return Outcome{
                            {Errc::too_large, "larger than " + std::to_string(r.limit) + " bytes"},
                            false,
                            {},
                            {}};
                    }
                    out.body.append(chunk.get(), n);
                }
                bytes += n;
                if (r.cancelled()) {
                    co_return Outcome{{Errc::conflict, "cancelled"}, false, {}, {}};
                }
                if (r.progress) {
                    r.progress(bytes, total);
                }
            }
            if (ec == http::error::need_buffer) {
                continue;
            }
            if (ec) {
                co_return Outcome{
                    {Errc::unavailable, "the transfer broke off after " + std::to_string(bytes) +
                                            " bytes: " + ec.message()},
                    true,
                    {},
                    std::move(out.body)};
            }
        }
        co_return out;
    }

    asio::io_context& io_;
    FetchOptions opts_;
    asio::ssl::context ctx_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace

std::unique_ptr<core::Transfer> make_transfer(asio::io_context& io, FetchOptions opts) {
    return std::make_unique<Transfer>(io, std::move(opts));
}

}  // namespace hangar::images
