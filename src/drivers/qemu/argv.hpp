#pragma once
#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "core/runtime.hpp"
#include "hangar/error.hpp"
#include "hangar/machine.hpp"
#include "hangar/machine_files.hpp"

namespace hangar::qemu {

struct Settings {
    std::string binary = "qemu-system-x86_64";
    std::string accel = "tcg";  // "kvm" when /dev/kvm is usable
    std::chrono::milliseconds command_timeout{5000};
    std::chrono::milliseconds handshake_timeout{10000};
};

// What the built-in guest prints on its serial console once it has booted.
inline constexpr const char* kGuestReadyMarker = "HANGAR-GUEST-READY";

// "kvm" when /dev/kvm opens for reading and writing, `binary` can run a vCPU on it as hangar
// starts one (-cpu host; a nested host can refuse that), and — when `trial` names a kernel (the
// built-in guest) — that guest boots under KVM to its ready marker within 10 s (some nested
// hosts run a vCPU but hang every Linux guest); else "tcg". `why` tells which. The trial is one
// short QEMU run (about 0.1 s), plus the guest's boot (about 1 s with a working KVM), and only
// where /dev/kvm opens.
std::string detect_accel(const std::string& binary, const BootSpec& trial, std::string& why);

// A VM's files (hangar/machine_files.hpp), and the clean-up of those QEMU leaves behind.
struct MachinePaths : MachineFiles {
    using MachineFiles::MachineFiles;
    // Removes the pidfile and sockets of a QEMU that is gone.
    void remove_runtime_files() const;
};

// Boot files QEMU inherits as descriptors, by their fd numbers in QEMU; -1 names the file by
// the spec's path instead. The kernel and initrd are read through /dev/fd/N, the disk is an fd
// set (-add-fd) that its drive opens as /dev/fdset/1: QEMU picks the descriptor whose access
// mode fits each open, so the set holds the file read-write (`disk`) and read-only (`disk_ro`).
struct BootFds {
    int kernel = -1, initrd = -1, disk = -1, disk_ro = -1;
    std::string disk_format = "raw";  // "raw" or "qcow2": given to QEMU, never probed
    int incoming = -1;                // a saved guest state to resume from (-incoming fd:N)
};

// A VM's root disk made from a disk image: its overlay (qcow2, hangard's file) on the image,
// which QEMU opens read-only. The chain is spelled out node by node (-blockdev), from
// hangard's records: QEMU never follows a backing file name it reads from an image.
struct RootDisk {
    std::string overlay;  // absolute path; "" when the VM has none
    std::string base, base_format;
};

// A UEFI VM's firmware on two flash devices: the code (read-only, shared) and the VM's own
// variables store.
struct UefiFlash {
    std::string code, code_format;  // "" when the VM boots with the BIOS
    std::string vars, vars_format;
};

// The QEMU command line for `spec`; QMP is the listening socket passed as `qmp_fd`.
// What QEMU calls an attached disk (core::Disks): its format node ("d" and 10 hex digits of a
// hash of the disk's name: node names are at most 31 characters), with "-f" its file node,
// "-b"/"-bf" its base image's; and its scsi-hd device ("v" and the same digits). Derived from
// the name alone, so an adopted QEMU's disks are known without a record.
std::string disk_node(const std::string& disk);
std::string disk_device(const std::string& disk);
// The -blockdev arguments (JSON) of an attached disk, in the order they are added.
std::vector<std::string> disk_blockdevs(const core::DiskAttachment& d);

std::vector<std::string> build_argv(const Settings& settings, const MachineSpec& spec,
                                    const MachinePaths& paths, int qmp_fd, const BootFds& fds = {},
                                    const RootDisk& root = {}, const UefiFlash& uefi = {},
                                    const std::vector<core::DiskAttachment>& disks = {},
                                    const std::string& cdrom = "");

// The format a boot disk is used as: qcow2 when its name ends in .qcow2, else raw. The
// format comes from the name, never from the content, which a guest can write.
std::string disk_format(const std::string& path);

// What a qcow2 header says about files other than itself.
struct Qcow2Refs {
    std::string backing_file;  // "" when none
    bool data_file = false;    // an external data file (incompatible feature bit 2 or extension)
};
// Reads the qcow2 header of `fd`; an error when it is not a qcow2 image.
Status read_qcow2_refs(int fd, Qcow2Refs& out);

}  // namespace hangar::qemu
