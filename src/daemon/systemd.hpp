#pragma once
// The service manager's side of hangard: sd_notify (READY=1, STATUS=, STOPPING=1, and
// WATCHDOG=1 from a reactor timer, so a stuck reactor is what the watchdog catches) and the
// listening sockets passed by socket activation. All of it is inert outside systemd.
#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include <boost/asio/io_context.hpp>

namespace hangar::daemon {

void notify_ready(const std::string& status);
void notify_status(const std::string& status);
void notify_stopping();

// Starts sending WATCHDOG=1 at half the interval systemd asked for (WATCHDOG_USEC), if it
// asked. Returns the interval, or zero when there is no watchdog.
class Watchdog {
  public:
    explicit Watchdog(boost::asio::io_context& io);
    ~Watchdog();
    std::chrono::microseconds interval() const { return interval_; }

  private:
    struct Timer;
    std::unique_ptr<Timer> timer_;
    std::chrono::microseconds interval_{0};
};

struct ActivatedSockets {
    std::vector<int> unix_fds;          // listening AF_UNIX stream sockets
    std::vector<int> tcp_fds;           // listening AF_INET/AF_INET6 stream sockets
    std::vector<std::string> warnings;  // to log once logging is set up
};
// The sockets passed with LISTEN_FDS (and unsets the variables); others are closed. Called
// before logging is set up (and before any fork), so it only collects what to report.
ActivatedSockets activated_sockets();

}  // namespace hangar::daemon
