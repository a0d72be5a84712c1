#pragma once
// Local images, of three kinds: `rootfs` (a container's root file system, pulled from an image
// server — simplestreams or the flat LXC index — or imported from a tarball or squashfs, kept
// in <state dir>/images/NAME/rootfs), `disk` (a VM disk image, qcow2 or raw, in
// images/NAME/disk.qcow2 or disk.raw) and `iso` (images/NAME/image.iso). Disk images and ISOs
// are imported from a file or downloaded from a URL with its SHA-256. A pull runs as an
// operation (progress as `operation.progress` events): catalog, download (resumed or retried
// by the Transfer), SHA-256 check, extraction or copy, and for disk images an inspection by
// `qemu-img info` (refused: a backing file, an external data file, an absurd size) in child
// processes, then one rename into place — an image is registered only whole. Images are never
// written: containers get copies, VMs copy-on-write overlays.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "core/operations.hpp"
#include "hangar/error.hpp"
#include "images/catalog.hpp"
#include "store/db.hpp"

namespace hangar::core {

struct Image : images::ImageInfo {
    std::string name;
    std::string kind = "rootfs";  // "rootfs", "disk" or "iso"
    std::string format;           // disk: "qcow2" or "raw"; iso: "raw"; rootfs: ""
    uint64_t virtual_size = 0;    // disk and iso: the size the guest sees, in bytes
    std::string source_type;      // "simplestreams", "lxc", "file" or "url"
    std::string server, alias, path, url;
    std::string sha256;  // of the archive it was made from
    uint64_t size = 0;   // of that archive, in bytes
    std::string created_at;
    uint32_t owner = 0;
};

// How files reach hangard: HTTP(S) on the reactor (images/fetch.cpp in the daemon).
class Transfer {
  public:
    virtual ~Transfer() = default;
    // What a transfer may reach, and whether it should go on: `allow` is asked about its URL
    // and every redirect before it is followed (empty: anything); once `*cancelled` is true
    // the transfer ends at its next read.
    struct Control {
        std::function<Status(const std::string& url)> allow;
        std::shared_ptr<const bool> cancelled;
    };
    // GET into memory, at most `limit` bytes. A 404 is Errc::not_found.
    using Got = std::function<void(const Status&, std::string body)>;
    virtual void get(const std::string& url, size_t limit, const Control& ctl, Got done) = 0;
    // GET into the file `path`; a partial file left by an earlier attempt is resumed.
    using Progress = std::function<void(uint64_t bytes, uint64_t total)>;
    virtual void download(const std::string& url, const std::string& path, const Control& ctl,
                          Progress progress, std::function<void(const Status&)> done) = 0;
};

struct PullRequest {
    std::string name;
    std::string type;  // "simplestreams", "lxc", "file", "url"
    std::string server, alias, path, url, sha256;
    std::string kind;  // "rootfs", "disk", "iso", or "" to tell by the content
};

// What a file is, by its first bytes: a qcow2 or ISO image, a squashfs, a tar archive
// (compressed or not). `hint` (a request's "kind") settles what content cannot: a raw disk
// image. An error names what was found when it does not fit the hint.
struct ImageContent {
    std::string kind;    // "rootfs", "disk", "iso"
    std::string format;  // rootfs: "tar" or "squashfs"; disk: "qcow2" or "raw"; iso: "raw"
};
Status detect_image_content(int fd, const std::string& hint, ImageContent& out);

// What `qemu-img info --output=json` says of a disk image, checked: the format is the one
// expected, no backing file and no external data file is named, and the virtual size is at
// most kMaxVirtualBytes.
Status check_disk_info(std::string_view info_json, const std::string& format,
                       uint64_t& virtual_size);
inline constexpr uint64_t kMaxVirtualBytes = 64ull << 40;  // 64 TiB

// What depends on an image (machines, disks): "" when nothing, else who, for a message.
using ImageUsers = std::function<std::string(const std::string& image)>;

class Images {
  public:
    // `remotes`: image servers by name (NAME → URL); the only ones a non-admin may pull from.
    Images(boost::asio::io_context& io, store::Db& db, EventBus& events, Operations& ops,
           std::string dir, Transfer* transfer, std::map<std::string, std::string> remotes = {});
    ~Images();

