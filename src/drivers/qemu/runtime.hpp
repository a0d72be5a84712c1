#pragma once
// VMs: core::Runtime over QEMU. Every QMP word of hangar is here or below (qemu_process,
// qmp::Client): cont, stop, system_powerdown, system_reset, quit, the events STOP, RESUME,
// SHUTDOWN, GUEST_PANICKED, query-status at adoption, and screendump. QEMU starts stopped (-S) with
// -no-shutdown; `cont` starts the guest and its RESUME is `running`. A graceful stop is
// system_powerdown, then `quit` at the timeout, then SIGKILL when QEMU does not quit within the
// command deadline.
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/runtime.hpp"
#include "drivers/qemu/argv.hpp"
#include "drivers/qemu/console_link.hpp"
#include "drivers/qemu/firmware.hpp"
#include "drivers/qemu/qemu_process.hpp"

namespace hangar::qemu {

struct RuntimeConfig {
    std::filesystem::path machines_dir;  // <state dir>/machines
    Settings qemu;
    BootSpec default_boot;  // the built-in guest; empty kernel when none was found
    std::vector<std::string> firmware_dirs = kFirmwareDirs;  // QEMU's firmware descriptors
};

// A local disk image (core::Images, kind disk), as a VM's root disk uses it.
struct DiskImage {
    std::string path, format;
    uint64_t virtual_size = 0;
};
// `kind`: "disk" (a root disk's base) or "iso" (a CD-ROM).
using DiskImageLookup =
    std::function<Status(const std::string& image, const std::string& kind, DiskImage& out)>;
// The disks attached to a machine (core::Disks), which it boots with.
using AttachedDisks = std::function<std::vector<core::DiskAttachment>(const std::string& machine)>;

// What query-status of an adopted QEMU means, given the state hangard stored for it.
struct AdoptPlan {
    core::AdoptFact fact = core::AdoptFact::unresponsive;
    std::string reason;
    bool cont = false;   // finish an interrupted start
    bool quit = false;   // it has ended as a guest: let QEMU go
    bool crash = false;  // ... and the end is a crash
};
AdoptPlan plan_adoption(const std::string& status, MachineState stored);

class QemuRuntime final : public core::Runtime {
  public:
    QemuRuntime(boost::asio::io_context& io, RuntimeConfig cfg);
    ~QemuRuntime() override;

    core::MachineType type() const override { return core::MachineType::vm; }
    // Where "image" finds disk images; none: a VM cannot name one.
    void set_image_lookup(DiskImageLookup lookup) { image_lookup_ = std::move(lookup); }
    void set_attached_disks(AttachedDisks disks) { attached_disks_ = std::move(disks); }
    // Where a VM's root disk's top is when snapshots moved it ("": the default).
    void set_root_disk(std::function<std::string(const std::string& machine)> f) {
        root_disk_ = std::move(f);
    }
    // The memory file a machine's next start resumes from (a snapshot restored with its
    // memory), taken by that start: "" when it boots.
    void set_resume_from(std::function<std::string(const std::string& machine)> f) {
        resume_from_ = std::move(f);
    }
    // A VM with "image" gets disk_gib filled in (the image's size, rounded up to GiB).
    Status validate(MachineSpec& spec, const core::Privilege& who) const override;
    // The image exists, and the machine's file system has room for its root disk.
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
    // blockdev-add (the base image's nodes, read-only, then the disk's) and device_add scsi-hd;
    // what was added is deleted again when a step fails.
    void attach_disk(const core::InstanceRef& ref, const core::DiskAttachment& disk,
                     Done done) override;
    // device_del, then on DEVICE_DELETED (no polling) blockdev-del of its nodes.
    void detach_disk(const core::InstanceRef& ref, const std::string& disk,
                     std::chrono::seconds deadline, Done done) override;
    // One QMP transaction of blockdev-snapshot, each overlay added first (blockdev-add with no
    // backing: its header names the old top, relative to itself); the added nodes are deleted
    // again when the transaction fails.
    void snapshot_disks(const core::InstanceRef& ref,
                        const std::vector<core::DiskOverlay>& overlays, Done done) override;
    // Overlays added, then: stop, the transaction, getfd + migrate to the file with the
    // background-snapshot capability (QEMU resumes the guest as soon as it tracks writes to
    // its RAM), MIGRATION completed. STOP/RESUME of that pause are not state changes.
    void snapshot_with_memory(const core::InstanceRef& ref,
                              const std::vector<core::DiskOverlay>& overlays, int memory_fd,
                              MemoryDone done) override;
    // query-migrate (MIGRATION events while it is active), then cont when the guest is paused.
    void memory_saved(const core::InstanceRef& ref,
                      std::function<void(const Status&, bool completed)> done) override;
    // query-named-block-nodes finds the files' nodes; block-stream of each layer into its
    // child (base-node: the layer's backing, backing-file: its name relative to the child),
    // ended by BLOCK_JOB_COMPLETED; the layer's own nodes are deleted where hangard added them.
    void merge_layers(const core::InstanceRef& ref, const std::vector<core::LayerMerge>& merges,
                      MergeDone done) override;
    // block_resize of the disk's top node (QEMU grows the file).
    void resize_disk(const core::InstanceRef& ref, const std::string& disk, uint64_t bytes,
                     Done done) override;
    // blockdev-change-medium of the ISO (read-only), or eject.
    void change_cdrom(const core::InstanceRef& ref, const MachineSpec& spec, Done done) override;
    // QMP screendump (format png).
    void screenshot(const core::InstanceRef& ref, const std::string& path, Done done) override;
    void forget(const std::string& machine) override;
    void detach_all() override;

