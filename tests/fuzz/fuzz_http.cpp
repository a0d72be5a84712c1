// libFuzzer target: bytes from a client, through what a session does with them — Beast's
// request parser with the server's limits, target parsing, and dispatch on the daemon's real
// route table (handlers, body parsers and the core behind them, on a scratch state dir).
#include <cstdint>

#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "api/http_server.hpp"
#include "support/route_table.hpp"

using namespace hangar;
namespace http = boost::beast::http;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static test_support::RouteTable world("fuzz-http");
    api::ServerLimits limits;
    http::request_parser<http::string_body> parser;
    parser.header_limit(static_cast<uint32_t>(limits.header_limit));
    parser.body_limit(limits.body_limit);
    parser.eager(true);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(data, size), ec);
    if (ec || !parser.is_done()) {
        return 0;
    }
    auto& msg = parser.get();
    api::Request req;
    req.method = std::string(msg.method_string());
    if (!api::parse_target(std::string(msg.target()), req.path, req.query)) {
        return 0;
    }
    // Alternate between an admin and an ordinary local user.
    req.caller = core::Caller{size % 2 ? 0u : 1000u, size % 2 == 1, true};
    req.body = std::move(msg.body());
    bool answered = false;
    world.router.dispatch(std::move(req), [&answered](api::Response res) {
        if (res.status < 100 || res.status > 599) {
            abort();
        }
        answered = true;
    });
    world.io.poll();
    world.db.flush();
    (void)answered;
    return 0;
}
