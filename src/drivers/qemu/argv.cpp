#include "drivers/qemu/argv.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "util/json.hpp"
#include "util/process.hpp"

namespace hangar::qemu {

namespace {
// Boots `trial` under KVM and waits for the ready marker on its serial console.
bool guest_boots_under_kvm(const std::string& binary, const BootSpec& trial, std::string& why) {
    int out[2];
    if (pipe2(out, O_CLOEXEC) != 0) {
        why = std::string("pipe: ") + strerror(errno);
        return false;
    }
    SpawnOptions so;
    so.argv = {binary,
               "-accel",
               "kvm",
               "-cpu",
               "host",
               "-machine",
               "q35",
               "-nodefaults",
               "-no-user-config",
               "-display",
               "none",
               "-m",
               "128",
               "-serial",
               "stdio",
               "-no-reboot",
               "-kernel",
               trial.kernel,
               "-append",
               "console=ttyS0 panic=-1"};
    if (!trial.initrd.empty()) {
        so.argv.insert(so.argv.end(), {"-initrd", trial.initrd});
    }
    so.output_fd = out[1];
    so.new_session = false;
    pid_t pid = -1;
    Status st = spawn_process(so, pid);
    close(out[1]);
    if (!st) {
        close(out[0]);
        why = "guest trial: " + st.message();
        return false;
    }
    std::string seen;
    bool ready = false;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!ready) {
        auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                        deadline - std::chrono::steady_clock::now())
                        .count();
        if (left <= 0) {
            break;
        }
        pollfd p{out[0], POLLIN, 0};
        if (poll(&p, 1, static_cast<int>(left)) <= 0) {
            continue;
        }
        char buf[4096];
        ssize_t n = read(out[0], buf, sizeof buf);
        if (n <= 0) {
            break;  // QEMU exited
        }
        seen.append(buf, static_cast<size_t>(n));
        ready = seen.find(kGuestReadyMarker) != std::string::npos;
        if (seen.size() > (1 << 20)) {
            seen.erase(0, seen.size() - 4096);
        }
    }
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    close(out[0]);
    if (!ready) {
        why = "/dev/kvm runs a vCPU, but the built-in guest does not boot under KVM within 10 s";
    }
    return ready;
}
}  // namespace

std::string detect_accel(const std::string& binary, const BootSpec& trial, std::string& why) {
    int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (fd < 0) {
        why = std::string("/dev/kvm: ") + strerror(errno);
        return "tcg";
    }
    close(fd);
    int in[2];
    if (pipe2(in, O_CLOEXEC) != 0) {
        why = std::string("pipe: ") + strerror(errno);
        return "tcg";
    }
    static constexpr char kQuit[] = "{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"quit\"}\n";
    bool written = write(in[1], kQuit, sizeof kQuit - 1) == ssize_t(sizeof kQuit - 1);
    close(in[1]);
    SpawnOptions so;
    so.argv = {binary,     "-accel",      "kvm",
               "-cpu",     "host",        "-machine",
               "q35",      "-nodefaults", "-no-user-config",
               "-display", "none",        "-m",
               "16",       "-S",          "-qmp",
               "stdio"};
    so.stdin_fd = in[0];
    so.new_session = false;
    pid_t pid = -1;
    Status st = written ? spawn_process(so, pid) : Status{Errc::internal, "pipe write"};
    close(in[0]);
    if (!st) {
        why = "trial run: " + st.message();
        return "tcg";
    }
    int status = 0;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (waitpid(pid, &status, WNOHANG) == 0) {
        if (std::chrono::steady_clock::now() > deadline) {
            kill(pid, SIGKILL);
            waitpid(pid, &status, 0);
            break;
        }
        usleep(5000);
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
        if (!trial.kernel.empty() && !guest_boots_under_kvm(binary, trial, why)) {
            return "tcg";
        }
        why = trial.kernel.empty() ? "/dev/kvm works with -cpu host"
                                   : "/dev/kvm works with -cpu host and boots the built-in guest";
        return "kvm";
    }
    why = "/dev/kvm opens, but " + binary + " -accel kvm -cpu host fails (" +
          (WIFSIGNALED(status) ? "signal " + std::to_string(WTERMSIG(status))
                               : "exit status " + std::to_string(WEXITSTATUS(status))) +
          ")";
    return "tcg";
}

