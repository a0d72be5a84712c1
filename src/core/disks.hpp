#pragma once
// Disks (/v1/disks): volumes in storage pools, each one file of its owner's, qcow2 or raw, made
// empty, as a copy-on-write overlay on a disk image (its backing file named relative to the
// disk, so a moved state dir still works), or as a copy of another disk or of a file the caller
// names (opened as the caller, inspected like an imported image). A disk grows (never shrinks),
// live when attached to a running VM; it is deleted only when no machine uses it. A disk is
// attached to at most one VM: cold while the VM is stopped (it boots with it), hot-plugged
// while it runs (the runtime's attach_disk / detach_disk). Every file step is a child process
// (qemu-img, cp) on hangard's own copy, in a temporary name in the pool; a disk is registered
// only whole, and a failed create leaves nothing. Users see their own disks; admins all.
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/event_bus.hpp"
#include "core/images.hpp"
#include "core/machines.hpp"
#include "core/pools.hpp"
#include "core/runtime.hpp"
#include "hangar/error.hpp"
#include "store/db.hpp"

namespace hangar::core {

class Quotas;

struct Disk {
    std::string name, pool, format, path, created_at;
    uint32_t owner = 0;
    uint64_t size_bytes = 0;
    std::string source_type;        // "empty", "image", "disk", "file"
    std::string source;             // the image's or disk's name, or the file's path
    std::string base, base_format;  // an overlay on a disk image: the image's file
    std::string attached_to;        // a VM's name, or ""
    // Snapshot layers (core::Snapshots) under `path`, which is then the top a VM writes: the
    // files of the disk's chain besides the top, removed with the disk.
    std::vector<std::string> layers;
};

// POST /v1/disks: {"name", "pool", "size_gib", "source": {"image"|"disk"|"file": ...}}.
struct DiskRequest {
    std::string name, pool = "default";
    uint32_t size_gib = 0;  // 0: the source's size (required without a source)
    std::string source_type = "empty", source;
};
Status decode_disk_request(std::string_view body, DiskRequest& out);

inline constexpr size_t kMaxDisks = 4096;
inline constexpr auto kDetachDeadline = std::chrono::seconds(10);

class Disks {
  public:
    using Done = std::function<void(const Status&, const Disk*)>;
    Disks(boost::asio::io_context& io, store::Db& db, EventBus& events, Pools& pools,
          Images& images, Machines& machines);
    ~Disks();

    // Reads the store; drops records whose file is gone; removes what interrupted creates
    // left in the pools.
    void load();

    std::vector<const Disk*> list(const Caller& caller) const;
    // invalid_name, or not_found (also for another user's disk).
    Status get(const Caller& caller, const std::string& name, const Disk** out) const;
    // `done` once the disk exists, never from inside the call.
    void create(const Caller& caller, DiskRequest req, Done done);
    // Grows the disk to `size_gib` (offline with qemu-img resize, or live with block_resize).
    void resize(const Caller& caller, const std::string& name, uint32_t size_gib, Done done);
    Status remove(const Caller& caller, const std::string& name);
    // Attaches to / detaches from VM `machine`, hot-plugged while it runs.
    void attach(const Caller& caller, const std::string& machine, const std::string& disk,
                Done done);
    void detach(const Caller& caller, const std::string& machine, const std::string& disk,
                Done done);

    // A copy of disk `from` that another part of hangard makes (core::Clones), in three steps:
    // begin_copy reserves `name` and gives the temporary file in from's pool to make it in
    // (refused when `bytes` do not fit in the pool's free space); end_copy moves the whole file
    // into place and registers the disk as the caller's (a copy of `from`, on its base image);
    // abort_copy removes the file and frees the name. A daemon's end in between leaves only the
    // temporary file, which load() removes.
    Status begin_copy(const Caller& caller, const std::string& name, const std::string& from,
                      uint64_t bytes, std::string& tmp);
    Status end_copy(const Caller& caller, const std::string& name, const std::string& from,
                    const std::string& tmp, uint64_t size_bytes, const Disk** out);
    void abort_copy(const std::string& name, const std::string& tmp);

