#pragma once
// Containers: core::Runtime over systemd-nspawn in a transient unit, hangar-NAME.service,
// started and watched through a ContainerHost (systemd + machined). A container's state
// follows what systemd reports of its unit (on_unit): active is `running`, deactivating is
// `stopping`, its end is the exit. A graceful stop sends the init's power-off signal (again
// every 2 s), then stops the unit at the timeout. Commands run inside a running container
// (nsenter, in a cgroup of their own) or in a stopped one's root file system (nspawn).
//
// The console: nspawn gives the container's init a pty as /dev/console and copies what it
// prints to the unit's stdout (the machine's console/log). Input and the window size go to
// that pty's master, which hangard takes from nspawn (pidfd_getfd) when it first needs it, so
// a hangard started again gets it back from the nspawn that kept running.
#include <sys/types.h>

#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/runtime.hpp"
#include "drivers/nspawn/host.hpp"
#include "util/process.hpp"

namespace hangar::nspawn {

class NspawnRuntime final : public core::Runtime {
  public:
    // The root file system directory of a local image, or an error naming what is wrong.
    using ImageLookup = std::function<Status(const std::string& image, std::string& rootfs)>;

    NspawnRuntime(boost::asio::io_context& io, std::filesystem::path machines_dir);
    ~NspawnRuntime() override;

    // Containers run through `host`; without one they cannot start.
    void set_host(ContainerHost* host) { host_ = host; }
    void set_image_lookup(ImageLookup lookup) { image_lookup_ = std::move(lookup); }
    // What systemd says of container `name`'s unit (a change, or the state found on connect).
    void on_unit(const std::string& name, const UnitStatus& st);
    // The host lost its connection: until it reports, running containers are unresponsive.
    void on_host_lost(const std::string& why);
    // The containers whose units the host should report.
    std::vector<std::string> machines() const;

    core::MachineType type() const override { return core::MachineType::container; }
    Status validate(MachineSpec& spec, const core::Privilege& who) const override;
    Status admit(const MachineSpec& spec) const override;
    Status supports(core::Capability c, const std::string& machine) const override;
    Status start(const MachineSpec& spec, const core::InstanceRef& ref, const core::Privilege& who,
                 Done failed) override;
    void stop(const core::InstanceRef& ref, std::chrono::seconds timeout,
              const std::string& reason) override;
    void kill(const core::InstanceRef& ref, Done done) override;
    void pause(const core::InstanceRef& ref, Done done) override;
    void resume(const core::InstanceRef& ref, Done done) override;
    void reset(const core::InstanceRef& ref, Done done) override;
    void adopt(const MachineSpec& spec, MachineState stored, const core::InstanceRef& ref,
               std::function<void(const Status&, const core::Adoption&)> done) override;
    void exec(const MachineSpec& spec, const core::InstanceRef& ref, bool running,
              core::ExecRequest req, ExecDone done) override;
    void console_input(const core::InstanceRef& ref, std::string_view bytes) override;
    void console_resize(const core::InstanceRef& ref, unsigned cols, unsigned rows) override;
    void forget(const std::string& machine) override;
    void detach_all() override;

  private:
    // The master side of a container's console pty, taken from its nspawn.
    struct Console {
        explicit Console(boost::asio::io_context& io) : fd(io) {}
        pid_t of = 0;  // the nspawn it was taken from
        boost::asio::posix::stream_descriptor fd;
        std::string queue;  // input the pty has not taken yet
        bool waiting = false;
        bool dropped = false;  // input was dropped since the queue was last empty
    };
    // One run of a container's unit.
    struct Ct {
        uint64_t generation = 0;
        bool live = false;      // the unit was started (or found) and has not been seen to end
        bool starting = false;  // started, not yet seen active
        bool seen_up = false;   // since the start: a fresh transient unit is reported inactive
        bool active_seen = false;
        bool stopping_reported = false;
        bool has_command = false;  // boot.command instead of the image's init
        std::string reason;        // why it is ending, as far as hangard asked
        pid_t pid = 0;             // systemd-nspawn
        std::unique_ptr<boost::asio::steady_timer> timer;
        std::unique_ptr<Console> console;
        pid_t console_failed = 0;  // the nspawn whose console could not be taken
    };
    Ct* find(const core::InstanceRef& ref);
    core::InstanceRef ref_of(const std::string& name, const Ct& c) const {
        return {name, c.generation};
    }
    std::string rootfs_of(const std::string& name) const;
    void post(Done done, Status st);
    // `repeat`: the signal was sent once already; only a first one that fails stops the unit.
    void stop_step(const core::InstanceRef& ref, std::chrono::steady_clock::time_point deadline,
                   int signal, std::chrono::seconds timeout, bool repeat);
    // Copies the image's root file system to the machine's directory unless it is there.
    void prepare_rootfs(const MachineSpec& spec, Done done);
    void run_exec(const std::string& name, pid_t nspawn_pid, core::ExecRequest req, pid_t leader,
                  ExecDone done);
    // The command of an interactive exec on a pty of its own, in the cgroup `opts` names.
    void exec_on_pty(const std::string& name, core::ExecRequest req, CaptureOptions opts,
                     ExecDone done);
    void end_orphaned_execs(const std::string& name, pid_t nspawn_pid);
    // The console of the running container (taken from its nspawn if need be), or null.
    Console* console_of(const core::InstanceRef& ref);
    void flush_console(const core::InstanceRef& ref);

    boost::asio::io_context& io_;
    std::filesystem::path machines_dir_;
    ContainerHost* host_ = nullptr;
    ImageLookup image_lookup_;
    std::map<std::string, Ct> cts_;
};

}  // namespace hangar::nspawn
