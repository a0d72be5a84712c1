#pragma once
// hangar's own D-Bus service (org.hangar) on the daemon's one reactor: the bus fd is watched
// with async_wait and sd-bus's timeout with a timer; every request is processed on the loop
// and no call waits for a reply on it (name acquisition and caller credentials are asynchronous
// calls too). Losing the bus is logged and retried; every object is exported again.
// sdbus-c++ stays inside the .cpp.
#include <memory>
#include <optional>
#include <string>

#include <boost/asio/io_context.hpp>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "core/operations.hpp"

namespace hangar::core {
class AdminGroup;
}
namespace hangar::dbus {

class Service {
  public:
    // `address`: "system", "session" or a D-Bus address ("unix:path=...").
    Service(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
            core::Operations& operations, std::string address, const core::AdminGroup* admins);
    ~Service();
    void start();
    // Connected and owning org.hangar; `detail` says how it stands either way.
    bool healthy(std::string& detail) const;

    struct Impl;

  private:
    std::shared_ptr<Impl> impl_;
};

// "/org/hangar/machine/" + the name escaped like sd_bus_path_encode ("web-1" → "web_2d1").
std::string machine_path(const std::string& name);
// "/org/hangar/operation/" + the id escaped the same way ("op-1f" → "op_2d1f").
std::string operation_path(const std::string& id);

}  // namespace hangar::dbus