    // The guest of `machine` released `disk` after its detach's deadline.
    void released(const std::string& machine, const std::string& disk);
    // What the QEMU runtime boots `machine` with.
    std::vector<DiskAttachment> attached(const std::string& machine) const;
    // The machine JSON's "disks" items of `machine`.
    std::vector<std::string> machine_items(const std::string& machine) const;
    // Disks that are overlays on image `image`: "" when none.
    std::string users_of_image(const std::string& image) const;

    // core::Snapshots: busy while the disk is being changed or its detach is pending.
    Status usable(const std::string& name) const;
    // The disk's top is now `path` (a qcow2 made on its former top or on a snapshot's layer).
    void set_top(const std::string& name, const std::string& path);
    // `files` are snapshot layers of the disk (added once), or one is merged away.
    void add_layers(const std::string& name, const std::vector<std::string>& files);
    void drop_layer(const std::string& name, const std::string& file);
    // Who holds layers of a disk: detaching it is refused while the answer is not "".
    void set_snapshot_users(std::function<std::string(const std::string& disk)> f) {
        snapshot_users_ = std::move(f);
    }

    // Creates, copies and growths are held to the owner's disk quota (core::Quotas).
    void set_quotas(const Quotas* q) { quotas_ = q; }
    // The size of the disks `uid` owns, and of those being made for it.
    uint64_t bytes_of(uint32_t uid) const;

    std::string to_json(const Disk& d) const;
    // hangar_disks, hangar_disk_bytes{disk} (virtual size).
    void render_metrics(std::string& out) const;

  private:
    Status visible(const Caller& caller, const std::string& name, Disk** out) const;
    // The end of a change to `name` that was in flight: the name is not busy any more; the
    // disk, or nullptr once `done` has the error (or the disk went meanwhile).
    Disk* settled(const std::string& name, const Status& st, const Done& done);
    // `done(st, nullptr)` after this call returns.
    void answer_later(Done done, Status st);
    void store(const Disk& d);
    void finish_create(const std::shared_ptr<struct DiskMake>& mk, const Status& st);
    // A machine of `caller`'s that disks may be attached to, and whether it runs (holds an
    // instance the runtime can hot-plug into).
    Status machine_for(const Caller& caller, const std::string& name, const Machine** out) const;
    // The disk is no longer attached (`reason` for the events).
    void detached(const std::string& name, const std::string& reason);
    // conflict when `caller`'s disks would pass the disk quota by growing `more` bytes.
    Status within_quota(const Caller& caller, uint64_t more) const;
    // conflict when a disk `name` exists or is being made; busy at kMaxDisks.
    Status name_free(const std::string& name) const;
    // A new disk `name` for `caller` in `pool`, of `size_bytes` (its quota) holding `data`
    // bytes (`what` it is, for the free-space refusal): refused when a file of its name is in
    // the pool, the data does not fit, or the quota would pass; else the name is busy, counted
    // as the caller's, and `tmp` is the file to make it in.
    Status reserve(const Caller& caller, const Pool& pool, const std::string& name,
                   const std::string& format, const std::string& what, uint64_t data,
                   uint64_t size_bytes, std::string& tmp);

    boost::asio::io_context& io_;
    store::Db& db_;
    EventBus& events_;
    Pools& pools_;
    Images& images_;
    Machines& machines_;
    std::map<std::string, Disk> disks_;
    std::set<std::string> busy_;  // disks being made, grown, attached or detached
    // Detaches whose guest has not released the disk within the deadline: complete when it
    // does (released()) or when the VM ends.
    std::set<std::string> pending_detach_;
    std::function<std::string(const std::string&)> snapshot_users_;
    const Quotas* quotas_ = nullptr;
    // Disks being made (creates, copies): owner and size, counted as the owner's.
    std::map<std::string, std::pair<uint32_t, uint64_t>> making_;
    uint64_t subscription_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace hangar::core
