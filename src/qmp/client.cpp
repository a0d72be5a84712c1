#include "qmp/client.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/write.hpp>

#include "util/json.hpp"

namespace hangar::qmp {

namespace {
constexpr size_t kChunk = 16 * 1024;

// One parser for the whole (single-threaded) reactor; elements are used only during the call
// that parsed them.
simdjson::dom::parser& shared_parser() {
    static simdjson::dom::parser parser;
    return parser;
}
}  // namespace

metrics::Histogram& command_latency() {
    static metrics::Histogram h(metrics::latency_buckets());
    return h;
}

std::shared_ptr<Client> Client::create(Socket socket, Options options) {
    return std::shared_ptr<Client>(new Client(std::move(socket), options));
}

Client::Client(Socket socket, Options options)
    : socket_(std::move(socket)), options_(options), chunk_(new char[kChunk]) {}

Client::~Client() {
    boost::system::error_code ec;
    socket_.close(ec);
    for (auto& o : outq_) {
        if (o.fd >= 0) {
            ::close(o.fd);
        }
    }
}

void Client::handshake(std::function<void(const Status&)> done) {
    handshake_done_ = std::move(done);
    handshake_timer_ = std::make_unique<boost::asio::steady_timer>(socket_.get_executor());
    handshake_timer_->expires_after(options_.handshake_timeout);
    handshake_timer_->async_wait([weak = weak_from_this()](boost::system::error_code ec) {
        auto self = weak.lock();
        if (ec || !self || !self->handshake_done_) {
            return;
        }
        self->close(self->greeted_
                        ? "no answer to qmp_capabilities in time"
                        : "no QMP greeting within " +
                              std::to_string(self->options_.handshake_timeout.count()) + " ms");
    });
    read_more();
}

void Client::read_more() {
    socket_.async_read_some(
        boost::asio::buffer(chunk_.get(), kChunk),
        [self = shared_from_this()](boost::system::error_code ec, size_t n) {
            if (self->closed_) {
                return;
            }
            if (ec) {
                bool closed =
                    ec == boost::asio::error::eof || ec == boost::asio::error::connection_reset;
                self->close(closed ? "QMP connection closed by QEMU"
                                   : "QMP read failed: " + ec.message());
                return;
            }
            self->inbuf_.append(self->chunk_.get(), n);
            size_t start = 0;
            for (;;) {
                size_t nl = self->inbuf_.find('\n', start);
                if (nl == std::string::npos) {
                    break;
                }
                if (nl - start > self->options_.max_line) {
                    self->close("QMP message longer than " +
                                std::to_string(self->options_.max_line) + " bytes");
                    return;
                }
                self->handle_line(std::string_view(self->inbuf_).substr(start, nl - start));
                if (self->closed_) {
                    return;
                }
                start = nl + 1;
            }
            self->inbuf_.erase(0, start);
            if (self->inbuf_.size() > self->options_.max_line) {
                self->close("QMP message longer than " + std::to_string(self->options_.max_line) +
                            " bytes");
                return;
            }
            self->read_more();
        });
}

void Client::heard_from_qemu() {
    if (!responsive_) {
        responsive_ = true;
        if (on_responsive_) {
            on_responsive_(true);
        }
    }
}

void Client::handle_line(std::string_view line) {
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) {
        line.remove_suffix(1);
    }
    if (line.empty()) {
        return;
    }
    simdjson::dom::element msg;
    if (shared_parser().parse(line.data(), line.size()).get(msg) != simdjson::SUCCESS ||
        !msg.is_object()) {
        close("QMP sent something that is not a JSON object");
        return;
    }
    heard_from_qemu();
    if (!greeted_) {
        simdjson::dom::object qmp;
        if (msg["QMP"].get(qmp) != simdjson::SUCCESS) {
            close("QMP greeting expected, got another message");
            return;
        }
        greeted_ = true;
        int64_t major = 0, minor = 0, micro = 0;
        auto v = msg.at_pointer("/QMP/version/qemu");
        if (v.error() == simdjson::SUCCESS) {
            json::try_get(v["major"], major);
            json::try_get(v["minor"], minor);
            json::try_get(v["micro"], micro);
        }
        version_ =
            std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(micro);
        execute("qmp_capabilities", {}, options_.handshake_timeout,
                [weak = weak_from_this()](const Status& st, std::string_view) {
                    auto self = weak.lock();
                    if (!self || !self->handshake_done_) {
                        return;
                    }
                    auto done = std::move(self->handshake_done_);
                    self->handshake_done_ = nullptr;
                    self->handshake_timer_.reset();
                    done(st);
                });
        return;
    }
    std::string_view event;
    if (msg["event"].get(event) == simdjson::SUCCESS) {
        if (on_event_) {
            auto keep = shared_from_this();
            on_event_(event, msg);
        }
        return;
    }
    uint64_t id = 0;
    if (msg["id"].get(id) == simdjson::SUCCESS) {
        handle_reply(id, msg);
        return;
    }
    spdlog::debug("qmp: ignoring message without event or id: {:.200}", line);
}

void Client::handle_reply(uint64_t id, simdjson::dom::element msg) {
    auto it = pending_.find(id);
    if (it == pending_.end()) {
        return;  // a late reply to a command whose deadline already failed it
    }
    Pending p = std::move(it->second);
    pending_.erase(it);
    command_latency().observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - p.sent).count());
    simdjson::dom::element ret;
    if (msg["return"].get(ret) == simdjson::SUCCESS) {
        std::string result = simdjson::minify(ret);
        p.done({}, result);
        return;
    }
    std::string_view cls = "GenericError", desc = "no description";
    json::try_get(msg.at_pointer("/error/class"), cls);
    json::try_get(msg.at_pointer("/error/desc"), desc);
    p.done({Errc::internal,
            "QEMU refused " + p.command + ": " + std::string(desc) + " (" + std::string(cls) + ")"},
           {});
}

