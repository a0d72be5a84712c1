#pragma once
// The daemon's health: a list of checks, each filled by a probe when asked, and the verdict
// over them. The faces render a report (GET /v1/health); they decide nothing.
#include <functional>
#include <string>
#include <vector>

#include "core/machines.hpp"

namespace hangar::core {

struct HealthCheck {
    std::string name;
    bool required = false;  // its failure makes the daemon degraded
    bool ok = false;
    std::string detail;         // for authenticated callers (paths, addresses)
    std::string public_detail;  // for anonymous ones: the verdict in words
};

struct HealthReport {
    bool ok = true;  // false: degraded (a required check failed)
    std::vector<HealthCheck> checks;
    const char* status() const { return ok ? "ok" : "degraded"; }
};

class Health {
  public:
    // A probe fills `ok` and the details of its check.
    using Probe = std::function<void(HealthCheck&)>;
    // Whether org.hangar is served on D-Bus, and how it stands.
    using BusProbe = std::function<bool(std::string& detail)>;

    // The checks, in this order: qemu (found; required), store (the state dir writable;
    // required), guest (the built-in guest present), dbus (served; "not served" until
    // set_bus()). `qemu_binary` is looked for in PATH at each report; `guest_kernel` is the
    // built-in guest's kernel ("" when none was found).
    Health(std::string qemu_binary, std::string guest_kernel, std::string state_dir);
    Health(const Health&) = delete;
    Health& operator=(const Health&) = delete;
    void set_bus(BusProbe probe) { bus_ = std::move(probe); }
    // Adds a check after those.
    void add(std::string name, bool required, Probe probe);
    // Runs every check in order. Anonymous callers get the public details only.
    HealthReport report(const Caller& caller) const;

  private:
    struct Entry {
        std::string name;
        bool required;
        Probe probe;
    };
    std::vector<Entry> checks_;
    BusProbe bus_;
};

}  // namespace hangar::core
