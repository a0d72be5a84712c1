#include "daemon/options.hpp"

#include <unistd.h>

#include <cstdlib>
#include <iostream>

#include "api/browser_access.hpp"

namespace hangar::daemon {

std::string usage() {
    return "usage: hangard [--state-dir DIR] [--listen ADDR:PORT] [--socket PATH]\n"
           "               [--socket-mode MODE] [--socket-group NAME]\n"
           "               [--auth-timeout-ms N] [--connections-per-uid N] [--console-viewers N]\n"
           "               [--dbus none|session|system|ADDRESS] [--no-machined]\n"
           "               [--tls-cert F --tls-key F] [--allowed-origin ORIGIN]...\n"
           "               [--insecure-http] [--log-level LEVEL] [--foreground]\n"
           "               [--qemu PATH] [--accel auto|kvm|tcg] [--guest-dir DIR]\n"
           "               [--qmp-timeout-ms N] [--image-ca FILE] [--image-remote NAME=URL|none]\n"
           "               [--event-ring N] [--admin-group NAME] [--spool-dir DIR]\n"
           "               [--quota-machines N] [--quota-cpus N] [--quota-memory-mib N]\n"
           "               [--quota-images N] [--quota-disk-gib N] [--test-hooks]\n"
           "               [--help] [--version]\n"
           "Quotas, per non-admin owner (defaults): machines 100, vCPUs 64, memory 262144 MiB,\n"
           "images 50, disk 1024 GiB (images' archives and containers' root file systems).\n"
           "--test-hooks serves the test suite's fault routes (POST /v1/test/throw, admins).\n";
}

int parse_options(int argc, char** argv, Options& o, std::string& err) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        std::string value;
        bool has_inline = false;
        if (auto eq = a.find('='); a.rfind("--", 0) == 0 && eq != std::string::npos) {
            value = a.substr(eq + 1);
            a = a.substr(0, eq);
            has_inline = true;
        }
        auto need = [&](std::string& out) {
            if (has_inline) {
                out = value;
                return true;
            }
            if (i + 1 >= argc) {
                err = a + " needs a value";
                return false;
            }
            out = argv[++i];
            return true;
        };
        auto need_u32 = [&](uint32_t& out, uint32_t min, uint32_t max) {
            std::string v;
            if (!need(v)) {
                return false;
            }
            char* end = nullptr;
            unsigned long n = std::strtoul(v.c_str(), &end, 10);
            if (v.empty() || *end != '\0' || n < min || n > max) {
                err = a + " needs a number from " + std::to_string(min) + " to " +
                      std::to_string(max);
                return false;
            }
            out = static_cast<uint32_t>(n);
            return true;
        };
        auto need_quota = [&](uint64_t& out, uint64_t unit) {
            uint32_t n = 0;
            if (!need_u32(n, 0, UINT32_MAX)) {
                return false;
            }
            out = n * unit;
            return true;
        };
        bool ok = true;
        if (a == "--help" || a == "-h") {
            std::cout << usage();
            return 1;
        } else if (a == "--version") {
            std::cout << "hangard " HANGAR_VERSION "\n";
            return 1;
        } else if (a == "--state-dir") {
            ok = need(o.state_dir);
        } else if (a == "--listen") {
            ok = need(o.listen);
        } else if (a == "--socket") {
            ok = need(o.socket);
        } else if (a == "--socket-mode") {
            std::string v;
            ok = need(v);
            char* end = nullptr;
            unsigned long m = ok ? std::strtoul(v.c_str(), &end, 8) : 0;
            if (ok && (v.empty() || *end != '\0' || m > 0777 || (m & 0600) != 0600)) {
                err = "--socket-mode needs an octal mode from 0600 to 0777 (e.g. 0660)";
                ok = false;
            }
            o.socket_mode = static_cast<uint32_t>(m);
            o.socket_mode_set = ok;
        } else if (a == "--socket-group") {
            ok = need(o.socket_group);
        } else if (a == "--auth-timeout-ms") {
            ok = need_u32(o.auth_timeout_ms, 100, 600000);
        } else if (a == "--connections-per-uid") {
            ok = need_u32(o.connections_per_uid, 1, 100000);
        } else if (a == "--console-viewers") {
            ok = need_u32(o.console_viewers, 1, 1024);
        } else if (a == "--dbus") {
            ok = need(o.dbus);
        } else if (a == "--tls-cert") {
            ok = need(o.tls_cert);
        } else if (a == "--tls-key") {
            ok = need(o.tls_key);
        } else if (a == "--allowed-origin") {
            std::string v;
            ok = need(v);
            if (ok && api::normalize_origin(v).empty()) {
                err = "--allowed-origin needs an origin: http(s)://HOST[:PORT], not " + v;
                ok = false;
            }
            o.allowed_origins.push_back(v);
        } else if (a == "--no-machined") {
            o.machined = false;
        } else if (a == "--insecure-http") {
            o.insecure_http = true;
        } else if (a == "--log-level") {
            ok = need(o.log_level);
            if (ok && o.log_level != "trace" && o.log_level != "debug" && o.log_level != "info" &&
                o.log_level != "warning" && o.log_level != "error") {
                err = "--log-level must be trace, debug, info, warning or error";
                ok = false;
            }
        } else if (a == "--foreground") {
            o.foreground = true;
        } else if (a == "--test-hooks") {
            o.test_hooks = true;
        } else if (a == "--accel") {
            ok = need(o.accel);
            if (ok && o.accel != "auto" && o.accel != "kvm" && o.accel != "tcg") {
                err = "--accel must be auto, kvm or tcg";
                ok = false;
            }
        } else if (a == "--image-ca") {
            ok = need(o.image_ca);
        } else if (a == "--image-remote") {
            std::string v;
            ok = need(v);
            auto eq = v.find('=');
            if (ok && v == "none") {
                o.image_remotes.clear();
            } else if (ok && (eq == 0 || eq == std::string::npos || eq + 1 == v.size())) {
                err = "--image-remote needs NAME=URL (or none)";
                ok = false;
            } else if (ok) {
                o.image_remotes[v.substr(0, eq)] = v.substr(eq + 1);
            }
        } else if (a == "--qemu") {
            ok = need(o.qemu);
        } else if (a == "--admin-group") {
            ok = need(o.admin_group);
        } else if (a == "--spool-dir") {
            ok = need(o.spool_dir);
        } else if (a == "--guest-dir") {
            ok = need(o.guest_dir);
        } else if (a == "--qmp-timeout-ms") {
            ok = need_u32(o.qmp_timeout_ms, 50, 600000);
        } else if (a == "--event-ring") {
            ok = need_u32(o.event_ring, 16, 10000000);
        } else if (a == "--quota-machines") {
            ok = need_quota(o.quotas.machines, 1);
        } else if (a == "--quota-cpus") {
            ok = need_quota(o.quotas.vcpus, 1);
        } else if (a == "--quota-memory-mib") {
            ok = need_quota(o.quotas.memory_mib, 1);
        } else if (a == "--quota-images") {
            ok = need_quota(o.quotas.images, 1);
        } else if (a == "--quota-disk-gib") {
            ok = need_quota(o.quotas.disk_bytes, uint64_t{1} << 30);
        } else {
            err = "unknown option " + a;
            ok = false;
        }
        if (!ok) {
            return 2;
        }
    }
    if (o.tls_cert.empty() != o.tls_key.empty()) {
        err = "--tls-cert and --tls-key go together";
        return 2;
    }
    if (o.state_dir.empty()) {
        if (geteuid() == 0) {
            o.state_dir = "/var/lib/hangar";
        } else if (const char* x = getenv("XDG_STATE_HOME"); x && *x) {
            o.state_dir = std::string(x) + "/hangar";
        } else if (const char* h = getenv("HOME"); h && *h) {
            o.state_dir = std::string(h) + "/.local/state/hangar";
        } else {
            err = "no --state-dir given and neither XDG_STATE_HOME nor HOME is set";
            return 2;
        }
    }
    if (o.socket.empty()) {
        o.socket = o.state_dir + "/hangar.sock";
    }
    if (!o.socket_mode_set) {
        o.socket_mode = geteuid() == 0 ? 0666 : 0600;
    }
    return 0;
}

}  // namespace hangar::daemon
