#include "daemon/systemd.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <spdlog/spdlog.h>
#include <systemd/sd-daemon.h>
#include <boost/asio/steady_timer.hpp>

namespace hangar::daemon {

void notify_ready(const std::string& status) {
    sd_notify(0, ("READY=1\nSTATUS=" + status).c_str());
}

void notify_status(const std::string& status) {
    sd_notify(0, ("STATUS=" + status).c_str());
}

void notify_stopping() {
    sd_notify(0, "STOPPING=1\nSTATUS=stopping; machines keep running");
}

struct Watchdog::Timer {
    boost::asio::steady_timer timer;
    std::chrono::microseconds period;
    explicit Timer(boost::asio::io_context& io, std::chrono::microseconds p)
        : timer(io), period(p) {}
    void arm() {
        timer.expires_after(period);
        timer.async_wait([this](boost::system::error_code ec) {
            if (ec) {
                return;
            }
            sd_notify(0, "WATCHDOG=1");
            arm();
        });
    }
};

Watchdog::Watchdog(boost::asio::io_context& io) {
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) <= 0 || usec == 0) {
        return;
    }
    interval_ = std::chrono::microseconds(usec);
    timer_ = std::make_unique<Timer>(io, interval_ / 2);
    sd_notify(0, "WATCHDOG=1");
    timer_->arm();
    spdlog::info("systemd watchdog: every {} ms", usec / 2000);
}

Watchdog::~Watchdog() = default;

ActivatedSockets activated_sockets() {
    ActivatedSockets out;
    int n = sd_listen_fds(1);
    if (n < 0) {
        out.warnings.push_back(std::string("socket activation: ") + strerror(-n));
        return out;
    }
    for (int fd = SD_LISTEN_FDS_START; fd < SD_LISTEN_FDS_START + n; ++fd) {
        if (sd_is_socket(fd, AF_UNIX, SOCK_STREAM, 1) > 0) {
            out.unix_fds.push_back(fd);
        } else if (sd_is_socket_inet(fd, AF_UNSPEC, SOCK_STREAM, 1, 0) > 0) {
            out.tcp_fds.push_back(fd);
        } else {
            out.warnings.push_back("socket activation: fd " + std::to_string(fd) +
                                   " is not a listening stream socket; closed");
            close(fd);
        }
    }
    if (n > 0) {
        spdlog::info("socket activation: {} unix and {} TCP listening sockets", out.unix_fds.size(),
                     out.tcp_fds.size());
    }
    return out;
}

}  // namespace hangar::daemon