void MachinePaths::remove_runtime_files() const {
    std::error_code ec;
    for (const auto& p : {qmp_socket(), console_socket(), vnc_socket(), pidfile()}) {
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

std::string disk_format(const std::string& d) {
    return d.size() > 6 && d.compare(d.size() - 6, 6, ".qcow2") == 0 ? "qcow2" : "raw";
}

namespace {
uint64_t be(const unsigned char* p, int n) {
    uint64_t v = 0;
    for (int i = 0; i < n; ++i) {
        v = v << 8 | p[i];
    }
    return v;
}
}  // namespace

Status read_qcow2_refs(int fd, Qcow2Refs& out) {
    out = {};
    unsigned char h[112] = {};
    ssize_t n = pread(fd, h, sizeof h, 0);
    if (n < 72 || std::memcmp(h, "QFI\xfb", 4) != 0) {
        return {Errc::invalid_spec, "not a qcow2 image (no qcow2 header)"};
    }
    uint64_t version = be(h + 4, 4);
    uint64_t backing_offset = be(h + 8, 8);
    uint64_t backing_size = be(h + 16, 4);
    if (backing_offset != 0 && backing_size != 0) {
        std::string name(std::min<uint64_t>(backing_size, 1023), '\0');
        if (pread(fd, name.data(), name.size(), static_cast<off_t>(backing_offset)) !=
            static_cast<ssize_t>(name.size())) {
            return {Errc::invalid_spec,
                    "the qcow2 header names a backing file that cannot be read"};
        }
        out.backing_file = name;
    }
    uint64_t ext = 72;
    if (version >= 3) {
        if (n < 104) {
            return {Errc::invalid_spec, "the qcow2 header is cut short"};
        }
        out.data_file = (be(h + 72, 8) & (1u << 2)) != 0;
        ext = be(h + 100, 4);
    }
    // Header extensions: (type, length, data padded to 8 bytes) up to type 0.
    for (int i = 0; i < 64 && ext < 65536; ++i) {
        unsigned char e[8];
        if (pread(fd, e, sizeof e, static_cast<off_t>(ext)) != 8) {
            break;
        }
        uint64_t type = be(e, 4), len = be(e + 4, 4);
        if (type == 0) {
            break;
        }
        if (type == 0x44415441) {  // "DATA": the external data file's name
            out.data_file = true;
        }
        ext += 8 + ((len + 7) & ~uint64_t(7));
    }
    return {};
}

namespace {
std::string name_hash(const std::string& s) {
    uint64_t h = 1469598103934665603ull;  // FNV-1a
    for (unsigned char c : s) {
        h = (h ^ c) * 1099511628211ull;
    }
    char buf[17];
    snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
    return std::string(buf, 10);
}

std::string file_node(const std::string& node, const std::string& path, bool ro) {
    return "{\"driver\":\"file\",\"node-name\":" + json::quote(node) +
           ",\"filename\":" + json::quote(path) + (ro ? ",\"read-only\":true}" : "}");
}
std::string format_node(const std::string& node, const std::string& format, const std::string& file,
                        bool ro, const std::string& backing = "") {
    return "{\"driver\":" + json::quote(format) + ",\"node-name\":" + json::quote(node) +
           ",\"file\":" + json::quote(file) +
           (backing.empty() ? "" : ",\"backing\":" + json::quote(backing)) +
           (ro ? ",\"read-only\":true}" : "}");
}
}  // namespace

std::string disk_node(const std::string& disk) {
    return "d" + name_hash(disk);
}
std::string disk_device(const std::string& disk) {
    return "v" + name_hash(disk);
}

std::vector<std::string> disk_blockdevs(const core::DiskAttachment& d) {
    std::string n = disk_node(d.name);
    std::vector<std::string> out;
    if (!d.base.empty()) {
        out.push_back(file_node(n + "-bf", d.base, true));
        out.push_back(format_node(n + "-b", d.base_format, n + "-bf", true));
    }
    out.push_back(file_node(n + "-f", d.path, false));
    out.push_back(format_node(n, d.format, n + "-f", false, d.base.empty() ? "" : n + "-b"));
    return out;
}

std::vector<std::string> build_argv(const Settings& settings, const MachineSpec& spec,
                                    const MachinePaths& paths, int qmp_fd, const BootFds& fds,
                                    const RootDisk& root, const UefiFlash& uefi,
                                    const std::vector<core::DiskAttachment>& disks,
                                    const std::string& cdrom) {
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
        // A saved guest (a snapshot with memory) resumes when hangar says "cont", not in the
        // run state the save found: the save pauses the guest for its first instant.
        "-global",
        "migration.store-global-state=off",
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
        // The SCSI controller of attached disks (scsi-hd), hot-plugged ones too.
        "-device",
        "virtio-scsi-pci,id=scsi0",
        "-device",
        "pvpanic",
        // The display: a VGA card (text mode for the built-in guest, a framebuffer for others),
        // an absolute pointer so a VNC viewer's mouse lands where it points, and QEMU's VNC
        // server on a unix socket in the machine's directory, shared by every viewer
        // (GET /v1/machines/NAME/vnc pipes WebSockets to it).
        "-device",
        "VGA",
        "-device",
        "virtio-tablet-pci",
        "-vnc",
        "unix:" + escape_commas(paths.vnc_socket()) + ",share=force-shared",
    };
    if (settings.accel == "kvm") {
        a.insert(a.end(), {"-cpu", "host"});
    }
    if (fds.incoming >= 0) {
        // The guest as a snapshot saved it: loaded before it runs ("cont" waits for that).
        a.insert(a.end(), {"-incoming", "fd:" + std::to_string(fds.incoming)});
    }
    auto by_fd = [](int fd, const std::string& path) {
        return fd >= 0 ? "/dev/fd/" + std::to_string(fd) : path;
    };
    if (!spec.boot.kernel.empty()) {
        a.insert(a.end(), {"-kernel", by_fd(fds.kernel, spec.boot.kernel)});
        if (!spec.boot.initrd.empty()) {
            a.insert(a.end(), {"-initrd", by_fd(fds.initrd, spec.boot.initrd)});
        }
        if (!spec.boot.cmdline.empty()) {
            a.insert(a.end(), {"-append", spec.boot.cmdline});
        }
    }
    if (!spec.boot.disk.empty()) {
        std::string file = escape_commas(spec.boot.disk);
        std::string format = disk_format(spec.boot.disk);
        if (fds.disk >= 0) {
            a.insert(a.end(), {"-add-fd", "fd=" + std::to_string(fds.disk) + ",set=1"});
            if (fds.disk_ro >= 0) {
                a.insert(a.end(), {"-add-fd", "fd=" + std::to_string(fds.disk_ro) + ",set=1"});
            }
            file = "/dev/fdset/1";
            format = fds.disk_format;
        }
        a.insert(a.end(), {"-drive", "file=" + file + ",if=none,id=disk0,format=" + format,
                           "-device", "virtio-blk-pci,drive=disk0,bootindex=1"});
    }
    if (!uefi.code.empty()) {
        a.insert(a.end(), {"-blockdev", file_node("fw-code-file", uefi.code, true), "-blockdev",
                           format_node("fw-code", uefi.code_format, "fw-code-file", true),
                           "-blockdev", file_node("fw-vars-file", uefi.vars, false), "-blockdev",
                           format_node("fw-vars", uefi.vars_format, "fw-vars-file", false),
                           "-machine", "pflash0=fw-code,pflash1=fw-vars"});
    }
    if (!root.overlay.empty()) {
        // The base image as a node of hangard's; a top on snapshot layers (no base given)
        // opens the chain its headers name.
        if (!root.base.empty()) {
            a.insert(a.end(), {"-blockdev", file_node("base0-file", root.base, true), "-blockdev",
                               format_node("base0", root.base_format, "base0-file", true)});
        }
        a.insert(a.end(), {"-blockdev", file_node("root-file", root.overlay, false), "-blockdev",
                           format_node("root", "qcow2", "root-file", false,
                                       root.base.empty() ? "" : "base0"),
                           "-device", "virtio-blk-pci,drive=root,id=root,bootindex=1"});
    }
    // The CD-ROM drive is always there (a medium can go in while the VM runs); an ISO in it
    // boots after the disks.
    if (!cdrom.empty()) {
        a.insert(a.end(), {"-blockdev", file_node("cd0-file", cdrom, true), "-blockdev",
                           format_node("cd0", "raw", "cd0-file", true), "-device",
                           "ide-cd,id=cdrom0,bus=ide.0,drive=cd0,bootindex=2"});
    } else {
        a.insert(a.end(), {"-device", "ide-cd,id=cdrom0,bus=ide.0"});
    }
    for (const auto& d : disks) {
        for (auto& node : disk_blockdevs(d)) {
            a.insert(a.end(), {"-blockdev", std::move(node)});
        }
        a.insert(a.end(), {"-device", "scsi-hd,drive=" + disk_node(d.name) +
                                          ",id=" + disk_device(d.name) + ",bus=scsi0.0"});
    }
    return a;
}

}  // namespace hangar::qemu
