#pragma once
// The daemon's real route table over a real core on a scratch state dir (removed again), for
// tests that drive the router without listeners. QEMU is a path that does not exist, so
// actions fail fast instead of starting anything.
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "api/handlers.hpp"
#include "core/credentials.hpp"
#include "core/event_bus.hpp"
#include "core/operations.hpp"

namespace hangar::test_support {

struct RouteTable {
    std::filesystem::path dir;
    boost::asio::io_context io;
    store::Db db;
    std::unique_ptr<core::EventBus> events;
    std::unique_ptr<core::Machines> machines;
    std::unique_ptr<core::Credentials> credentials;
    std::unique_ptr<core::Operations> operations;
    std::unique_ptr<core::Images> images;
    api::Router router;
    api::ServerInfo info;
    api::Probes probes;

    explicit RouteTable(const std::string& tag) {
        dir = std::filesystem::temp_directory_path() /
              ("hangar-" + tag + "-" + std::to_string(getpid()));
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir / "machines");
        if (!db.open((dir / "hangar.db").string(), nullptr).ok()) {
            abort();
        }
        events = std::make_unique<core::EventBus>(db, 64);
        core::MachinesConfig cfg;
        cfg.machines_dir = dir / "machines";
        cfg.qemu.binary = "/nonexistent/qemu";
        machines = std::make_unique<core::Machines>(io, db, *events, cfg);
        credentials = std::make_unique<core::Credentials>(db);
        operations = std::make_unique<core::Operations>(*events);
        images = std::make_unique<core::Images>(io, db, *events, *operations,
                                                (dir / "images").string(), nullptr);
        info.state_dir = dir;
        api::register_routes(router, *machines, *credentials, *operations, *images, info, probes);
    }
    ~RouteTable() {
        images.reset();
        operations.reset();
        credentials.reset();
        machines.reset();
        events.reset();
        std::filesystem::remove_all(dir);
    }
};

}  // namespace hangar::test_support
