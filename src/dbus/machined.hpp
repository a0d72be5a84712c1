#pragma once
// hangar's VMs in systemd-machined (org.freedesktop.machine1), over sd-bus on the daemon's
// one reactor (its own connection; every call asynchronous, match rules too).
//
// Every VM whose QEMU runs is registered with CreateMachine (class "vm", service "hangar",
// leader = QEMU's PID, id = the machine's UUID); machined moves QEMU into its own
// machine-NAME.scope. When QEMU is gone, hangard terminates the entry. machined's MachineNew,
// MachineRemoved and the owner of its name are watched: subscribe, then list, then reconcile —
// entries of service "hangar" that match no running VM (left by a crashed hangard) are
// terminated, running VMs missing from the list are registered. A TerminateMachine from
// outside becomes the reason of the VM's stop ("machined:terminated").
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "core/event_bus.hpp"
#include "core/machines.hpp"

namespace hangar::dbus {

class Machined {
  public:
    // `address`: "system", "session" or a D-Bus address ("unix:path=...").
    Machined(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
             std::string address);
    ~Machined();
    // Call once the machines are loaded and adopted: reconciling earlier would take adopted
    // VMs for stale entries.
    void start();
    // Whether machined is on the bus and in step; `detail` says how it stands either way.
    bool healthy(std::string& detail) const;

    struct Impl;

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace hangar::dbus
