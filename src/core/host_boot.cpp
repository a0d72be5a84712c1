#include "core/host_boot.hpp"

#include <fstream>

#include <spdlog/spdlog.h>

namespace hangar::core {

std::string read_boot_id() {
    std::ifstream in("/proc/sys/kernel/random/boot_id");
    std::string id;
    std::getline(in, id);
    return id;
}

void autostart_once_per_boot(Machines& machines, store::Db& db, const std::string& boot_id) {
    if (!boot_id.empty() && db.get_meta("autostart_boot_id") == boot_id) {
        return spdlog::info("autostart: already done since this host booted ({})", boot_id);
    }
    db.set_meta("autostart_boot_id", boot_id);
    machines.autostart([](size_t started, size_t failed) {
        if (started + failed > 0) {
            spdlog::info("autostart: {} started, {} failed", started, failed);
        }
    });
}

AccelChoice choose_accel(store::Db& db, const std::string& boot_id, const std::string& requested,
                         const std::string& qemu,
                         const std::function<std::string(std::string& why)>& detect) {
    AccelChoice c{requested, "--accel " + requested};
    if (requested != "auto") {
        return c;
    }
    std::string key = boot_id + " " + qemu;
    std::string kept = db.get_meta("accel_verdict");
    if (!boot_id.empty() && kept.rfind(key + "\n", 0) == 0) {
        std::string rest = kept.substr(key.size() + 1);
        size_t nl = rest.find('\n');
        c.accel = rest.substr(0, nl);
        c.why = (nl == std::string::npos ? "" : rest.substr(nl + 1)) +
                " (found at an earlier start since this host booted)";
        return c;
    }
    c.accel = detect(c.why);
    db.set_meta("accel_verdict", key + "\n" + c.accel + "\n" + c.why);
    return c;
}

}  // namespace hangar::core
