#pragma once
// Value types of a machine: its spec (what the user asked for) and its observed state.
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace hangar {

enum class MachineState { stopped, starting, running, paused, stopping, crashed };

std::string_view to_string(MachineState s);
// Something runs (or is being started or stopped): starting, running, paused, stopping.
bool is_active(MachineState s);
std::optional<MachineState> parse_machine_state(std::string_view s);

struct BootSpec {
    std::string kernel;   // absolute path, or empty
    std::string initrd;   // absolute path, or empty
    std::string cmdline;  // kernel command line
    std::string disk;     // absolute path of a bootable disk image, or empty
    // Containers: one command to run instead of booting the root file system's init.
    std::vector<std::string> command;
};

struct MachineSpec {
    std::string name;
    std::string uuid;
    std::string type = "vm";  // "vm" or "container"
    uint32_t owner = 0;
    std::string created_at;  // RFC 3339, UTC
    uint32_t cpus = 1;
    uint32_t memory_mib = 128;
    BootSpec boot;
    // Containers: the local image their root file system is copied from. VMs: a disk image
    // their root disk is a copy-on-write overlay on.
    std::string image;
    uint32_t disk_gib = 0;  // VMs from an image: the root disk's size; 0: the image's size
    std::string firmware;   // VMs: "bios" (also when empty) or "uefi"
    std::string cdrom;      // VMs: an ISO image in the CD-ROM drive, or empty
    bool autostart = false;
    std::string description;
    std::string template_name;  // the size template a create named ("template"), or empty
    // The top-level fields the request that made this spec gave (recorded by the spec codec);
    // a template fills the others. Not stored.
    std::set<std::string> given;
};

// Limits applied to specs at create time.
inline constexpr uint32_t kMaxCpus = 64;
inline constexpr uint32_t kMinMemoryMib = 32;
inline constexpr uint32_t kMaxMemoryMib = 1024 * 1024;
inline constexpr size_t kMaxDescription = 1024;
inline constexpr uint32_t kMaxDiskGib = 65536;
inline constexpr uint32_t kMinUefiMemoryMib = 256;  // OVMF fails in less (under TCG at 128)
inline constexpr size_t kMaxCmdline = 4096;
inline constexpr size_t kMaxCommandArgs = 256;
inline constexpr size_t kMaxCommandArg = 4096;

}  // namespace hangar
