#pragma once
// Snapshots of a VM (/v1/machines/{name}/snapshots): external qcow2 overlays, one model for a
// running and a stopped VM. A snapshot covers all of a machine's disks at one point in time:
// its root disk (a VM made from an image) and every disk attached to it. Taking one freezes
// each disk's current top file (the snapshot's layer, never written again) and puts a new
// overlay on it, which the VM writes from then on: while the VM runs in one QMP transaction of
// blockdev-snapshot (the runtime's snapshot_disks; the guest is not paused), while it is
// stopped with qemu-img; with the guest's memory as well (a running VM: saved to a file in the
// background while the guest runs on). Restoring a snapshot (stopped) puts a new overlay on
// its layers and drops the tops written since, and with memory starts the guest where it was;
// deleting one merges each of its layers into the files made on it (block-stream by the
// running QEMU, qemu-img rebase otherwise) and removes it. Layers form a tree:
// after a restore, later snapshots stay and can be restored too.
//
// Each change of files is journaled in the store before the first file is touched, and the
// records change in one store transaction at the end, so a daemon killed at any step leaves a
// chain that boots as before; recover() then removes what the step left, or finishes it (a
// delete is finished; a snapshot that QEMU already writes on is kept).
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/disks.hpp"
#include "core/event_bus.hpp"
#include "core/images.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"
#include "store/db.hpp"

namespace hangar::core {

// One disk's part of a snapshot.
struct SnapshotLayer {
    std::string disk;  // a disk's name; "" for the root disk
    // The frozen file; "" for a root disk not made yet (the image as it is).
    std::string file;
    std::string backing, backing_format;  // the file below it ("" when none)
};

struct Snapshot {
    std::string machine, name, created_at, parent;
    bool live = false;  // taken while the VM ran
    std::vector<SnapshotLayer> layers;
    // With the guest's memory: its file (in the machine's directory), its size, and the
    // hardware the guest had (a restore with memory needs the same).
    std::string memory;
    uint64_t memory_bytes = 0;
    std::string hardware;
};

// POST /v1/machines/{name}/snapshots: {"name", "memory", "description"}.
struct SnapshotRequest {
    std::string name, description;
    bool memory = false;
    // Called once the create is under way (every refusal is behind it); `done` follows.
    std::function<void()> accepted;
};
Status decode_snapshot_request(std::string_view body, SnapshotRequest& out);
// POST .../restore: no body, {} or {"memory": false} (the disks only of a snapshot with memory).
Status decode_restore_request(std::string_view body, bool& memory);

inline constexpr size_t kMaxSnapshotsPerMachine = 64;

class Snapshots {
  public:
    using Done = std::function<void(const Status&, const Snapshot*)>;
    Snapshots(boost::asio::io_context& io, store::Db& db, EventBus& events, Machines& machines,
              Disks& disks, Images& images);
    ~Snapshots();

    void load();
    // Ends what a journaled step left (after adoption: QEMU's locks tell what it uses);
    // `done` when every machine is settled.
    void recover(std::function<void()> done);

    // Oldest first.
    Status list(const Caller& caller, const std::string& machine,
                std::vector<const Snapshot*>& out) const;
    Status get(const Caller& caller, const std::string& machine, const std::string& name,
               const Snapshot** out) const;
    // `done` never from inside the call.
    void create(const Caller& caller, const std::string& machine, SnapshotRequest req, Done done);
    // With `memory` (and a snapshot that has it) the machine then starts from the saved
    // guest; `done` once it runs. A running or paused VM is killed first and runs again after
    // (booting from the snapshot's disks, or resuming its saved guest).
    void restore(const Caller& caller, const std::string& machine, const std::string& name,
                 bool memory, Done done);
    void remove(const Caller& caller, const std::string& machine, const std::string& name,
                Done done);

