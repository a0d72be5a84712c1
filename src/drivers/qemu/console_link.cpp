#include "drivers/qemu/console_link.hpp"

#include <deque>

#include <spdlog/spdlog.h>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/write.hpp>

namespace hangar::qemu {

namespace {
constexpr size_t kMaxQueued = 256 * 1024;
constexpr auto kRetry = std::chrono::milliseconds(500);
}  // namespace

struct ConsoleLink::Impl : std::enable_shared_from_this<Impl> {
    using local = boost::asio::local::stream_protocol;

    Impl(boost::asio::io_context& io, std::filesystem::path p, std::string m)
        : sock(io), retry(io), path(std::move(p)), machine(std::move(m)) {}

    void connect() {
        if (stopped) {
            return;
        }
        boost::system::error_code ec;
        sock.close(ec);
        sock.async_connect(local::endpoint(path.string()),
                           [self = shared_from_this()](boost::system::error_code ec) {
                               if (self->stopped) {
                                   return;
                               }
                               if (ec) {
                                   return self->later();
                               }
                               self->connected = true;
                               self->read();
                               self->flush();
                           });
    }

    void later() {
        connected = false;
        writing = false;
        retry.expires_after(kRetry);
        retry.async_wait([self = shared_from_this()](boost::system::error_code ec) {
            if (!ec) {
                self->connect();
            }
        });
    }

    void read() {
        sock.async_read_some(boost::asio::buffer(buf, sizeof buf),
                             [self = shared_from_this()](boost::system::error_code ec, size_t) {
                                 if (self->stopped) {
                                     return;
                                 }
                                 if (ec) {
                                     // QEMU is going, or dropped us: connect again while
                                     // the VM is known (the runtime drops the link with it).
                                     return self->later();
                                 }
                                 // The log file has these bytes. Read at once: QEMU
                                 // writes byte by byte, and each write takes a socket
                                 // buffer's slot, so a paused reader would slow the guest.
                                 self->read();
                             });
    }

    void flush() {
        if (writing || !connected || queue.empty()) {
            return;
        }
        writing = true;
        boost::asio::async_write(sock, boost::asio::buffer(queue.front()),
                                 [self = shared_from_this()](boost::system::error_code ec, size_t) {
                                     if (self->stopped) {
                                         return;
                                     }
                                     self->writing = false;
                                     if (ec) {
                                         return;  // the read side reconnects
                                     }
                                     self->queued -= self->queue.front().size();
                                     self->queue.pop_front();
                                     self->flush();
                                 });
    }

    void stop() {
        stopped = true;
        boost::system::error_code ec;
        retry.cancel();
        sock.close(ec);
    }

    local::socket sock;
    boost::asio::steady_timer retry;
    std::filesystem::path path;
    std::string machine;
    std::deque<std::string> queue;
    size_t queued = 0;
    bool connected = false;
    bool writing = false;
    bool stopped = false;
    uint64_t dropped = 0;
    char buf[65536];
};

ConsoleLink::ConsoleLink(boost::asio::io_context& io, std::filesystem::path socket,
                         std::string machine)
    : impl_(std::make_shared<Impl>(io, std::move(socket), std::move(machine))) {
    impl_->connect();
}

ConsoleLink::~ConsoleLink() {
    if (impl_) {
        impl_->stop();
    }
}

ConsoleLink& ConsoleLink::operator=(ConsoleLink&& other) noexcept {
    if (this != &other) {
        if (impl_) {
            impl_->stop();
        }
        impl_ = std::move(other.impl_);
    }
    return *this;
}

void ConsoleLink::write(std::string_view bytes) {
    if (!impl_ || bytes.empty()) {
        return;
    }
    if (impl_->queued + bytes.size() > kMaxQueued) {
        if (impl_->dropped++ == 0) {
            spdlog::warn("{}: console input dropped: the guest is not taking it", impl_->machine);
        }
        return;
    }
    impl_->queued += bytes.size();
    impl_->queue.emplace_back(bytes);
    impl_->flush();
}

bool ConsoleLink::connected() const {
    return impl_ && impl_->connected;
}

}  // namespace hangar::qemu
