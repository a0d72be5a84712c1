#pragma once
// What hangard decides once per boot of the host, kept in the store's meta table under the
// kernel's boot id: autostart, and the accelerator --accel auto found.
#include <functional>
#include <string>

#include "core/machines.hpp"
#include "store/db.hpp"

namespace hangar::core {

// The kernel's id of this boot; "" when unknown.
std::string read_boot_id();

// Autostart once per host boot: a restart of hangard does not start again what a user
// stopped. Starts the autostart machines (Machines::autostart) unless that was done since
// `boot_id` booted; an unknown boot id ("") counts as a new boot.
void autostart_once_per_boot(Machines& machines, store::Db& db, const std::string& boot_id);

struct AccelChoice {
    std::string accel;  // "kvm" or "tcg"
    std::string why;
};
// The accelerator for `requested` (auto|kvm|tcg). For auto, `detect` (which may take
// seconds: it boots a trial guest) runs once per host boot and QEMU binary; its verdict is
// kept, so a restart costs no trial.
AccelChoice choose_accel(store::Db& db, const std::string& boot_id, const std::string& requested,
                         const std::string& qemu,
                         const std::function<std::string(std::string& why)>& detect);

}  // namespace hangar::core