    std::string to_json(const Snapshot& s) const;
    // The top file of `machine`'s root disk when snapshots moved it; "" when it is the default.
    std::string root_disk(const std::string& machine) const;
    // The memory file `machine`'s start is to resume from, once ("": it boots): a restore's,
    // or a clone's warm start (MachineFiles::warm_start, removed once QEMU has it open).
    std::string take_resume(const std::string& machine);
    // What a guest saved in `machine` needs to find again (hardware_of); "" for no machine.
    std::string hardware(const std::string& machine) const;
    // Whether the guest saved in snapshot `s` (one with memory) can run on `m` as it is now:
    // invalid_state when the hardware differs, internal when the memory file is missing.
    Status guest_fits(const Machine& m, const Snapshot& s) const;
    // "snapshots s1, s2 of web" when snapshots hold layers of `disk`; "" when none.
    std::string users_of_disk(const std::string& disk) const;
    // hangar_snapshots{machine}.
    void render_metrics(std::string& out) const;

    struct Journal;
    struct Head;
    struct Volume;

  private:
    struct Step;
    Status owned(const Caller& caller, const std::string& machine, const Machine** out) const;
    // Whether `m` can go back to `s` (its disks still attached; with `memory`, its hardware
    // the saved guest's): the volumes it restores, or the refusal.
    Status restorable(const Machine& m, const Snapshot& s, bool memory,
                      std::vector<Volume>& vols) const;
    // Whether `machine` runs an instance that is running or paused.
    bool runs_now(const std::string& machine, const Machine** out) const;
    // restore() of a stopped VM; `start_after`: it ran before, and boots again after.
    void restore_stopped(const Caller& caller, const std::string& machine, const std::string& name,
                         bool memory, bool start_after, Done done);
    // The disks a snapshot of `m` covers now, with their tops.
    Status volumes(const Machine& m, std::vector<Volume>& out) const;
    // What a saved guest needs to find again: CPUs, memory, firmware, disks in their order.
    std::string hardware_of(const Machine& m) const;
    // After an interrupted memory save: whether `file` is whole (the machine's QEMU says its
    // last save completed; one still running is waited for), the guest running again either way.
    void settle_memory(const std::string& machine, const std::string& file,
                       std::function<void(bool whole)> done);
    void store_head(const std::string& machine);
    void store_snapshot(const Snapshot& s);
    // The journaled create's records: the snapshot exists from here on.
    void commit_create(const std::string& machine, const Journal& j);
    // The tops of the journal in the records (Disks', the root's), their backings the layers.
    void set_tops(const std::string& machine, const Journal& j);
    // Disks' record of which layer files each disk of `machine` has.
    void sync_disk_layers(const std::string& machine);
    void finish(const std::shared_ptr<Step>& step, const Status& st);
    void run_qemu_img(std::vector<std::string> argv,
                      std::function<void(const Status&, const std::string&)> done);
    // qemu-img info of `file`: its virtual size; `locked` when a QEMU holds it.
    void probe(const std::string& file,
               std::function<void(const Status&, uint64_t size, bool locked)> done);
    void create_files(const std::shared_ptr<Step>& step, size_t i, std::function<void()> next);
    void rebase_children(const std::shared_ptr<Step>& step, size_t i, std::function<void()> next);
    void cleanup(const std::string& machine);
    void recover_one(const std::string& machine, std::function<void()> done);
    void machine_deleted(const std::string& machine);

    boost::asio::io_context& io_;
    store::Db& db_;
    EventBus& events_;
    Machines& machines_;
    Disks& disks_;
    Images& images_;
    // machine -> name -> snapshot; machine -> its head (tops, current, journal).
    std::map<std::string, std::map<std::string, Snapshot>> snaps_;
    std::map<std::string, std::unique_ptr<Head>> heads_;
    std::set<std::string> recovering_;
    std::map<std::string, std::string> resume_;  // machine -> memory file for its next start
    uint64_t subscription_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace hangar::core
