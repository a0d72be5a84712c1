#pragma once
// One QEMU process: launched in its own session with a pre-bound QMP socket (so connecting
// needs no retry loop), or adopted after a daemon restart through its pidfile, command line,
// pidfd and QMP socket. Its exit is seen through the pidfd; it reports QMP events, exit and
// responsiveness to the callbacks; it holds no machine state of its own.
#include <sys/types.h>

#include <functional>
#include <memory>
#include <string>
#include <string_view>

#include <simdjson.h>
#include <boost/asio/io_context.hpp>

#include "drivers/qemu/argv.hpp"
#include "hangar/error.hpp"
#include "hangar/machine.hpp"
#include "qmp/client.hpp"
#include "util/process.hpp"

namespace hangar::qemu {

class QemuProcess : public std::enable_shared_from_this<QemuProcess> {
  public:
    struct Callbacks {
        std::function<void(std::string_view event, simdjson::dom::element message)> on_event;
        std::function<void(const ExitInfo&)> on_exit;
        std::function<void(bool responsive, const std::string& why)> on_responsive;
    };
    using Ready = std::function<void(const Status&, std::shared_ptr<QemuProcess>)>;
    // `status` is QEMU's query-status "status" ("running", "paused", "shutdown", ...), or
    // empty when QMP could not be reached.
    using Adopted =
        std::function<void(const Status&, std::shared_ptr<QemuProcess>, const std::string& status)>;

    // Starts QEMU stopped (-S) and completes once QMP is negotiated. On failure no process
    // is left behind and the status carries QEMU's own error output.
    // `files` are descriptors of the boot files (-1: by the spec's path), still the caller's
    // to close; QEMU inherits them.
    struct BootFiles {
        int kernel = -1, initrd = -1, disk = -1;
        int incoming = -1;  // a saved guest state to load instead of booting
        std::string disk_format = "raw";
        RootDisk root;
        UefiFlash uefi;
        std::vector<core::DiskAttachment> disks;
        std::string cdrom;  // an ISO's path, or "": the drive is empty
    };
    static void launch(boost::asio::io_context& io, const Settings& settings,
                       const MachineSpec& spec, const MachinePaths& paths, const BootFiles& files,
                       Callbacks callbacks, Ready ready);
    // Finds the QEMU of `spec` left running by an earlier daemon. not_found when it is gone.
    static void adopt(boost::asio::io_context& io, const Settings& settings,
                      const MachineSpec& spec, const MachinePaths& paths, Callbacks callbacks,
                      Adopted adopted);

    ~QemuProcess();

    void execute(std::string_view command, std::string_view arguments_json,
                 qmp::Client::ReplyHandler done);
    void execute(std::string_view command, std::string_view arguments_json,
                 std::chrono::milliseconds deadline, qmp::Client::ReplyHandler done);
    // With a copy of `fd` passed along (getfd).
    void execute_with_fd(std::string_view command, std::string_view arguments_json, int fd,
                         qmp::Client::ReplyHandler done);
    // Signals QEMU through its pidfd. false when it has already exited.
    bool signal(int sig);
    // Lets QEMU run on without this daemon: closes QMP, stops watching, removes nothing.
    void detach();

    pid_t pid() const { return watch_->pid(); }
    bool qmp_connected() const { return qmp_ && qmp_->is_open(); }
    bool exited() const { return exited_; }

  private:
    QemuProcess(boost::asio::io_context& io, const Settings& settings, MachinePaths paths,
                pid_t pid, int pidfd, Callbacks callbacks);
    void watch_exit();
    void attach_qmp(qmp::Client::Socket socket, std::function<void(const Status&)> done);
    std::string qemu_log_tail() const;

    boost::asio::io_context& io_;
    Settings settings_;
    MachinePaths paths_;
    Callbacks callbacks_;
    std::unique_ptr<PidWatch> watch_;
    std::shared_ptr<qmp::Client> qmp_;
    bool exited_ = false;
    ExitInfo exit_info_;
    // While launching: completion that waits for the process to be gone after a failure.
    std::function<void()> after_exit_;
};

}  // namespace hangar::qemu
