#pragma once
// Containers' units in systemd (org.freedesktop.systemd1) and their machines in machined, over
// raw sd-bus on the daemon's reactor: the ContainerHost of nspawn::NspawnRuntime.
//
// A container runs as the transient service hangar-NAME.service (StartTransientUnit), whose
// systemd-nspawn registers the container with machined itself. hangard subscribes to systemd
// (Subscribe; PropertiesChanged of units, JobRemoved, the owner of systemd's name) and reports
// each hangar unit's change to the runtime: the Service interface's change (Result, ExecMain*,
// MainPID) comes first, then the Unit interface's (ActiveState), which is when it is reported.
// On every (re)connection each container's unit is looked up once (GetUnit + GetAll), which is
// how containers are adopted after a hangard restart. Calls made while a subscription is in
// flight wait for its answer.
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "drivers/nspawn/runtime.hpp"

namespace hangar::dbus {

class Units {
  public:
    // `address`: "system", "session" or a D-Bus address ("unix:path=...").
    Units(boost::asio::io_context& io, nspawn::NspawnRuntime& runtime, std::string address);
    ~Units();
    // Connects and reports every container's unit; call once the machines are loaded.
    // `settled` runs once, when every container's unit has been reported after the first
    // subscription, or when that first connection or subscription failed.
    void start(std::function<void()> settled = {});
    nspawn::ContainerHost* host();
    bool healthy(std::string& detail) const;

    struct Impl;

  private:
    std::shared_ptr<Impl> impl_;
};

}  // namespace hangar::dbus
