// libFuzzer target: bytes from a client, through what a session does with them — Beast's
// request parser with the server's limits, target parsing, and dispatch on the daemon's real
// route table (handlers, body parsers and the core behind them, on a scratch state dir).
#include <unistd.h>

#include <cstdint>
#include <filesystem>
#include <memory>

#include <boost/asio/io_context.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/string_body.hpp>

#include "api/handlers.hpp"
#include "api/http_server.hpp"
#include "core/credentials.hpp"
#include "core/event_bus.hpp"
#include "core/operations.hpp"

using namespace hangar;
namespace http = boost::beast::http;

namespace {
struct World {
    std::filesystem::path dir;
    boost::asio::io_context io;
    store::Db db;
    std::unique_ptr<core::EventBus> events;
    std::unique_ptr<core::Machines> machines;
    std::unique_ptr<core::Credentials> credentials;
    std::unique_ptr<core::Operations> operations;
    api::Router router;
    api::ServerInfo info;
    api::Probes probes;

    World() {
        dir = std::filesystem::temp_directory_path() /
              ("hangar-fuzz-http-" + std::to_string(getpid()));
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir / "machines");
        if (!db.open((dir / "hangar.db").string(), nullptr).ok()) {
            abort();
        }
        events = std::make_unique<core::EventBus>(db, 64);
        core::MachinesConfig cfg;
        cfg.machines_dir = dir / "machines";
        cfg.qemu.binary = "/nonexistent/qemu";  // actions fail fast instead of running QEMU
        machines = std::make_unique<core::Machines>(io, db, *events, cfg);
        credentials = std::make_unique<core::Credentials>(db);
        operations = std::make_unique<core::Operations>(*events);
        info.state_dir = dir;
        api::register_routes(router, *machines, *credentials, *operations, info, probes);
    }
    ~World() { std::filesystem::remove_all(dir); }
};
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    static World world;
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
