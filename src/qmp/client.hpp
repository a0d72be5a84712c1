#pragma once
// Asynchronous QMP client over a unix stream socket. It knows nothing about machines:
// greeting -> qmp_capabilities -> id-tagged commands (each with a deadline) and events
// (messages with an "event" key) delivered to a callback. Anything that is not a QMP message
// (invalid JSON, a line over the size limit) drops the connection with a reason.
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

#include <simdjson.h>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>

#include "hangar/error.hpp"
#include "util/metrics.hpp"

namespace hangar::qmp {

struct Options {
    size_t max_line = 1 << 20;                           // bytes in one message
    std::chrono::milliseconds handshake_timeout{10000};  // greeting + capabilities
};

// Latency of every QMP command answered (all clients), for /v1/metrics.
metrics::Histogram& command_latency();

class Client : public std::enable_shared_from_this<Client> {
  public:
    using Socket = boost::asio::local::stream_protocol::socket;
    // On success `result` is the command's "return" value, serialized.
    using ReplyHandler = std::function<void(const Status& status, std::string_view result)>;
    // `message` is the whole event message; valid only during the call.
    using EventHandler =
        std::function<void(std::string_view event, simdjson::dom::element message)>;
    using CloseHandler = std::function<void(const std::string& reason)>;
    using ResponsiveHandler = std::function<void(bool responsive)>;

    static std::shared_ptr<Client> create(Socket socket, Options options = {});
    ~Client();

    void on_event(EventHandler h) { on_event_ = std::move(h); }
    void on_close(CloseHandler h) { on_close_ = std::move(h); }
    // Told false when a command misses its deadline, true again when QEMU next speaks.
    void on_responsive(ResponsiveHandler h) { on_responsive_ = std::move(h); }

    // Starts reading; waits for the greeting and negotiates capabilities. `done` is called
    // exactly once.
    void handshake(std::function<void(const Status&)> done);
    // Sends {"execute": command, "arguments": arguments_json, "id": N}. `arguments_json` is
    // a serialized object or empty. `done` is called exactly once, never from inside this call.
    void execute(std::string_view command, std::string_view arguments_json,
                 std::chrono::milliseconds deadline, ReplyHandler done);
    // The same, with a copy of file descriptor `fd` sent along the command (SCM_RIGHTS), as
    // `getfd` and `add-fd` take it.
    void execute_with_fd(std::string_view command, std::string_view arguments_json, int fd,
                         std::chrono::milliseconds deadline, ReplyHandler done);
    // Drops the connection; every pending command fails at once.
    void close(const std::string& reason);
    bool is_open() const { return !closed_; }
    size_t pending() const { return pending_.size(); }
    const std::string& greeting_version() const { return version_; }

  private:
    struct Pending {
        std::string command;
        std::chrono::steady_clock::time_point sent;
        ReplyHandler done;
        std::unique_ptr<boost::asio::steady_timer> timer;
    };

    Client(Socket socket, Options options);
    void read_more();
    void handle_line(std::string_view line);
    void handle_reply(uint64_t id, simdjson::dom::element msg);
    struct Out {
        std::string line;
        int fd = -1;  // owned; sent with the line's first bytes
    };
    void send(std::string line, int fd = -1);
    void write_next();
    void write_rest(size_t from);
    void heard_from_qemu();

    Socket socket_;
    Options options_;
    std::string inbuf_;
    std::unique_ptr<char[]> chunk_;
    std::deque<Out> outq_;
    bool writing_ = false;
    bool closed_ = false;
    bool greeted_ = false;
    bool responsive_ = true;
    uint64_t next_id_ = 1;
    std::string version_;
    std::unordered_map<uint64_t, Pending> pending_;
    std::function<void(const Status&)> handshake_done_;
    std::unique_ptr<boost::asio::steady_timer> handshake_timer_;
    EventHandler on_event_;
    CloseHandler on_close_;
    ResponsiveHandler on_responsive_;
};

}  // namespace hangar::qmp
