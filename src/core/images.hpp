#pragma once
// Local images: container root file systems pulled from an image server (simplestreams or the
// flat LXC index) or imported from a local tarball, kept under <state dir>/images/NAME/rootfs
// and recorded in the store. A pull runs as an operation (progress as `operation.progress`
// events): catalog, download (resumed or retried by the Transfer), SHA-256 check and
// extraction in child processes, then one rename into place — an image is registered only
// whole. Images are never modified; machines get copies.
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
    std::string source_type;  // "simplestreams", "lxc" or "file"
    std::string server, alias, path;
    std::string sha256;  // of the archive it was made from
    uint64_t size = 0;   // of that archive, in bytes
    std::string created_at;
    uint32_t owner = 0;
};

// How files reach hangard: HTTP(S) on the reactor (images/fetch.cpp in the daemon).
class Transfer {
  public:
    virtual ~Transfer() = default;
    // GET into memory, at most `limit` bytes. A 404 is Errc::not_found.
    using Got = std::function<void(const Status&, std::string body)>;
    virtual void get(const std::string& url, size_t limit, Got done) = 0;
    // GET into the file `path`; a partial file left by an earlier attempt is resumed.
    using Progress = std::function<void(uint64_t bytes, uint64_t total)>;
    virtual void download(const std::string& url, const std::string& path, Progress progress,
                          std::function<void(const Status&)> done) = 0;
};

struct PullRequest {
    std::string name;
    std::string type;  // "simplestreams", "lxc", "file"
    std::string server, alias, path;
};

class Images {
  public:
    Images(boost::asio::io_context& io, store::Db& db, EventBus& events, Operations& ops,
           std::string dir, Transfer* transfer);
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
    // What a remote server offers.
    void remote(const std::string& server, const std::string& type,
                std::function<void(const Status&, std::vector<images::RemoteImage>)> done);

    std::string to_json(const Image& img) const;
    static std::string remote_json(const std::string& server, const std::string& type,
                                   const std::vector<images::RemoteImage>& list);
    const std::string& dir() const { return dir_; }
    size_t pulling() const { return pending_.size(); }
    size_t succeeded() const { return succeeded_; }
    size_t failed() const { return failed_; }

    struct Pull;

  private:
    void finish(const std::shared_ptr<Pull>& p, const Status& st);

    boost::asio::io_context& io_;
    store::Db& db_;
    EventBus& events_;
    Operations& ops_;
    std::string dir_;
    Transfer* transfer_;
    std::map<std::string, std::unique_ptr<Image>> images_;
    std::set<std::string> pending_;  // names being pulled
    size_t succeeded_ = 0, failed_ = 0;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

inline constexpr size_t kMaxConcurrentPulls = 4;
inline constexpr size_t kMaxCatalogBytes = 64 * 1024 * 1024;

// Validates a server URL given by a user: http:// or https://, a host, no credentials,
// fragments or control characters. `base` gets it with exactly one trailing '/'.
Status check_server_url(const std::string& url, std::string& base);

}  // namespace hangar::core
