#include "core/health.hpp"

#include <unistd.h>

#include <string_view>

#include "util/process.hpp"

namespace hangar::core {

Health::Health(std::string qemu_binary, std::string guest_kernel, std::string state_dir) {
    add("qemu", true, [qemu = std::move(qemu_binary)](HealthCheck& c) {
        std::string path = find_program(qemu);
        c.ok = !path.empty();
        c.detail = c.ok ? path : qemu + " not found";
        c.public_detail = c.ok ? "found" : "not found";
    });
    add("store", true, [dir = std::move(state_dir)](HealthCheck& c) {
        c.ok = access(dir.c_str(), W_OK) == 0;
        c.detail = dir;
        c.public_detail = c.ok ? "writable" : "not writable";
    });
    add("guest", false, [kernel = std::move(guest_kernel)](HealthCheck& c) {
        c.ok = !kernel.empty();
        c.detail = c.ok ? kernel : "built-in guest not found";
        c.public_detail = c.ok ? "present" : "built-in guest not found";
    });
    add("dbus", false, [this](HealthCheck& c) {
        c.detail = "not served";
        c.ok = bus_ && bus_(c.detail);
        c.public_detail = c.ok ? "served" : "not served";
    });
}

void Health::add(std::string name, bool required, Probe probe) {
    checks_.push_back({std::move(name), required, std::move(probe)});
}

HealthReport Health::report(const Caller& caller) const {
    // Paths and addresses are for authenticated callers.
    bool anonymous = std::string_view(caller.method) == "anonymous";
    HealthReport r;
    for (const auto& e : checks_) {
        HealthCheck c;
        c.name = e.name;
        c.required = e.required;
        e.probe(c);
        if (anonymous) {
            c.detail = c.public_detail;
        }
        r.ok = r.ok && (c.ok || !c.required);
        r.checks.push_back(std::move(c));
    }
    return r;
}

}  // namespace hangar::core
