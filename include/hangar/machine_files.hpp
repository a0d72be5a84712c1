#pragma once
// The files of one machine, all inside its directory <state dir>/machines/NAME (built from a
// validated name only). Every module names them through this struct.
#include <filesystem>
#include <utility>

namespace hangar {

struct MachineFiles {
    std::filesystem::path dir;
    explicit MachineFiles(std::filesystem::path d) : dir(std::move(d)) {}
    // The guest's console output (QEMU's serial port; a container's stdout), appended to.
    std::filesystem::path console_log() const { return dir / "console.log"; }
    // A container's root file system, copied from its image at the first start.
    std::filesystem::path rootfs() const { return dir / "rootfs"; }
    // VMs: QEMU's QMP and serial sockets, its pidfile and its own stderr.
    std::filesystem::path qmp_socket() const { return dir / "qmp.sock"; }
    std::filesystem::path console_socket() const { return dir / "console.sock"; }
    // QEMU's VNC server (the VM's display), reached only by hangard: the directory is 0700.
    std::filesystem::path vnc_socket() const { return dir / "vnc.sock"; }
    std::filesystem::path pidfile() const { return dir / "qemu.pid"; }
    std::filesystem::path qemu_log() const { return dir / "qemu.log"; }
    // A VM made from a disk image: its root disk, a qcow2 overlay on that image, made at the
    // first start (root.qcow2.new until it is complete).
    std::filesystem::path root_disk() const { return dir / "root.qcow2"; }
    // A clone of a snapshot with memory: the saved guest its first start resumes (then
    // removed), and the hardware it was saved with (a start on other hardware boots instead).
    std::filesystem::path warm_start() const { return dir / "warm-start.mem"; }
    std::filesystem::path warm_start_hardware() const { return dir / "warm-start.hardware"; }
    // A UEFI VM's variables store, copied from the firmware's template at its first start.
    std::filesystem::path uefi_vars() const { return dir / "uefi-vars.fd"; }
};

}  // namespace hangar
