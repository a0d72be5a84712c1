#pragma once
// Serial consoles with many viewers. A machine's console stream is its console log file
// (MachineFiles::console_log): QEMU appends the guest's serial output to it, also while
// nobody is connected, and a container's unit appends its console's output. A byte's offset
// in the stream is its offset in that file, so the stream survives a restart of hangard, and
// a viewer that comes back with the offset it had gets exactly the bytes it missed.
//
// While a console has viewers, hangard follows the file (inotify, no polling) into a ring of
// the newest bytes, read once and shared by every viewer; a viewer behind the ring (a replay
// from long ago) is served from the file, a chunk at a time as its socket takes it. A viewer
// that has been live and then falls more than a ring behind is closed as too slow: it never
// slows the guest or the others. Input goes to the machine's runtime.
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"
#include "util/json.hpp"

namespace hangar::core {

struct ConsoleLimits {
    size_t ring_bytes = 1 << 20;  // the newest output kept in memory, per console
    size_t max_viewers = 64;      // per console
    size_t max_viewers_total = 1024;
    size_t default_replay = 4096;    // a viewer that names no offset gets about a screenful
    size_t chunk = 64 * 1024;        // the most bytes handed to a viewer at a time
    size_t input_burst = 64 * 1024;  // input: a token bucket per viewer
    size_t input_rate = 256 * 1024;  // bytes per second
};

// The face's side of one viewer (the console WebSocket).
class ConsoleViewer {
  public:
    virtual ~ConsoleViewer() = default;
    // New output past the viewer's cursor: read() it when the socket can take it.
    virtual void wake() = 0;
    // A control note for the viewer: a JSON object ({"type": "state", ...}).
    virtual void note(std::string json) = 0;
    // The core ends the viewer (the machine was deleted, the viewer is too slow).
    virtual void end(std::string reason) = 0;
};

struct ConsoleViewerInfo {
    std::string id;  // "v12"
    uint32_t uid = 0;
    bool readonly = false;
    std::string since;  // RFC 3339
};

class Consoles {
  public:
    Consoles(boost::asio::io_context& io, Machines& machines, EventBus& events,
             ConsoleLimits limits = {});
    ~Consoles();
    Consoles(const Consoles&) = delete;
    Consoles& operator=(const Consoles&) = delete;

    struct Attached {
        std::string id;
        uint64_t offset = 0;  // the viewer's first byte
        uint64_t end = 0;     // the stream's end when it attached
    };
    // Attaches `viewer` to the console of `name` (not_found for machines the caller cannot
    // see), replaying from `from` (none: the last `default_replay` bytes). A `from` beyond
    // the end is bad_request; too many viewers is unavailable.
    Status attach(const Caller& caller, const std::string& name, std::optional<uint64_t> from,
                  bool readonly, std::weak_ptr<ConsoleViewer> viewer, Attached* out);
    // Forgets the viewer (its socket closed; `reason` goes into console.detached). Unknown
    // ids are ignored.
    void detach(const std::string& id, const std::string& reason);
    // Up to `max` bytes at the viewer's cursor, which moves past them; `offset` is where
    // they start. Null when the viewer has everything there is (wake() comes with more), or
    // when the bytes from its cursor are no longer in the file (then `offset` is where the
    // stream goes on and a gap note has been sent).
    std::shared_ptr<const std::string> read(const std::string& id, size_t max, uint64_t* offset);
    // Input from the viewer to the running machine. Refused for a read-only viewer, a machine
    // that does not run, or input beyond the rate limit.
    Status input(const std::string& id, std::string_view bytes);
    Status resize(const std::string& id, unsigned cols, unsigned rows);

    std::vector<ConsoleViewerInfo> viewers(const std::string& machine) const;
    size_t viewer_count() const { return viewers_.size(); }
    const ConsoleLimits& limits() const { return limits_; }
    // hangar_console_viewers, hangar_console_bytes_total, hangar_console_viewers_closed_total.
    void render_metrics(std::string& out) const;

  private:
    struct Chunk {
        uint64_t offset;
        std::shared_ptr<const std::string> bytes;
    };
    struct Stream {
        std::string machine;
        std::filesystem::path file;
        int wd = -1;       // inotify watch on the machine's directory
        uint64_t end = 0;  // bytes of the file read so far
        std::deque<Chunk> ring;
        size_t ring_bytes = 0;
        std::vector<std::string> viewers;
        uint64_t bytes_total = 0;  // read while followed, for metrics
    };
    struct Viewer {
        std::string machine;
        uint32_t uid = 0;
        bool readonly = false;
        std::string since;
        std::weak_ptr<ConsoleViewer> face;
        uint64_t cursor = 0;
        bool live = false;   // has caught up with the end once
        bool ended = false;  // the core has ended it; it goes when its socket closes
        double tokens = 0;
        std::chrono::steady_clock::time_point refill;
    };

    Stream* stream_of(const std::string& machine);
    Stream& follow(const std::string& machine);
    void unfollow(Stream& s);
    void watch_inotify();
    void on_inotify(const char* buf, size_t n);
    // Reads what the file has past s.end into the ring and wakes the viewers.
    void catch_up(Stream& s);
    void on_event(const Event& e);
    // {"type": ..., <fields>, "offset": end} to every viewer of `s`, after what came before.
    void note_all(Stream& s, json::Writer w);
    void end_viewers(Stream& s, const std::string& reason);
    void publish_viewer(const Viewer& v, const std::string& id, bool attached,
                        const std::string& reason);
    void viewers_changed(const std::string& machine);

    boost::asio::io_context& io_;
    Machines& machines_;
    EventBus& events_;
    ConsoleLimits limits_;
    int inotify_fd_ = -1;
    std::unique_ptr<boost::asio::posix::stream_descriptor> inotify_;
    std::unique_ptr<char[]> inotify_buf_;
    std::unique_ptr<boost::asio::steady_timer> batch_;  // the pause between inotify reads
    std::map<int, std::string> by_wd_;
    std::map<std::string, Stream> streams_;
    std::map<std::string, Viewer> viewers_;
    uint64_t next_viewer_ = 1;
    uint64_t subscription_ = 0;
    uint64_t closed_slow_ = 0;
    uint64_t input_bytes_ = 0;
};

}  // namespace hangar::core
