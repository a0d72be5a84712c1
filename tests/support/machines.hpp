#pragma once
// core::Machines over the daemon's real runtimes on a scratch machines directory, for tests
// that need the core without listeners. QEMU is a path that does not exist, so starts fail
// fast instead of starting anything; containers have no host.
#include <filesystem>
#include <memory>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/machines.hpp"
#include "drivers/nspawn/runtime.hpp"
#include "drivers/qemu/runtime.hpp"

namespace hangar::test_support {

struct TestMachines {
    std::unique_ptr<qemu::QemuRuntime> vms;
    std::unique_ptr<nspawn::NspawnRuntime> containers;
    std::unique_ptr<core::Machines> machines;

    TestMachines(boost::asio::io_context& io, store::Db& db, core::EventBus& events,
                 const std::filesystem::path& machines_dir,
                 const core::Templates* templates = nullptr) {
        core::MachinesConfig cfg;
        cfg.machines_dir = machines_dir;
        cfg.templates = templates;
        qemu::RuntimeConfig vm_cfg;
        vm_cfg.machines_dir = machines_dir;
        vm_cfg.qemu.binary = "/nonexistent/qemu";
        vms = std::make_unique<qemu::QemuRuntime>(io, vm_cfg);
        containers = std::make_unique<nspawn::NspawnRuntime>(io, machines_dir);
        machines = std::make_unique<core::Machines>(
            io, db, events, cfg, std::vector<core::Runtime*>{vms.get(), containers.get()});
    }
};

}  // namespace hangar::test_support
