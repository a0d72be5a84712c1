#include "api/exec_channel.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/steady_timer.hpp>

#include "util/json.hpp"
#include "util/process.hpp"

namespace hangar::api {

namespace {
constexpr size_t kOutputQueue = 256 * 1024;  // queued to the client: the pty is not read meanwhile
constexpr size_t kInputQueue = 256 * 1024;   // not yet taken by the pty: over it, closed
constexpr unsigned kMaxSide = 10000;
constexpr auto kHangupGrace = std::chrono::seconds(2);
// After the command's exit, how long output may still come (it is killed by then; the pty's
// last bytes are read until EIO).
constexpr auto kDrainAfterExit = std::chrono::seconds(2);

class ExecChannel final : public WsChannel, public std::enable_shared_from_this<ExecChannel> {
  public:
    ExecChannel(std::string machine, std::shared_ptr<PtyCommand> pty)
        : machine_(std::move(machine)),
          pty_(std::move(pty)),
          timer_(pty_->master().get_executor()) {}
    ~ExecChannel() override { hang_up(); }

    void on_open(std::shared_ptr<WsPeer> peer) override {
        peer_ = std::move(peer);
        pty_->on_exit([weak = weak_from_this()](ExitInfo info) {
            if (auto self = weak.lock()) {
                self->exited(info);
            }
        });
        read();
    }

    void on_binary(std::string_view bytes) override {
        if (!peer_ || eof_) {
            return;
        }
        if (in_.size() + bytes.size() > kInputQueue) {
            return peer_->close("input faster than the command reads it", 1008);
        }
        in_.append(bytes);
        write();
    }

    void on_text(std::string_view text) override {
        if (!peer_) {
            return;
        }
        simdjson::dom::parser parser;
        simdjson::dom::object msg;
        std::string_view type;
        if (parser.parse(text.data(), text.size()).get(msg) != simdjson::SUCCESS ||
            msg["type"].get(type) != simdjson::SUCCESS) {
            return peer_->close("malformed control message: a JSON object with \"type\"", 1008);
        }
        if (type != "resize") {
            return peer_->close("unknown control message type " + json::quote(type), 1008);
        }
        uint64_t cols = 0, rows = 0;
        if (msg["cols"].get(cols) != simdjson::SUCCESS ||
            msg["rows"].get(rows) != simdjson::SUCCESS || cols < 1 || rows < 1 || cols > kMaxSide ||
            rows > kMaxSide) {
            return peer_->close("resize: cols and rows must be numbers from 1 to 10000", 1008);
        }
        if (Status st = pty_->resize(static_cast<unsigned>(cols), static_cast<unsigned>(rows));
            !st && !eof_) {
            spdlog::debug("{}: interactive exec: {}", machine_, st.message());
        }
    }

    void on_drained() override {
        if (!peer_) {
            return;
        }
        if (exit_sent_) {
            return peer_->close("exited", 1000);
        }
        read();
    }

    void on_closed() override {
        hang_up();
        timer_.cancel();
        peer_.reset();
    }

  private:
    int fd() { return pty_->master().native_handle(); }

    void read() {
        if (reading_ || eof_ || !peer_ || peer_->closed()) {
            return;
        }
        if (peer_->queued_bytes() >= kOutputQueue) {
            return;  // on_drained reads on
        }
        reading_ = true;
        pty_->master().async_wait(boost::asio::posix::stream_descriptor::wait_read,
                                  [weak = weak_from_this()](boost::system::error_code ec) {
                                      auto self = weak.lock();
                                      if (!self) {
                                          return;
                                      }
                                      self->reading_ = false;
                                      if (!ec) {
                                          self->drain();
                                      }
                                  });
    }

    // Reads what the pty has, until it would block, the client's queue is full, or the end.
    void drain() {
        char buf[16384];
        while (peer_ && !eof_) {
            ssize_t n = ::read(fd(), buf, sizeof buf);
            if (n > 0) {
                peer_->send_binary(
                    std::make_shared<const std::string>(buf, static_cast<size_t>(n)));
                if (peer_->queued_bytes() >= kOutputQueue) {
                    return;  // on_drained reads on
                }
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                return read();
            }
            // EIO: every copy of the slave is closed (the command and all it started are gone).
            eof_ = true;
            finish();
        }
    }

    void write() {
        if (writing_ || !pty_->master().is_open()) {
            return;
        }
        while (!in_.empty()) {
            ssize_t n = ::write(fd(), in_.data(), in_.size());
            if (n > 0) {
                in_.erase(0, static_cast<size_t>(n));
                continue;
            }
            if (n < 0 && errno == EINTR) {
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
                writing_ = true;
                pty_->master().async_wait(boost::asio::posix::stream_descriptor::wait_write,
                                          [weak = weak_from_this()](boost::system::error_code ec) {
                                              auto self = weak.lock();
                                              if (!self) {
                                                  return;
                                              }
                                              self->writing_ = false;
                                              if (!ec) {
                                                  self->write();
                                              }
                                          });
                return;
            }
            in_.clear();  // EIO: nobody reads it any more
            return;
        }
    }

    void exited(ExitInfo info) {
        exited_ = true;
        exit_code_ = info.signal ? 128 + info.signal : info.code;
        if (!eof_) {
            timer_.expires_after(kDrainAfterExit);
            timer_.async_wait([weak = weak_from_this()](boost::system::error_code ec) {
                if (auto self = weak.lock(); self && !ec && !self->eof_) {
                    self->eof_ = true;
                    self->finish();
                }
            });
        }
        finish();
    }

    void finish() {
        if (!exited_ || !eof_ || exit_sent_ || !peer_ || peer_->closed()) {
            return;
        }
        exit_sent_ = true;
        json::Writer w;
        w.begin_object().field("type", "exit").field("exit_code", exit_code_).end_object();
        peer_->send_text(w.take());
        spdlog::info("{}: interactive exec ended: exit code {}", machine_, exit_code_);
        // on_drained closes once the client has it all.
    }

    void hang_up() {
        if (!hung_up_) {
            hung_up_ = true;
            pty_->hang_up(kHangupGrace);
        }
    }

    std::string machine_;
    std::shared_ptr<PtyCommand> pty_;
    // The session holds this channel: a weak reference, so that a session dropped without
    // closing (the reactor's end) does not keep the two alive in a cycle.
    class PeerRef {
      public:
        PeerRef& operator=(std::shared_ptr<WsPeer> p) {
            p_ = std::move(p);
            return *this;
        }
        explicit operator bool() const { return !p_.expired(); }
        std::shared_ptr<WsPeer> operator->() const { return p_.lock(); }
        void reset() { p_.reset(); }

      private:
        std::weak_ptr<WsPeer> p_;
    };
    PeerRef peer_;
    boost::asio::steady_timer timer_;
    std::string in_;
    bool reading_ = false, writing_ = false, eof_ = false, exited_ = false;
    bool exit_sent_ = false, hung_up_ = false;
    int exit_code_ = 0;
};
}  // namespace

std::shared_ptr<WsChannel> make_exec_channel(std::string machine, std::shared_ptr<PtyCommand> pty) {
    return std::make_shared<ExecChannel>(std::move(machine), std::move(pty));
}

}  // namespace hangar::api
