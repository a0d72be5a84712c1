#pragma once
// What runs machines of one type: qemu::QemuRuntime (drivers/qemu) for VMs, and
// nspawn::NspawnRuntime (drivers/nspawn) for containers. core::Machines decides — states and
// their reasons, the operation lock, ownership, limits, persistence — and asks its runtime to
// act; a runtime carries the request out in its own words (QMP, systemd units) and reports
// typed facts back through a RuntimeSink. A machine has at most one instance at a time, named
// by (machine, generation); the core drops reports about an instance that is no longer current.
//
// Every runtime call answers later, never from inside the call (reports and `done` callbacks
// are posted), so the core never re-enters itself.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/exec.hpp"
#include "hangar/error.hpp"
#include "hangar/machine.hpp"

namespace hangar::core {

enum class MachineType { vm, container };
std::string_view to_string(MachineType t);
std::optional<MachineType> parse_machine_type(std::string_view s);

// One run of a machine.
struct InstanceRef {
    std::string machine;
    uint64_t generation = 0;
};

// Whose rights the runtime uses for files the spec names: the owner's, or hangard's own
// (`privileged`: root, the admin group).
struct Privilege {
    uid_t owner = 0;
    bool privileged = false;
};

// The machine is on its way down without hangard having asked (a guest power-off, its unit
// deactivating, QEMU signalled by someone).
struct StoppingFact {
    std::string reason;  // "qmp:SHUTDOWN guest=true reason=guest-shutdown", "systemd:deactivating"
    // Neither hangard nor the guest brought it about: the core asks who did (machined?).
    bool from_outside = false;
};

// The instance has ended.
struct ExitFact {
    std::string how;     // "pidfd:exit status=0", "systemd:result=success status=0"
    bool clean = false;  // ended as asked or by itself without error
    // What the runtime knows of why it ended ("api:stop: guest did not power off within 5 s",
    // "qmp:SHUTDOWN guest=true reason=guest-shutdown"); "" when nothing but `how`.
    std::string reason;
    bool crash = false;   // the guest failed (a panic): crashed
    bool reboot = false;  // the machine asked to be booted again; `reason` says so
};

// What a runtime found of an instance an earlier hangard left behind.
enum class AdoptFact {
    none,          // nothing runs, and nothing was running
    gone,          // it was running and has ended meanwhile (`reason`)
    running,       // runs
    paused,        // runs, paused
    starting,      // an interrupted start, being finished now
    stopping,      // powered off meanwhile; the runtime ends it (exit follows)
    failing,       // failed meanwhile; the runtime ends it (exit follows, with crash)
    unresponsive,  // alive, but its state cannot be read (`reason`)
    later,         // the runtime reports what it finds when it can (its host connects)
};
struct Adoption {
    AdoptFact fact = AdoptFact::none;
    std::string reason;
    pid_t pid = 0;
};

// The reason of a stop and start when the machine rebooted itself (a container's nspawn exits
// with 133).
inline constexpr const char* kContainerReboot = "container:reboot";
// The reason of an end that machined brought about (TerminateMachine from someone else).
inline constexpr const char* kMachinedTerminated = "machined:terminated";

// What a runtime cannot do, asked before an action is accepted.
enum class Capability {
    pause,
    reset,
    exec,
    console,
    display,  // a screen: screenshot(), and a VNC server on MachineFiles::vnc_socket()
};

// A disk (core::Disks) as a VM uses it: its file, and for an overlay on a disk image the
// image's file, which is opened read-only. The runtime names its nodes and device from `name`.
struct DiskAttachment {
    std::string name, path, format;
    std::string base, base_format;  // "" unless an overlay
};

// A new top for a disk of a running VM (a snapshot): an empty qcow2 made on the disk's current
// top, which becomes its backing file.
struct DiskOverlay {
    std::string disk;  // a disk's name; "" for the root disk
    std::string file;
};

// A file made on a snapshot layer that goes (a snapshot deleted while the VM runs): `child`
// gets the layer's data and reads from `base` (its header naming it `base_name`; "" when the
// layer had no backing file) from then on.
struct LayerMerge {
    std::string child, layer, base, base_name;
};

// Where a runtime's reports go (core::Machines).
class RuntimeSink {
  public:
    virtual void on_pid(const InstanceRef& ref, pid_t pid) = 0;
    virtual void on_running(const InstanceRef& ref, const std::string& reason) = 0;
    virtual void on_paused(const InstanceRef& ref, const std::string& reason) = 0;
    virtual void on_stopping(const InstanceRef& ref, const StoppingFact& fact) = 0;
    virtual void on_exited(const InstanceRef& ref, const ExitFact& fact) = 0;
    virtual void on_responsive(const InstanceRef& ref, bool responsive, const std::string& why) = 0;
    // A disk whose detach passed its deadline has been released by the guest since.
    virtual void on_disk_released(const InstanceRef& ref, const std::string& disk) {
        (void)ref;
        (void)disk;
    }
    // The guest was reset in place (a reboot that keeps the instance).
    virtual void on_reset(const InstanceRef& ref, const std::string& reason) {
        (void)ref;
        (void)reason;
    }