void Client::execute(std::string_view command, std::string_view arguments_json,
                     std::chrono::milliseconds deadline, ReplyHandler done) {
    execute_with_fd(command, arguments_json, -1, deadline, std::move(done));
}

void Client::execute_with_fd(std::string_view command, std::string_view arguments_json, int pass_fd,
                             std::chrono::milliseconds deadline, ReplyHandler done) {
    int fd = -1;
    if (pass_fd >= 0 && !closed_) {
        fd = ::fcntl(pass_fd, F_DUPFD_CLOEXEC, 3);
        if (fd < 0) {
            int e = errno;
            boost::asio::post(socket_.get_executor(), [done = std::move(done), e] {
                done({Errc::internal, std::string("dup: ") + std::strerror(e)}, {});
            });
            return;
        }
    }
    if (closed_) {
        boost::asio::post(
            socket_.get_executor(), [done = std::move(done), c = std::string(command)] {
                done({Errc::unavailable, "QMP connection is closed; cannot send " + c}, {});
            });
        return;
    }
    uint64_t id = next_id_++;
    std::string line = "{\"execute\":";
    json::append_string(line, command);
    if (!arguments_json.empty()) {
        line += ",\"arguments\":";
        line += arguments_json;
    }
    line += ",\"id\":" + std::to_string(id) + "}\n";

    Pending p{std::string(command), std::chrono::steady_clock::now(), std::move(done),
              std::make_unique<boost::asio::steady_timer>(socket_.get_executor())};
    p.timer->expires_after(deadline);
    p.timer->async_wait([weak = weak_from_this(), id, deadline](boost::system::error_code ec) {
        auto self = weak.lock();
        if (ec || !self) {
            return;
        }
        auto it = self->pending_.find(id);
        if (it == self->pending_.end()) {
            return;
        }
        Pending p = std::move(it->second);
        self->pending_.erase(it);
        spdlog::warn("qmp: {} got no reply within {} ms", p.command, deadline.count());
        if (self->responsive_) {
            self->responsive_ = false;
            if (self->on_responsive_) {
                self->on_responsive_(false);
            }
        }
        p.done({Errc::timeout, "QEMU did not answer " + p.command + " within " +
                                   std::to_string(deadline.count()) + " ms"},
               {});
    });
    pending_.emplace(id, std::move(p));
    send(std::move(line), fd);
}

void Client::send(std::string line, int fd) {
    outq_.push_back({std::move(line), fd});
    if (!writing_) {
        write_next();
    }
}

void Client::write_next() {
    if (outq_.empty() || closed_) {
        writing_ = false;
        return;
    }
    writing_ = true;
    if (outq_.front().fd < 0) {
        return write_rest(0);
    }
    // A descriptor goes with the first bytes of its line (one sendmsg once the socket can
    // take it); the rest of the line, if any, as usual.
    socket_.async_wait(
        Socket::wait_write, [self = shared_from_this()](boost::system::error_code ec) {
            if (self->closed_) {
                return;
            }
            if (ec) {
                return self->close("QMP write failed: " + ec.message());
            }
            Out& o = self->outq_.front();
            iovec iov{o.line.data(), o.line.size()};
            alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
            msghdr msg{};
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control;
            msg.msg_controllen = sizeof(control);
            cmsghdr* c = CMSG_FIRSTHDR(&msg);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            std::memcpy(CMSG_DATA(c), &o.fd, sizeof(int));
            ssize_t n = ::sendmsg(self->socket_.native_handle(), &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)) {
                return self->write_next();  // not writable after all: wait again
            }
            ::close(o.fd);
            o.fd = -1;
            if (n < 0) {
                return self->close(std::string("QMP write failed: ") + std::strerror(errno));
            }
            self->write_rest(static_cast<size_t>(n));
        });
}

void Client::write_rest(size_t from) {
    const std::string& line = outq_.front().line;
    boost::asio::async_write(socket_, boost::asio::buffer(line.data() + from, line.size() - from),
                             [self = shared_from_this()](boost::system::error_code ec, size_t) {
                                 if (self->closed_) {
                                     return;
                                 }
                                 if (ec) {
                                     self->close("QMP write failed: " + ec.message());
                                     return;
                                 }
                                 self->outq_.pop_front();
                                 self->write_next();
                             });
}

void Client::close(const std::string& reason) {
    if (closed_) {
        return;
    }
    closed_ = true;
    auto keep = shared_from_this();
    boost::system::error_code ec;
    socket_.close(ec);
    for (auto& o : outq_) {
        if (o.fd >= 0) {
            ::close(o.fd);
        }
    }
    outq_.clear();
    handshake_timer_.reset();
    auto pending = std::move(pending_);
    pending_.clear();
    if (handshake_done_) {
        auto done = std::move(handshake_done_);
        handshake_done_ = nullptr;
        done({Errc::unavailable, reason});
    }
    for (auto& [id, p] : pending) {
        p.done({Errc::unavailable, p.command + " failed: " + reason}, {});
    }
    if (on_close_) {
        auto cb = std::move(on_close_);
        on_close_ = nullptr;
        cb(reason);
    }
    on_event_ = nullptr;
    on_responsive_ = nullptr;
}

}  // namespace hangar::qmp
