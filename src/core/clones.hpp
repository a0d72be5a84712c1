#pragma once
// Clones of a VM (POST /v1/machines/{name}/clone): a new machine of the caller's with the
// source's spec (a new UUID) on copies of its disks at one point in time: the disks as they
// are (the source stopped), or as a snapshot holds them (the source in any state: a snapshot's
// layers are never written). Each disk becomes one file of the clone's own: the source file
// copied (reflinked where the file system can), then put straight on the disk's base image
// with qemu-img rebase, which writes into the copy what the layers between held; the clone
// depends on no file of the source's, so either may be deleted. A snapshot with memory gives
// the clone a warm start: its first start resumes the saved guest instead of booting it.
//
// The copies are made under temporary names (the root disk and the memory in a staging
// directory next to the machines' directories, attached disks in their pools), and the
// machine is registered only when all are whole; a failure leaves nothing, and a daemon that
// ends meanwhile leaves temporary files that the next start removes (load()).
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>

#include "core/disks.hpp"
#include "core/machines.hpp"
#include "core/snapshots.hpp"
#include "hangar/error.hpp"

namespace hangar {
struct CaptureResult;
}

namespace hangar::core {

// {"name": "web2", "snapshot": "s1"}.
struct CloneRequest {
    std::string name, snapshot;
    // Called once the clone is under way (every refusal is behind it); `done` follows.
    std::function<void()> accepted;
    // As it advances: what it copies now, and the bytes of data copied so far.
    std::function<void(const std::string& phase, uint64_t bytes)> progress;
};
Status decode_clone_request(std::string_view body, CloneRequest& out);

class Clones {
  public:
    using Done = std::function<void(const Status&, const Machine*)>;
    Clones(boost::asio::io_context& io, Machines& machines, Disks& disks, Snapshots& snapshots,
           Images& images, std::filesystem::path machines_dir);
    ~Clones();

    // After the machines are loaded: removes what clones a daemon's end cut off (their staging
    // directories; a clone registered but not yet whole, with the disks made for it).
    void load();
    // `done` never from inside the call.
    void clone(const Caller& caller, const std::string& source, CloneRequest req, Done done);

    struct Job;

  private:
    void copy_next(const std::shared_ptr<Job>& job, size_t i);
    // One child process of the clone's (a failure ends the clone), or several in turn.
    void run_step(const std::shared_ptr<Job>& job, std::vector<std::string> argv,
                  std::function<void(const CaptureResult&)> next);
    void run_steps(const std::shared_ptr<Job>& job, std::vector<std::vector<std::string>> steps,
                   size_t k, std::function<void()> then);
    void register_clone(const std::shared_ptr<Job>& job);
    void attach_next(const std::shared_ptr<Job>& job, size_t i);
    void finish(const std::shared_ptr<Job>& job, const Status& st, const Machine* m);

    boost::asio::io_context& io_;
    Machines& machines_;
    Disks& disks_;
    Snapshots& snapshots_;
    Images& images_;
    std::filesystem::path machines_dir_;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace hangar::core
