#include "dbus/pump.hpp"

#include <poll.h>
#include <time.h>

#include <sdbus-c++/Error.h>
#include <boost/asio/post.hpp>

namespace hangar::dbus {

Pump::Pump(boost::asio::io_context& io, Hooks hooks)
    : io_(io), hooks_(std::move(hooks)), timer_(io) {}

void Pump::attach(int fd) {
    detach();
    fd_ = std::make_unique<boost::asio::posix::stream_descriptor>(io_, fd);
}

void Pump::detach() {
    ++gen_;
    if (fd_) {
        fd_->release();
        fd_.reset();
    }
    timer_.cancel();
    waiting_read_ = waiting_write_ = false;
}

void Pump::kick() {
    if (kicked_) {
        return;
    }
    kicked_ = true;
    boost::asio::post(io_, [weak = weak_from_this()] {
        if (auto self = weak.lock()) {
            self->kicked_ = false;
            self->run();
        }
    });
}

void Pump::run() {
    if (!fd_) {
        return;
    }
    uint64_t gen = gen_;
    Wants w;
    try {
        while (hooks_.process()) {
            if (gen != gen_) {
                return;  // detached by what was processed
            }
        }
        w = hooks_.wants();
    } catch (const sdbus::Error& e) {
        return hooks_.lost(e.getMessage());  // sdbus-c++: the connection failed
    } catch (const Pump::Lost& e) {
        return hooks_.lost(e.what());
    }
    // Anything else came from a handler that sd-bus called: a bug, which ends the daemon
    // (util/reactor.hpp) instead of passing for a lost connection.
    auto weak = weak_from_this();
    auto again = [weak, gen](bool Pump::*flag) {
        return [weak, gen, flag](boost::system::error_code ec) {
            auto self = weak.lock();
            if (!self || gen != self->gen_) {
                return;
            }
            (*self).*flag = false;
            if (!ec) {
                self->run();
            }
        };
    };
    if ((w.events & POLLIN) && !waiting_read_) {
        waiting_read_ = true;
        fd_->async_wait(boost::asio::posix::stream_descriptor::wait_read,
                        again(&Pump::waiting_read_));
    }
    if ((w.events & POLLOUT) && !waiting_write_) {
        waiting_write_ = true;
        fd_->async_wait(boost::asio::posix::stream_descriptor::wait_write,
                        again(&Pump::waiting_write_));
    }
    if (w.timeout_usec != UINT64_MAX) {
        timespec now{};
        clock_gettime(CLOCK_MONOTONIC, &now);
        uint64_t now_us = uint64_t(now.tv_sec) * 1000000 + uint64_t(now.tv_nsec) / 1000;
        timer_.expires_after(
            std::chrono::microseconds(w.timeout_usec > now_us ? w.timeout_usec - now_us : 0));
        timer_.async_wait([weak, gen](boost::system::error_code ec) {
            auto self = weak.lock();
            if (self && gen == self->gen_ && !ec) {
                self->run();
            }
        });
    }
}

void Backoff::after_loss(std::weak_ptr<void> owner, std::function<bool()> current,
                         std::function<void()> teardown, std::function<void()> connect) {
    boost::asio::post(io_, [this, owner, current = std::move(current),
                            teardown = std::move(teardown), connect = std::move(connect)] {
        auto alive = owner.lock();
        if (!alive || !current()) {
            return;
        }
        teardown();
        timer_.expires_after(delay_);
        delay_ = std::min(delay_ * 2, std::chrono::seconds(30));
        timer_.async_wait([owner, connect](boost::system::error_code ec) {
            if (auto alive = owner.lock(); alive && !ec) {
                connect();
            }
        });
    });
}

}  // namespace hangar::dbus
