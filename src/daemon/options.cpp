#include "daemon/options.hpp"

#include <unistd.h>

#include <cstdlib>
#include <iostream>

namespace hangar::daemon {

std::string usage() {
    return "usage: hangard [--state-dir DIR] [--listen ADDR:PORT] [--socket PATH]\n"
           "               [--dbus none|session|system|ADDRESS] [--no-machined]\n"
           "               [--tls-cert F --tls-key F]\n"
           "               [--insecure-http] [--log-level LEVEL] [--foreground]\n"
           "               [--qemu PATH] [--accel auto|kvm|tcg] [--guest-dir DIR]\n"
           "               [--qmp-timeout-ms N] [--image-ca FILE]\n"
           "               [--event-ring N] [--admin-group NAME] [--help] [--version]\n";
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
        } else if (a == "--dbus") {
            ok = need(o.dbus);
        } else if (a == "--tls-cert") {
            ok = need(o.tls_cert);
        } else if (a == "--tls-key") {
            ok = need(o.tls_key);
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
        } else if (a == "--accel") {
            ok = need(o.accel);
            if (ok && o.accel != "auto" && o.accel != "kvm" && o.accel != "tcg") {
                err = "--accel must be auto, kvm or tcg";
                ok = false;
            }
        } else if (a == "--image-ca") {
            ok = need(o.image_ca);
        } else if (a == "--qemu") {
            ok = need(o.qemu);
        } else if (a == "--admin-group") {
            ok = need(o.admin_group);
        } else if (a == "--guest-dir") {
            ok = need(o.guest_dir);
        } else if (a == "--qmp-timeout-ms") {
            ok = need_u32(o.qmp_timeout_ms, 50, 600000);
        } else if (a == "--event-ring") {
            ok = need_u32(o.event_ring, 16, 10000000);
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
    return 0;
}

}  // namespace hangar::daemon
