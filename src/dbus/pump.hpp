#pragma once
// Drives one sd-bus connection from the reactor, without a thread: processes everything the
// connection has, then waits for what it asks for — readable, writable while output is queued,
// or its next timeout — with async_wait on its fd and a timer. kick() after queuing a message.
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/steady_timer.hpp>

namespace hangar::dbus {

class Pump : public std::enable_shared_from_this<Pump> {
  public:
    struct Wants {
        short events = 0;                    // POLLIN / POLLOUT
        uint64_t timeout_usec = UINT64_MAX;  // absolute CLOCK_MONOTONIC µs; UINT64_MAX: none
    };
    // What `process` or `wants` throws when the connection failed (sdbus-c++ throws
    // sdbus::Error, which counts the same). Any other exception is a handler's bug and goes
    // on to the reactor, which ends the daemon.
    struct Lost : std::runtime_error {
        using std::runtime_error::runtime_error;
    };
    struct Hooks {
        std::function<bool()> process;  // handles one message; false when none is left
        std::function<Wants()> wants;
        std::function<void(const std::string&)> lost;  // process or wants threw Lost
    };

    Pump(boost::asio::io_context& io, Hooks hooks);
    // The connection's fd, which stays the connection's to close.
    void attach(int fd);
    void detach();
    void kick();
    void run();

  private:
    boost::asio::io_context& io_;
    Hooks hooks_;
    std::unique_ptr<boost::asio::posix::stream_descriptor> fd_;
    boost::asio::steady_timer timer_;
    uint64_t gen_ = 0;  // bumped by attach/detach; stale waits compare it
    bool waiting_read_ = false, waiting_write_ = false, kicked_ = false;
};

// When a connection is lost: tear it down on the next turn (never inside sd-bus's own call
// stack), then connect again after 1 s, doubling to 30 s until connected() resets it.
class Backoff {
  public:
    explicit Backoff(boost::asio::io_context& io) : io_(io), timer_(io) {}
    std::chrono::seconds delay() const { return delay_; }
    void connected() { delay_ = std::chrono::seconds(1); }
    // The callbacks run only while `owner` lives; `teardown` and the retry are skipped when
    // `current()` says the lost connection is already gone (another loss got there first).
    void after_loss(std::weak_ptr<void> owner, std::function<bool()> current,
                    std::function<void()> teardown, std::function<void()> connect);

  private:
    boost::asio::io_context& io_;
    boost::asio::steady_timer timer_;
    std::chrono::seconds delay_{1};
};

}  // namespace hangar::dbus
