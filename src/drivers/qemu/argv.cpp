#include "drivers/qemu/argv.hpp"

#include <fcntl.h>
#include <unistd.h>

namespace hangar::qemu {

std::string detect_accel() {
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        return "tcg";
    }
    close(fd);
    return "kvm";
}

void MachinePaths::remove_runtime_files() const {
    std::error_code ec;
    for (const auto& p : {qmp_socket(), console_socket(), pidfile()}) {
        std::filesystem::remove(p, ec);
    }
}

namespace {
// QEMU's option parser splits on ','; a literal comma in a value is written ",,".
std::string escape_commas(const std::string& s) {
    std::string out;
    for (char c : s) {
        out += c;
        if (c == ',') {
            out += ',';
        }
    }
    return out;
}
}  // namespace

std::vector<std::string> build_argv(const Settings& settings, const MachineSpec& spec,
                                    const MachinePaths& paths, int qmp_fd) {
    std::vector<std::string> a = {
        settings.binary,
        "-name",
        "guest=" + spec.name + ",process=hangar:" + spec.name,
        "-uuid",
        spec.uuid,
        "-machine",
        "q35,accel=" + settings.accel,
        "-smp",
        std::to_string(spec.cpus),
        "-m",
        std::to_string(spec.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        // Stopped at the first instruction until hangar sends "cont"; a guest shutdown
        // leaves QEMU alive in status "shutdown" so that the fact survives a daemon restart.
        "-S",
        "-no-shutdown",
        "-msg",
        "timestamp=on",
        "-chardev",
        "socket,id=qmp,fd=" + std::to_string(qmp_fd) + ",server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        "socket,id=serial0,path=" + escape_commas(paths.console_socket()) +
            ",server=on,wait=off,logfile=" + escape_commas(paths.console_log()) + ",logappend=on",
        "-serial",
        "chardev:serial0",
        "-pidfile",
        paths.pidfile().string(),
        // A PCIe root port kept free for hot-plugged devices.
        "-device",
        "pcie-root-port,id=hotplug0,chassis=1,bus=pcie.0",
        "-device",
        "pvpanic",
    };
    if (settings.accel == "kvm") {
        a.insert(a.end(), {"-cpu", "host"});
    }
    if (!spec.boot.kernel.empty()) {
        a.insert(a.end(), {"-kernel", spec.boot.kernel});
        if (!spec.boot.initrd.empty()) {
            a.insert(a.end(), {"-initrd", spec.boot.initrd});
        }
        if (!spec.boot.cmdline.empty()) {
            a.insert(a.end(), {"-append", spec.boot.cmdline});
        }
    }
    if (!spec.boot.disk.empty()) {
        const auto& d = spec.boot.disk;
        bool qcow2 = d.size() > 6 && d.compare(d.size() - 6, 6, ".qcow2") == 0;
        a.insert(a.end(), {"-drive",
                           "file=" + escape_commas(d) +
                               ",if=none,id=disk0,format=" + (qcow2 ? "qcow2" : "raw"),
                           "-device", "virtio-blk-pci,drive=disk0,bootindex=1"});
    }
    return a;
}

}  // namespace hangar::qemu
