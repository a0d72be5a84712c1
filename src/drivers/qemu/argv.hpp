#pragma once
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "hangar/machine.hpp"

namespace hangar::qemu {

struct Settings {
    std::string binary = "qemu-system-x86_64";
    std::string accel = "tcg";  // "kvm" when /dev/kvm is usable
    std::chrono::milliseconds command_timeout{5000};
    std::chrono::milliseconds handshake_timeout{10000};
};

// "kvm" when /dev/kvm opens for reading and writing and `binary` can run a vCPU on it as hangar
// starts one (-cpu host; a nested host can refuse that), else "tcg"; `why` tells which. The
// trial is one short QEMU run (about 0.1 s) at daemon start, only where /dev/kvm opens.
std::string detect_accel(const std::string& binary, std::string& why);

// Files of one machine, all inside its directory (built from a validated name only).
struct MachinePaths {
    std::filesystem::path dir;
    explicit MachinePaths(std::filesystem::path d) : dir(std::move(d)) {}
    std::filesystem::path qmp_socket() const { return dir / "qmp.sock"; }
    std::filesystem::path console_socket() const { return dir / "console.sock"; }
    std::filesystem::path console_log() const { return dir / "console.log"; }
    std::filesystem::path pidfile() const { return dir / "qemu.pid"; }
    std::filesystem::path qemu_log() const { return dir / "qemu.log"; }
    // Removes the pidfile and sockets of a QEMU that is gone.
    void remove_runtime_files() const;
};

// The QEMU command line for `spec`; QMP is the listening socket passed as `qmp_fd`.
std::vector<std::string> build_argv(const Settings& settings, const MachineSpec& spec,
                                    const MachinePaths& paths, int qmp_fd);

}  // namespace hangar::qemu