  private:
    // One QEMU of a machine.
    struct Vm {
        uint64_t generation = 0;
        std::shared_ptr<QemuProcess> proc;  // none while it is being launched
        bool kill_pending = false;          // killed while being launched
        std::string reason;                 // why it is ending, as far as QEMU tells
        bool crash = false;
        bool quit_sent = false;
        std::unique_ptr<boost::asio::steady_timer> timer;  // stop timeout, quit deadline
        ConsoleLink console;                               // input to the serial port
        // Detaches waiting for DEVICE_DELETED, by device id: what to do then.
        std::map<std::string, std::function<void()>> unplugging;
        // Block jobs running (block-stream), by job id: what to do when they end.
        std::map<std::string, std::function<void(const Status&)>> jobs;
        // A memory save running: told its end ("completed", "failed", "cancelled").
        std::function<void(const std::string& status)> migration;
        bool quiet_pause = false;  // a memory save's STOP and RESUME are not state changes
        std::chrono::steady_clock::time_point paused_at;  // that STOP
        bool incoming = false;                            // started from a memory file
    };
    // snapshot_with_memory's end: the guest running again (cont unless QEMU resumed it).
    void end_memory_save(const core::InstanceRef& ref, const Status& disks, const Status& memory,
                         MemoryDone done);
    // A snapshot's QMP: blockdev-add of each overlay ("backing": null) and the
    // transaction's blockdev-snapshot actions putting them on the devices' current nodes.
    struct OverlaySteps {
        std::vector<std::pair<std::string, std::string>> adds;
        std::vector<std::string> added;  // their node names
        std::string actions;
    };
    static Status overlay_steps(const std::vector<core::DiskOverlay>& overlays,
                                const std::map<std::string, std::string>& tops, OverlaySteps& out);
    // merge_layers once no earlier merge runs.
    void merge_now(const core::InstanceRef& ref, const std::vector<core::LayerMerge>& merges,
                   MergeDone done);
    // Runs QMP commands one after another; `done` with the first failure (and its index).
    void run_steps(const core::InstanceRef& ref,
                   std::vector<std::pair<std::string, std::string>> steps,
                   std::function<void(const Status&, size_t failed_at)> done);
    // Kernel, initrd and disk, opened with `who`'s rights.
    struct BootFiles;
    Status open_boot_files(const MachineSpec& spec, const core::Privilege& who,
                           BootFiles& out) const;
    Vm* find(const core::InstanceRef& ref);
    // The node each block device writes (query-block), by device id ("root", a disk's device).
    void top_nodes(const core::InstanceRef& ref,
                   std::function<void(const Status&, std::map<std::string, std::string>)> done);
    Status lookup_image(const std::string& name, const std::string& kind, DiskImage& out) const;
    // Makes the root disk of a VM from an image (qemu-img create, a child process) unless it
    // exists; `done` with the chain to boot from.
    void launch(const MachineSpec& spec, const core::InstanceRef& ref, const BootFiles& files,
                const RootDisk& root, const UefiFlash& uefi, Done failed);
    // A UEFI VM's own variables store, copied from the firmware's template unless it exists.
    void prepare_uefi_vars(const MachineSpec& spec,
                           std::function<void(const Status&, const UefiFlash&)> done);
    void prepare_root_disk(const MachineSpec& spec,
                           std::function<void(const Status&, const RootDisk&)> done);
    QemuProcess::Callbacks callbacks(const core::InstanceRef& ref);
    void on_event(const core::InstanceRef& ref, std::string_view event, const std::string& detail);
    void force_quit(Vm& vm, const core::InstanceRef& ref, const std::string& why);
    // QMP command `command` for a request of the core; `done` gets QMP's error, if any.
    void command(const core::InstanceRef& ref, const char* command, Done done);
    void post(Done done, Status st);

    boost::asio::io_context& io_;
    RuntimeConfig cfg_;
    DiskImageLookup image_lookup_;
    AttachedDisks attached_disks_;
    std::function<std::string(const std::string&)> root_disk_;
    std::function<std::string(const std::string&)> resume_from_;
    Firmware uefi_;
    Status uefi_status_;  // why there is no UEFI firmware
    std::map<std::string, Vm> vms_;
};

}  // namespace hangar::qemu
