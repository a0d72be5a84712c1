#pragma once
// wirt's file spool, a face of its own beside HTTP and D-Bus (`hangard --spool-dir DIR`).
// DIR/UID is the tree of the user UID (a directory that user owns); in it:
//   service/vm/NAME/config                 a JSON spec: creates NAME, or updates it (PATCH)
//   service/vm/NAME/{start,stop,destroy}   an empty file is the command
//   info/vm/NAME/status.json               the machine's JSON, kept current from events
//   logs/vm/NAME.log, logs/spool.log       events and every refusal, one JSON line each
// Files in service/ are taken (oldest first, then removed) and acted on as a unix-socket
// caller of the uid that owns them: the rules are core::Machines', none are here. Watched
// with inotify on the reactor; nothing is read or written outside a tree (tree_files.hpp).
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>

#include "core/admin_group.hpp"
#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"
#include "spool/tree_files.hpp"

namespace hangar::spool {

// Bounds on what one tree can make hangard do.
inline constexpr off_t kMaxConfigBytes = 64 * 1024;
inline constexpr size_t kMaxMachineDirs = 256;  // watched service/vm/NAME per tree
inline constexpr size_t kMaxDirEntries = 4096;  // looked at per directory scan
inline constexpr size_t kWorkPerTurn = 64;      // files or directories per reactor turn
inline constexpr size_t kMaxQueued = 4096;      // waiting; past it, a rescan once drained
inline constexpr off_t kLogRotateBytes = 1 << 20;
// A file a scan finds (at start, after an overflow, in a directory moved in) that changed in
// the last kSettle may still be being written: it is taken once it is that old.
inline constexpr std::chrono::milliseconds kSettle{200};

class Spool {
  public:
    Spool(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
          const core::AdminGroup& admins, std::string dir);
    ~Spool();
    Spool(const Spool&) = delete;
    Spool& operator=(const Spool&) = delete;

    // Opens DIR (created 0755 when missing), starts watching and takes what is there.
    Status start();

  private:
    struct Tree {
        Fd fd;
        Owner owner;
        size_t machine_dirs = 0;
    };
    struct Watch {
        uid_t uid;
        std::string rel;  // "", "service", "service/vm" or "service/vm/NAME"
        int level;        // 0 .. 3, as above
    };
    // The command files of one service/vm/NAME: which are ready to take, one in flight.
    // How a file came to be ready: only its creation was seen (a plain file is then taken
    // at its close), a scan found it (taken once it has not changed for kSettle), or its
    // close or rename was seen.
    enum class Seen { created, scanned, written };
    struct Commands {
        std::map<std::string, Seen> ready;
        bool busy = false;
        bool retry_armed = false;  // a timer takes a scanned file again once it settled
    };
    using Key = std::pair<uid_t, std::string>;  // (uid, NAME) or (uid, rel) for scans
    struct Work {
        bool scan;  // scan directory `key.second`, else take the commands of machine key.second
        Key key;
    };

    void arm();
    void on_readable();
    void on_tree_event(uint32_t mask, const std::string& name);
    void on_watch_event(int wd, uint32_t mask, const std::string& name);
    // A new tree, or one known and `rescan`: scanned (its machines' status written if new).
    void add_tree(const std::string& name, bool rescan);
    void drop_tree(uid_t uid);
    void rescan_all();
    void queue(bool scan, const Key& key);
    void run_work();
    void scan(uid_t uid, const std::string& rel);
    void take(uid_t uid, const std::string& name);
    // Hands the checked file `file` of service/vm/NAME to the core; true when that runs on.
    bool handle(uid_t uid, const std::string& name, int dir, const std::string& file);
    void apply_config(uid_t uid, const std::string& name, const std::string& body);
    void finished(uid_t uid, const std::string& name, const std::string& file, const Status& st);
    core::Caller caller(uid_t uid) const;

    void on_event(const core::Event& ev);
    void post_flush();
    void flush();
    void write_status(Tree& tree, const std::string& name);
    // One line in logs/vm/NAME.log (or logs/spool.log for an empty `name`).
    void log(uid_t uid, const std::string& name, const std::string& line);
    void refuse(uid_t uid, const std::string& name, const std::string& file, const Status& st);
    void note(uid_t uid, const std::string& name, const char* type, const std::string& file);

    boost::asio::io_context& io_;
    core::Machines& machines_;
    core::EventBus& events_;
    const core::AdminGroup& admins_;
    std::string dir_;
    Fd dir_fd_;
    boost::asio::posix::stream_descriptor inotify_;
    int dir_wd_ = -1;
    uint64_t subscription_ = 0;
    std::map<uid_t, Tree> trees_;
    std::set<std::string> warned_;  // DIR entries that are not trees
    std::map<int, Watch> watches_;
    std::map<Key, Commands> commands_;
    std::deque<Work> work_;
    std::set<std::pair<bool, Key>> queued_;
    bool work_posted_ = false;
    bool rescan_due_ = false;
    std::set<Key> pending_;  // machines whose status.json is due
    bool flush_posted_ = false;
    std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace hangar::spool
