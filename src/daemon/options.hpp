#pragma once
#include <cstdint>
#include <string>

namespace hangar::daemon {

struct Options {
    std::string state_dir;  // default: /var/lib/hangar (root), else $XDG_STATE_HOME/hangar
    std::string listen = "127.0.0.1:8443";
    std::string socket;  // default: <state dir>/hangar.sock
    std::string dbus;    // none|session|system|ADDRESS; default: system when reachable
    std::string tls_cert, tls_key;
    std::string accel = "auto";  // auto|kvm|tcg
    std::string image_ca;        // extra CA file (PEM) trusted for image servers
    bool machined = true;        // register VMs with systemd-machined on the --dbus bus
    bool insecure_http = false;
    std::string log_level = "info";
    bool foreground = false;
    std::string qemu = "qemu-system-x86_64";
    std::string guest_dir;  // default: found next to the executable or under share/
    uint32_t qmp_timeout_ms = 5000;
    uint32_t event_ring = 10000;
    std::string admin_group = "hangar-admin";  // its members manage every machine
};

// 0: run; 1: printed help or version, exit 0; 2: usage error (message in `err`).
int parse_options(int argc, char** argv, Options& opts, std::string& err);
std::string usage();

}  // namespace hangar::daemon
