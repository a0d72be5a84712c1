#pragma once
// Value types of a machine: its spec (what the user asked for) and its observed state.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace hangar {

enum class MachineState { stopped, starting, running, paused, stopping, crashed };

std::string_view to_string(MachineState s);
std::optional<MachineState> parse_machine_state(std::string_view s);

struct BootSpec {
    std::string kernel;   // absolute path, or empty
    std::string initrd;   // absolute path, or empty
    std::string cmdline;  // kernel command line
    std::string disk;     // absolute path of a bootable disk image, or empty
};

struct MachineSpec {
    std::string name;
    std::string uuid;
    std::string type = "vm";
    uint32_t owner = 0;
    std::string created_at;  // RFC 3339, UTC
    uint32_t cpus = 1;
    uint32_t memory_mib = 128;
    BootSpec boot;
    bool autostart = false;
    std::string description;
};

// Limits applied to specs at create time.
inline constexpr uint32_t kMaxCpus = 64;
inline constexpr uint32_t kMinMemoryMib = 32;
inline constexpr uint32_t kMaxMemoryMib = 1024 * 1024;
inline constexpr size_t kMaxDescription = 1024;
inline constexpr size_t kMaxCmdline = 4096;

}  // namespace hangar
