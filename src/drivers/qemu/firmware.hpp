#pragma once
// UEFI firmware for VMs, chosen as QEMU's firmware descriptors (docs/interop/firmware.json)
// describe it, not by file names: the descriptors in /etc/qemu/firmware and
// /usr/share/qemu/firmware, in the order of their file names (a file in /etc overrides one of
// the same name; an empty one disables it), the first that is UEFI on flash for x86_64 q35
// machines and needs nothing hangar does not set up (SMM, Secure Boot with enrolled keys).
#include <string>
#include <vector>

#include "hangar/error.hpp"

namespace hangar::qemu {

struct Firmware {
    std::string descriptor;  // the descriptor's path
    std::string code, code_format;
    std::string vars_template, vars_format;  // copied for each VM
};

inline const std::vector<std::string> kFirmwareDirs = {"/etc/qemu/firmware",
                                                       "/usr/share/qemu/firmware"};

// The UEFI firmware to boot VMs with; unavailable (saying what was looked at) when none fits.
Status find_uefi_firmware(const std::vector<std::string>& dirs, Firmware& out);
// Whether one descriptor's JSON fits (`why` says why not).
bool uefi_descriptor_fits(std::string_view json, Firmware& out, std::string& why);

}  // namespace hangar::qemu
