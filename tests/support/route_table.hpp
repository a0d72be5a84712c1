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

#include "api/browser_access.hpp"
#include "api/console_routes.hpp"
#include "api/handlers.hpp"
#include "core/credentials.hpp"
#include "core/event_bus.hpp"
#include "core/health.hpp"
#include "core/operations.hpp"
#include "support/machines.hpp"

namespace hangar::test_support {

struct RouteTable {
    std::filesystem::path dir;
    boost::asio::io_context io;
    store::Db db;
    std::unique_ptr<core::EventBus> events;
    std::unique_ptr<core::Templates> templates;
    std::unique_ptr<core::Pools> pools;
    std::unique_ptr<TestMachines> runtimes;  // and the Machines over them
    core::Machines* machines = nullptr;
    std::unique_ptr<core::Credentials> credentials;
    std::unique_ptr<core::Operations> operations;
    std::unique_ptr<core::Images> images;
    std::unique_ptr<core::Disks> disks;
    std::unique_ptr<core::Snapshots> snapshots;
    std::unique_ptr<core::Clones> clones;
    std::unique_ptr<core::Consoles> consoles;
    std::unique_ptr<core::Health> health;
    api::Router router;
    api::ServerInfo info;
    api::Probes probes;
    api::Tickets tickets;

    explicit RouteTable(const std::string& tag) {
        dir = std::filesystem::temp_directory_path() /
              ("hangar-" + tag + "-" + std::to_string(getpid()));
        std::filesystem::remove_all(dir);
        std::filesystem::create_directories(dir / "machines");
        if (!db.open((dir / "hangar.db").string(), nullptr).ok()) {
            abort();
        }
        events = std::make_unique<core::EventBus>(db, 64);
        templates = std::make_unique<core::Templates>(db, *events);
        runtimes =
            std::make_unique<TestMachines>(io, db, *events, dir / "machines", templates.get());
        machines = runtimes->machines.get();
        credentials = std::make_unique<core::Credentials>(db);
        operations = std::make_unique<core::Operations>(io, *events, db, *machines);
        images = std::make_unique<core::Images>(io, db, *events, *operations,
                                                (dir / "images").string(), nullptr);
        info.state_dir = dir;
        health = std::make_unique<core::Health>("qemu-system-x86_64", "", dir.string());
        info.health = health.get();
        api::register_routes(router, *machines, *credentials, *operations, *images, info, probes);
        api::register_template_routes(router, *templates);
        pools = std::make_unique<core::Pools>(db, dir.string());
        if (!pools->load().ok()) {
            abort();
        }
        api::register_pool_routes(router, *pools);
        disks = std::make_unique<core::Disks>(io, db, *events, *pools, *images, *machines);
        api::register_disk_routes(router, *disks, *machines);
        snapshots = std::make_unique<core::Snapshots>(io, db, *events, *machines, *disks, *images);
        api::register_snapshot_routes(router, *snapshots, *machines, *operations);
        clones = std::make_unique<core::Clones>(io, *machines, *disks, *snapshots, *images,
                                                dir / "machines");
        api::register_clone_route(router, *clones, *machines, *operations);
        consoles = std::make_unique<core::Consoles>(io, *machines, *events);
        api::register_console_routes(router, *consoles, *machines);
        api::register_display_routes(router, *machines, io, tickets);
    }
    ~RouteTable() {
        consoles.reset();
        clones.reset();
        snapshots.reset();
        disks.reset();
        images.reset();
        operations.reset();
        credentials.reset();
        runtimes.reset();
        pools.reset();
        templates.reset();
        events.reset();
        std::filesystem::remove_all(dir);
    }
};

}  // namespace hangar::test_support
