#include "drivers/qemu/argv.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/process.hpp"

namespace hangar::qemu {

std::string detect_accel(const std::string& binary, std::string& why) {
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
        why = "/dev/kvm works with -cpu host";
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
