#include "api/vnc_channel.hpp"

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

namespace hangar::api {

using local = boost::asio::local::stream_protocol;

void VncChannel::connect(boost::asio::io_context& io, const std::string& socket_path,
                         const std::string& machine,
                         std::function<void(const Status&, std::shared_ptr<VncChannel>)> done) {
    auto ch = std::make_shared<VncChannel>(io, machine);
    ch->sock_.async_connect(local::endpoint(socket_path), [ch, machine, done = std::move(done)](
                                                              boost::system::error_code ec) {
        if (ec) {
            return done({Errc::unavailable,
                         "the display of " + machine + " cannot be reached (" + ec.message() + ")"},
                        nullptr);
        }
        done({}, ch);
    });
}

VncChannel::VncChannel(boost::asio::io_context& io, std::string machine)
    : sock_(io), machine_(std::move(machine)) {}

VncChannel::~VncChannel() = default;

void VncChannel::on_open(std::shared_ptr<WsPeer> peer) {
    peer_ = std::move(peer);
    spdlog::debug("{}: VNC viewer attached", machine_);
    read();
}

void VncChannel::read() {
    if (reading_ || closed_ || !peer_ || peer_->queued_bytes() > kMaxQueued) {
        return;  // on_drained reads again
    }
    reading_ = true;
    sock_.async_read_some(boost::asio::buffer(buf_), [self = shared_from_this()](
                                                         boost::system::error_code ec, size_t n) {
        self->reading_ = false;
        if (self->closed_) {
            return;
        }
        if (ec) {
            return self->end(ec == boost::asio::error::eof
                                 ? "the display has closed (the VM stopped)"
                                 : "the display's connection failed: " + ec.message(),
                             1000);
        }
        self->from_display_ += n;
        self->peer_->send_binary(std::make_shared<const std::string>(self->buf_.data(), n));
        self->read();
    });
}

void VncChannel::on_binary(std::string_view bytes) {
    if (closed_ || bytes.empty()) {
        return;
    }
    if (out_bytes_ + bytes.size() > kMaxQueued) {
        return end("the viewer sends faster than the display takes it", 1008);
    }
    out_.emplace_back(bytes);
    out_bytes_ += bytes.size();
    write();
}

void VncChannel::write() {
    if (writing_ || out_.empty() || closed_) {
        return;
    }
    writing_ = true;
    boost::asio::async_write(sock_, boost::asio::buffer(out_.front()),
                             [self = shared_from_this()](boost::system::error_code ec, size_t n) {
                                 self->writing_ = false;
                                 if (self->closed_) {
                                     return;
                                 }
                                 if (ec) {
                                     return self->end(
                                         "the display's connection failed: " + ec.message(), 1011);
                                 }
                                 self->to_display_ += n;
                                 self->out_bytes_ -= self->out_.front().size();
                                 self->out_.pop_front();
                                 self->write();
                             });
}

void VncChannel::on_text(std::string_view) {
    end("this channel carries RFB in binary frames only", 1003);
}

void VncChannel::on_drained() {
    read();
}

void VncChannel::end(std::string reason, unsigned short code) {
    if (peer_ && !peer_->closed()) {
        peer_->close(std::move(reason), code);
    }
    on_closed();
}

void VncChannel::on_closed() {
    if (closed_) {
        return;
    }
    closed_ = true;
    boost::system::error_code ec;
    sock_.close(ec);
    out_.clear();
    out_bytes_ = 0;
    peer_.reset();
    spdlog::debug("{}: VNC viewer detached ({} bytes from the display, {} to it)", machine_,
                  from_display_, to_display_);
}

}  // namespace hangar::api
