#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/quotas.hpp"

namespace hangar::daemon {

struct Options {
    std::string state_dir;  // default: /var/lib/hangar (root), else $XDG_STATE_HOME/hangar
    std::string listen = "127.0.0.1:8443";
    std::string socket;  // default: <state dir>/hangar.sock
    // Mode of the unix socket; default 0666 as root (every request is authorized by the
    // peer's uid, as on the D-Bus system bus), 0600 for a user's own hangard.
    uint32_t socket_mode = 0;
    bool socket_mode_set = false;
    std::string socket_group;            // its group (default: the daemon's)
    uint32_t auth_timeout_ms = 5000;     // TCP: TLS handshake + first request, unauthenticated
    uint32_t connections_per_uid = 128;  // per listener
    uint32_t console_viewers = 64;       // per console
    std::string dbus;  // none|session|system|ADDRESS; default: system when reachable
    std::string tls_cert, tls_key;
    std::string accel = "auto";  // auto|kvm|tcg
    std::string image_ca;        // extra CA file (PEM) trusted for image servers
    // Image servers non-admins may pull from, by name; "none" clears the list.
    std::map<std::string, std::string> image_remotes = {
        {"images", "https://images.linuxcontainers.org/"}};
    // Origins (scheme://host[:port]) besides hangard's own whose pages may open WebSockets.
    std::vector<std::string> allowed_origins;
    bool machined = true;  // register VMs with systemd-machined on the --dbus bus
    bool insecure_http = false;
    std::string log_level = "info";
    bool foreground = false;
    bool test_hooks = false;  // the test suite's fault routes (api/test_routes.hpp)
    std::string qemu = "qemu-system-x86_64";
    std::string guest_dir;  // default: found next to the executable or under share/
    uint32_t qmp_timeout_ms = 5000;
    uint32_t event_ring = 10000;
    std::string admin_group = "hangar-admin";  // its members manage every machine
    std::string spool_dir;  // wirt's file spool: DIR/UID, one tree per user; "" = off
    // Per-owner quotas (--quota-*; root and admins are exempt); defaults in core::QuotaLimits.
    core::QuotaLimits quotas;
};

// 0: run; 1: printed help or version, exit 0; 2: usage error (message in `err`).
int parse_options(int argc, char** argv, Options& opts, std::string& err);
std::string usage();

}  // namespace hangar::daemon
