#pragma once
// A client connection to a bus over raw sd-bus, pumped on the daemon's reactor: connect to
// "system", "session" or an address; asynchronous calls whose replies are dropped once the
// connection they were sent on is gone; asynchronous match rules; reconnection with Backoff.
// Machined (machined's registry) and Units (systemd's container units) each hold one.
#include <systemd/sd-bus.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>

#include "dbus/pump.hpp"

namespace hangar::dbus {

// A reply (or error: `err` set) to one asynchronous call.
using Reply = std::function<void(sd_bus_message* reply, const sd_bus_error* err)>;

std::string error_text(const sd_bus_error* err);
bool error_is(const sd_bus_error* err, const char* name);
// sd_bus_path_encode(prefix, name); "" when it fails.
std::string object_path(const char* prefix, const std::string& name);

class RawClient : public std::enable_shared_from_this<RawClient> {
  public:
    // `what` names the client in logs ("machined", "systemd").
    RawClient(boost::asio::io_context& io, std::string address, std::string what);
    virtual ~RawClient();

    // Connects now; on failure retries with backoff.
    void connect();
    // Closes the connection (no callbacks afterwards).
    void teardown();
    // The connection failed: torn down on the next turn, then connected again after a delay.
    void lost(const std::string& why);

  protected:
    // Connected: install matches and start listing. `connect()` has attached the pump.
    virtual void connected() = 0;
    // The connection is being closed; answer whatever is owed.
    virtual void closing() {}

    // A method call that never auto-starts its destination: nullptr when the bus refuses.
    sd_bus_message* method(const char* dest, const std::string& path, const char* iface,
                           const char* member);
    // Sends `m` (taking it; nullptr counts as a failure to build it); `fn` runs with the reply
    // unless the connection is gone by then.
    void send(sd_bus_message* m, Reply fn, uint64_t timeout_usec = 5'000'000);
    // Installs a match rule asynchronously; `handler` gets this RawClient as its userdata. A
    // refused rule loses the connection.
    bool add_match(const std::string& rule, sd_bus_message_handler_t handler);
    // Calls Properties.Get(iface, property) of `path` at `dest`.
    void get_property(const char* dest, const std::string& path, const char* iface,
                      const char* property, Reply fn, uint64_t timeout_usec);

    boost::asio::io_context& io_;
    std::string address_;
    std::string what_;
    sd_bus* bus_ = nullptr;
    std::shared_ptr<Pump> pump_;
    Backoff backoff_;
    uint64_t conn_gen_ = 0;  // identifies the connection; replies from older ones are dropped
    std::string state_ = "not connected yet";
};

}  // namespace hangar::dbus