    // Drops records whose directory is gone and removes what interrupted pulls left.
    void load();

    std::vector<const Image*> list() const;
    Status get(const std::string& name, const Image** out) const;
    // Starts a pull or import; `op_id` names its operation. `done` is called when it ends
    // (after operation.done), with the image on success.
    Status pull(const Caller& caller, const PullRequest& req, std::string& op_id,
                std::function<void(const Status&, const Image*)> done);
    Status remove(const Caller& caller, const std::string& name);
    // What a remote server offers (`server`: a configured remote's name or URL; any URL for
    // admins).
    void remote(const Caller& caller, const std::string& server, const std::string& type,
                std::function<void(const Status&, std::vector<images::RemoteImage>)> done);

    std::string to_json(const Image& img) const;
    static std::string remote_json(const std::string& server, const std::string& type,
                                   const std::vector<images::RemoteImage>& list);
    const std::string& dir() const { return dir_; }
    // The layout: images in <state dir>/images, one directory per image, a container image's
    // root file system in its rootfs/.
    static std::string dir_in(const std::string& state_dir) { return state_dir + "/images"; }
    std::string rootfs_dir(const std::string& name) const { return dir_ + "/" + name + "/rootfs"; }
    // The root file system of image `name` (not_found, invalid_name as get(); invalid_spec
    // when the image is of another kind).
    Status rootfs(const std::string& name, std::string& path) const;
    // The file of disk or ISO image `name` (`kind`), as rootfs().
    Status file_of(const std::string& name, const std::string& kind, const Image** img,
                   std::string& path) const;
    static std::string file_name(const Image& img);
    // Asked before an image is deleted.
    void set_users(ImageUsers users) { users_ = std::move(users); }
    size_t pulling() const { return pending_.size(); }
    // Pulls in flight started by `owner`.
    size_t pulling(uint32_t owner) const {
        size_t n = 0;
        for (const auto& [name, pull] : pending_) {
            n += pull.owner == owner;
        }
        return n;
    }
    // Pulls are refused over the owner's quota; none: no quotas.
    void set_quotas(const Quotas* quotas) { quotas_ = quotas; }
    size_t succeeded() const { return succeeded_; }
    size_t failed() const { return failed_; }

    struct Pull;

    const std::map<std::string, std::string>& remotes() const { return remotes_; }

  private:
    void finish(const std::shared_ptr<Pull>& p, const Status& st);
    // The base URL `server` (a remote's name, or a URL) stands for, if `caller` may use it;
    // `ctl.allow` then keeps a non-admin's transfers on the configured remotes' servers.
    Status resolve_server(const Caller& caller, const std::string& server, std::string& base,
                          Transfer::Control& ctl) const;
    // Lets a non-admin's transfer follow redirects only to the configured remotes' servers.
    void keep_on_remotes(Transfer::Control& ctl) const;
    void catalog(const std::string& base, const std::string& type, const Transfer::Control& ctl,
                 std::function<void(const Status&, std::vector<images::RemoteImage>)> done);

    boost::asio::io_context& io_;
    store::Db& db_;
    EventBus& events_;
    Operations& ops_;
    std::string dir_;
    Transfer* transfer_;
    std::map<std::string, std::unique_ptr<Image>> images_;
    std::map<std::string, std::string> remotes_;
    struct Pending {
        uint32_t owner = 0;
        bool admin = false;
    };
    std::map<std::string, Pending> pending_;  // names being pulled, by whom
    const Quotas* quotas_ = nullptr;
    ImageUsers users_;
    size_t succeeded_ = 0, failed_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

inline constexpr size_t kMaxConcurrentPulls = 8;
inline constexpr size_t kMaxPullsPerUser = 2;     // for each non-admin uid
inline constexpr size_t kPullsKeptForAdmins = 2;  // of kMaxConcurrentPulls
inline constexpr uint64_t kMaxArchiveBytes = 64ull << 30;

inline constexpr size_t kMaxCatalogBytes = 64 * 1024 * 1024;

// Validates a server URL given by a user: http:// or https://, a host, no credentials,
// fragments or control characters. `base` gets it with exactly one trailing '/'.
Status check_server_url(const std::string& url, std::string& base);

}  // namespace hangar::core