  protected:
    ~RuntimeSink() = default;
};

class Runtime {
  public:
    using Done = std::function<void(const Status&)>;
    virtual ~Runtime() = default;

    virtual MachineType type() const = 0;
    void set_sink(RuntimeSink* sink) { sink_ = sink; }

    // Checks the parts of a spec that are this type's (fields of other types are refused;
    // files are opened with `who`'s rights); may fill defaults in (the built-in guest).
    virtual Status validate(MachineSpec& spec, const Privilege& who) const = 0;
    // What must exist for a new machine of this spec (its image), checked at create only.
    virtual Status admit(const MachineSpec& spec) const = 0;
    // invalid_spec naming what this type cannot do, or ok.
    virtual Status supports(Capability c, const std::string& machine) const = 0;

    // Starts instance `ref` of `spec`. A refusal (a boot file no longer readable) is returned
    // and nothing changes; otherwise the start completes with on_running, or `failed` is called
    // (nothing runs then).
    virtual Status start(const MachineSpec& spec, const InstanceRef& ref, const Privilege& who,
                         Done failed) = 0;
    // Asks the guest to power off; forces the end after `timeout`. `reason` is the core's
    // ("api:stop", "api:restart"); the exit reports why it ended.
    virtual void stop(const InstanceRef& ref, std::chrono::seconds timeout,
                      const std::string& reason) = 0;
    // Ends the instance now; `done` with an error when it cannot be ended (nothing will exit).
    virtual void kill(const InstanceRef& ref, Done done) = 0;
    // Pause and resume complete with on_paused / on_running; `done` reports a failed request.
    virtual void pause(const InstanceRef& ref, Done done) = 0;
    virtual void resume(const InstanceRef& ref, Done done) = 0;
    // Resets the guest in place; `done` when it has been reset.
    virtual void reset(const InstanceRef& ref, Done done) = 0;
    // Finds what an earlier hangard left running for `spec` (stored state `stored`).
    virtual void adopt(const MachineSpec& spec, MachineState stored, const InstanceRef& ref,
                       std::function<void(const Status&, const Adoption&)> done) = 0;
    // Runs a command in the machine: inside the running instance `ref` (`running`), or in its
    // stopped files (the core holds the machine's operation lock meanwhile).
    using ExecDone = std::function<void(const Status&, const ExecResult&)>;
    virtual void exec(const MachineSpec& spec, const InstanceRef& ref, bool running,
                      ExecRequest req, ExecDone done) = 0;
    // Writes a PNG of instance `ref`'s screen to `path` (in the machine's directory); `done`
    // once the file is complete. Asked only of a runtime that supports(Capability::display).
    virtual void screenshot(const InstanceRef& ref, const std::string& path, Done done) {
        (void)ref, (void)path;
        done({Errc::invalid_spec, "this machine has no display"});
    }
    // Console input for the running instance `ref`: bytes for the guest's serial port or the
    // container's console. Output is not the runtime's to deliver: it lands in the machine's
    // console log file (MachineFiles::console_log), which the core tails.
    virtual void console_input(const InstanceRef& ref, std::string_view bytes) {
        (void)ref;
        (void)bytes;
    }
    // The console viewer's window size, where the console is a terminal.
    virtual void console_resize(const InstanceRef& ref, unsigned cols, unsigned rows) {
        (void)ref;
        (void)cols;
        (void)rows;
    }
    // Disks of a running instance: hot-plugged (`done` once the guest has the device), removed
    // (`done` once the device is gone and its nodes deleted: the guest released it; an error
    // when it did not within `deadline`, and the disk stays attached), grown (`bytes`, the new
    // size, the file already grown where the runtime does not grow it).
    virtual void attach_disk(const InstanceRef& ref, const DiskAttachment& disk, Done done) {
        (void)ref, (void)disk;
        done({Errc::invalid_spec, "this machine takes no disks"});
    }
    virtual void detach_disk(const InstanceRef& ref, const std::string& disk,
                             std::chrono::seconds deadline, Done done) {
        (void)ref, (void)disk, (void)deadline;
        done({Errc::invalid_spec, "this machine takes no disks"});
    }
    virtual void resize_disk(const InstanceRef& ref, const std::string& disk, uint64_t bytes,
                             Done done) {
        (void)ref, (void)disk, (void)bytes;
        done({Errc::invalid_spec, "this machine takes no disks"});
    }
    // Puts each overlay on its disk's current top, all at one point in time (a snapshot of a
    // running instance); nothing changes when it fails.
    virtual void snapshot_disks(const InstanceRef& ref, const std::vector<DiskOverlay>& overlays,
                                Done done) {
        (void)ref, (void)overlays;
        done({Errc::invalid_spec, "this machine takes no disk snapshots"});
    }
    // The same, together with the guest's memory (written to `memory_fd`, a file the caller
    // made) at that point; the guest keeps running. `done(disks, memory)`: `disks` failed
    // means nothing changed; `disks` fine and `memory` failed means the overlays are in use
    // but the memory file is not whole.
    using MemoryDone = std::function<void(const Status& disks, const Status& memory)>;
    virtual void snapshot_with_memory(const InstanceRef& ref,
                                      const std::vector<DiskOverlay>& overlays, int memory_fd,
                                      MemoryDone done) {
        (void)ref, (void)overlays, (void)memory_fd;
        done({Errc::invalid_spec, "this machine takes no snapshots with memory"}, {});
    }
    // After a restart: whether the memory save the instance ran last (one an earlier hangard
    // started) completed, waiting for it if it still runs; the guest runs again after it.
    virtual void memory_saved(const InstanceRef& ref,
                              std::function<void(const Status&, bool completed)> done) {
        (void)ref;
        done({}, false);
    }
    // Merges, one after another, each layer into its child where the running instance has the
    // child open (QMP block-stream, driven by its events); `done` with the merges it left to the
    // caller (files the instance does not use), by index.
    using MergeDone = std::function<void(const Status&, std::vector<size_t> not_open)>;
    virtual void merge_layers(const InstanceRef& ref, const std::vector<LayerMerge>& merges,
                              MergeDone done) {
        (void)ref, (void)merges;
        done({Errc::invalid_spec, "this machine takes no disk snapshots"}, {});
    }
    // Puts `spec`'s CD-ROM (an ISO image, or none: ejected) into the running instance's drive.
    virtual void change_cdrom(const InstanceRef& ref, const MachineSpec& spec, Done done) {
        (void)ref, (void)spec;
        done({Errc::invalid_spec, "this machine has no CD-ROM drive"});
    }
    // The instance's record is dropped (the machine is deleted, or ended).
    virtual void forget(const std::string& machine) = 0;
    // Lets every instance run on without hangard (daemon shutdown).
    virtual void detach_all() = 0;

  protected:
    RuntimeSink* sink_ = nullptr;
};

}  // namespace hangar::core
