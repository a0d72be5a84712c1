#include "cli/terminal_session.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstring>
#include <deque>
#include <iostream>
#include <utility>

#include <simdjson.h>
#include <boost/asio/posix/stream_descriptor.hpp>
#include <boost/asio/signal_set.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/buffers_to_string.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "util/json.hpp"

namespace hangar::cli {

namespace {

namespace http = boost::beast::http;
namespace websocket = boost::beast::websocket;
using boost::system::error_code;
using local = boost::asio::local::stream_protocol;
using tcp = boost::asio::ip::tcp;

constexpr char kEscape = 0x1d;  // Ctrl-]
constexpr size_t kInputChunk = 4096;
// Typed input queued behind a write the server does not take: beyond this, a terminal is no
// longer read (and then Ctrl-] is not seen until the queue moves).
constexpr size_t kMaxQueued = 1 << 20;
// After the end of stdin (not a terminal), the console is left once it has been quiet this
// long.
constexpr auto kDrainQuiet = std::chrono::milliseconds(1000);
// Our close frame unanswered this long: the connection is cut.
constexpr auto kCloseTimeout = std::chrono::seconds(2);

// Raw mode for the terminal on stdin while this lives (and until restore()).
class RawMode {
  public:
    RawMode() {
        if (isatty(STDIN_FILENO) && tcgetattr(STDIN_FILENO, &saved_) == 0) {
            termios raw = saved_;
            cfmakeraw(&raw);
            active_ = tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0;
        }
    }
    ~RawMode() { restore(); }
    RawMode(const RawMode&) = delete;
    RawMode& operator=(const RawMode&) = delete;

    void restore() {
        if (active_) {
            tcsetattr(STDIN_FILENO, TCSANOW, &saved_);
            active_ = false;
        }
    }
    bool active() const { return active_; }

  private:
    termios saved_{};
    bool active_ = false;
};

// Writes all of `data` to fd 1, waiting when it is non-blocking; false when stdout is gone.
bool write_stdout(const char* data, size_t size) {
    while (size > 0) {
        ssize_t n = ::write(STDOUT_FILENO, data, size);
        if (n > 0) {
            data += n;
            size -= static_cast<size_t>(n);
        } else if (n < 0 && errno == EAGAIN) {
            pollfd p{STDOUT_FILENO, POLLOUT, 0};
            ::poll(&p, 1, -1);
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            return false;
        }
    }
    return true;
}

std::string json_str(simdjson::dom::element e, const char* key) {
    std::string_view v;
    if (e[key].get(v) == simdjson::SUCCESS) {
        return std::string(v);
    }
    int64_t i = 0;
    if (e[key].get(i) == simdjson::SUCCESS) {
        return std::to_string(i);
    }
    bool b = false;
    if (e[key].get(b) == simdjson::SUCCESS) {
        return b ? "true" : "false";
    }
    return "";
}

// Why the server refuses the upgrade of `path`: Beast 1.74's handshake drops the answer it
// declines, so the same upgrade request is sent once more and its answer read here.
template <typename Stream>
std::string refusal_over(Stream stream, const Connector& c, const std::string& path) {
    http::request<http::empty_body> req{http::verb::get, path, 11};
    req.set(http::field::host, c.host());
    req.set(http::field::user_agent, "hangarctl");
    req.set(http::field::upgrade, "websocket");
    req.set(http::field::connection, "Upgrade");
    req.set(http::field::sec_websocket_key, "aGFuZ2FyY3RsIGFza3MhIQ==");
    req.set(http::field::sec_websocket_version, "13");
    if (!c.target().token.empty()) {
        req.set(http::field::authorization, "Bearer " + c.target().token);
    }
    http::response_parser<http::string_body> p;
    p.body_limit(64 * 1024);
    boost::beast::flat_buffer buf;
    error_code ec;
    http::write(stream, req, ec);
    if (!ec) {
        http::read(stream, buf, p, ec);
    }
    if (ec) {
        return "the server refused the WebSocket upgrade";
    }
    const auto& res = p.get();
    simdjson::dom::parser json;
    simdjson::dom::element e;
    std::string_view m;
    if (json.parse(res.body()).get(e) == simdjson::SUCCESS &&
        e.at_pointer("/error/message").get(m) == simdjson::SUCCESS) {
        return std::string(m);
    }
    return "HTTP " + std::to_string(res.result_int()) +
           (res.body().empty() ? "" : ": " + res.body());
}

std::string refusal(Connector& c, const std::string& path) {
    if (!c.target().socket.empty()) {
        return refusal_over(c.connect_unix(), c, path);
    }
    if (c.target().tls) {
        return refusal_over(c.connect_tls(), c, path);
    }
    return refusal_over(c.connect_tcp(), c, path);
}

template <typename Stream>
class Session {
  public:
    Session(Connector& c, Stream stream, const TerminalOptions& o)
        : connector_(c),
          io_(c.io()),
          host_(c.host()),
          token_(c.target().token),
          o_(o),
          ws_(std::move(stream)),
          drain_(io_),
          close_timer_(io_) {
        notes_ = isatty(STDOUT_FILENO);
    }

    int run() {
        std::string token = token_;
        ws_.set_option(websocket::stream_base::decorator([token](websocket::request_type& req) {
            req.set(http::field::user_agent, "hangarctl");
            if (!token.empty()) {
                req.set(http::field::authorization, "Bearer " + token);
            }
        }));
        error_code ec;
        ws_.handshake(host_, o_.path, ec);
        if (ec == websocket::error::upgrade_declined) {
            std::cerr << "hangarctl: " << refusal(connector_, o_.path) << "\n";
            return 1;
        }
        if (ec) {
            throw boost::system::system_error(ec);
        }
        int in = ::dup(STDIN_FILENO);
        if (in < 0) {
            throw std::runtime_error(std::string("cannot use stdin: ") + strerror(errno));
        }
        stdin_.emplace(io_, in);
        signals_.emplace(io_, SIGWINCH, SIGINT, SIGTERM);
        signals_->add(SIGHUP);
        {
            RawMode raw;
            raw_ = raw.active();
            raw_mode_ = &raw;
            wait_signal();
            send_size();
            read_frame();
            read_stdin();
            io_.run();
            raw_mode_ = nullptr;
        }
        if (raw_ && notes_ && status_ == 0 && error_.empty()) {
            note("left the " + std::string(o_.exec ? "session" : "console") + " of " + o_.machine);
        }
        if (!error_.empty()) {
            std::cerr << "hangarctl: " << error_ << "\n";
        }
        return status_;
    }

  private:
    void note(const std::string& text) {
        std::string line = (at_line_start_ ? "" : "\r\n") + std::string("[hangar: ") + text + "]" +
                           (raw_ ? "\r\n" : "\n");
        at_line_start_ = true;
        std::cerr << line << std::flush;
    }

    void wait_signal() {
        signals_->async_wait([this](error_code ec, int sig) {
            if (ec || done_) {
                return;
            }
            if (sig == SIGWINCH) {
                send_size();
                wait_signal();
                return;
            }
            status_ = 128 + sig;
            leave();
        });
    }

    void send_size() {
        if (o_.readonly) {
            return;
        }
        auto size = terminal_size();
        if (!size) {
            return;
        }
        hangar::json::Writer w;
        w.begin_object()
            .field("type", "resize")
            .field("cols", static_cast<uint64_t>(size->cols))
            .field("rows", static_cast<uint64_t>(size->rows))
            .end_object();
        send(true, w.str());
    }

    void send(bool text, std::string data) {
        if (leaving_ || done_) {
            return;
        }
        queued_ += data.size();
        queue_.emplace_back(text, std::move(data));
        if (!writing_) {
            write_next();
        }
    }

    void write_next() {
        if (queue_.empty()) {
            writing_ = false;
            if (close_wanted_) {
                close();
            } else if (stdin_paused_) {
                stdin_paused_ = false;
                read_stdin();
            }
            return;
        }
        writing_ = true;
        ws_.text(queue_.front().first);
        ws_.async_write(boost::asio::buffer(queue_.front().second), [this](error_code ec, size_t) {
            queued_ -= queue_.front().second.size();
            queue_.pop_front();
            if (ec) {
                writing_ = false;
                lost(ec);
                return;
            }
            write_next();
        });
    }

    void read_frame() {
        ws_.async_read(buf_, [this](error_code ec, size_t) {
            if (ec) {
                on_read_end(ec);
                return;
            }
            std::string frame = boost::beast::buffers_to_string(buf_.data());
            buf_.consume(buf_.size());
            if (ws_.got_text()) {
                on_control(frame);
            } else if (!frame.empty()) {
                if (!write_stdout(frame.data(), frame.size())) {
                    error_ = std::string("cannot write to stdout: ") + strerror(errno);
                    status_ = 1;
                    leave();
                    return;
                }
                at_line_start_ = frame.back() == '\n';
                offset_ += frame.size();
                if (stdin_eof_ && !o_.exec) {
                    arm_drain();
                }
            }
            read_frame();
        });
    }

    void on_read_end(error_code ec) {
        if (ec == websocket::error::closed) {
            auto reason = ws_.reason();
            std::string why(reason.reason.c_str());
            if (o_.exec && exit_code_ >= 0) {
                status_ = exit_code_;
            } else if (!leaving_ && reason.code != websocket::close_code::normal) {
                error_ = (o_.exec ? "the session" : "the console") + std::string(" was closed") +
                         (why.empty() ? "" : ": " + why) + " (code " + std::to_string(reason.code) +
                         ")";
                status_ = 1;
            } else if (!leaving_ && o_.exec) {
                error_ = "the session ended without the command's exit status" +
                         (why.empty() ? "" : ": " + why);
                status_ = 1;
            }
        } else if (!leaving_) {
            lost(ec);
            return;
        }
        finish();
    }

    void lost(error_code ec) {
        if (done_) {
            return;
        }
        if (!leaving_ && error_.empty()) {
            error_ = "connection to hangard lost: " + ec.message();
            if (!o_.exec && offset_known_) {
                error_ += " (--from " + std::to_string(offset_) + " goes on where it stopped)";
            }
            status_ = 1;
        }
        finish();
    }

    void on_control(const std::string& frame) {
        simdjson::dom::parser p;
        simdjson::dom::element e;
        if (p.parse(frame).get(e) != simdjson::SUCCESS) {
            return;
        }
        std::string type = json_str(e, "type");
        if (type == "exit") {
            int64_t code = 0;
            if (e["exit_code"].get(code) == simdjson::SUCCESS) {
                exit_code_ = static_cast<int>(code & 255);
            }
            return;
        }
        if (uint64_t at = 0;
            (type == "attached" || type == "gap") && e["offset"].get(at) == simdjson::SUCCESS) {
            offset_ = at;  // the stream's offset of the next binary byte
            offset_known_ = true;
        }
        if (type == "input_refused") {  // what was typed was dropped: said even in scripts
            note("input refused: " + json_str(e, "message"));
            return;
        }
        if (!notes_) {
            return;
        }
        if (type == "attached") {
            std::string text = "console of " + o_.machine + " from byte " + json_str(e, "offset") +
                               " (" + json_str(e, "end") + " so far)";
            if (json_str(e, "readonly") == "true") {
                text += ", read-only";
            }
            note(text + (raw_ ? "; Ctrl-] leaves" : ""));
        } else if (type == "state") {
            std::string from = json_str(e, "from"), reason = json_str(e, "reason");
            note(o_.machine + ": " + (from.empty() ? "" : from + " -> ") + json_str(e, "state") +
                 (reason.empty() ? "" : " (" + reason + ")"));
        } else if (type == "reset") {
            std::string reason = json_str(e, "reason");
            note(o_.machine + ": the guest was reset" +
                 (reason.empty() ? "" : " (" + reason + ")"));
        } else if (type == "gap") {
            note("bytes " + json_str(e, "from") + " to " + json_str(e, "offset") +
                 " are no longer kept");
        }
    }

    void read_stdin() {
        if (leaving_ || done_ || stdin_eof_) {
            return;
        }
        if (!poll_stdin_) {
            // A regular file or /dev/null: epoll refuses it, and reading never blocks.
            boost::asio::post(io_, [this] { on_stdin(); });
            return;
        }
        stdin_->async_wait(boost::asio::posix::descriptor_base::wait_read, [this](error_code ec) {
            if (ec == boost::asio::error::operation_not_supported) {
                poll_stdin_ = false;
                read_stdin();
                return;
            }
            if (ec) {
                return;
            }
            on_stdin();
        });
    }

    void on_stdin() {
        if (leaving_ || done_) {
            return;
        }
        char chunk[kInputChunk];
        ssize_t n = ::read(stdin_->native_handle(), chunk, sizeof chunk);
        if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
            read_stdin();
            return;
        }
        if (n <= 0) {
            stdin_eof_ = true;
            if (!o_.exec) {
                arm_drain();
            }
            return;
        }
        std::string bytes(chunk, static_cast<size_t>(n));
        bool escape = false;
        if (raw_) {
            if (auto pos = bytes.find(kEscape); pos != std::string::npos) {
                bytes.resize(pos);
                escape = true;
            }
        }
        if (!o_.readonly && !bytes.empty()) {
            send(false, std::move(bytes));
        }
        if (escape) {
            leave();
        } else if (writing_ && (!raw_ || queued_ > kMaxQueued)) {
            // Piped input waits for the socket; a terminal is read on (up to a bound) so that
            // Ctrl-] leaves even when the server has stopped reading.
            stdin_paused_ = true;  // read on once the input is written
        } else {
            read_stdin();
        }
    }

    void arm_drain() {
        drain_.expires_after(kDrainQuiet);
        drain_.async_wait([this](error_code ec) {
            if (!ec) {
                leave();
            }
        });
    }

    // Leaves: a normal close once what is queued is written.
    void leave() {
        if (leaving_ || done_) {
            return;
        }
        leaving_ = true;
        close_wanted_ = true;
        if (stdin_) {
            stdin_->cancel();
        }
        close_timer_.expires_after(kCloseTimeout);
        close_timer_.async_wait([this](error_code ec) {
            if (!ec) {
                finish();
            }
        });
        if (!writing_) {
            close();
        }
    }

    void close() {
        close_wanted_ = false;
        ws_.async_close(websocket::close_code::normal, [this](error_code ec) {
            if (ec) {
                finish();
            }
            // Else the pending read completes with `closed` when the server answers.
        });
    }

    void finish() {
        if (done_) {
            return;
        }
        done_ = true;
        if (raw_mode_) {
            raw_mode_->restore();
        }
        io_.stop();
    }

    Connector& connector_;
    boost::asio::io_context& io_;
    std::string host_, token_;
    TerminalOptions o_;
    websocket::stream<Stream> ws_;
    std::optional<boost::asio::signal_set> signals_;  // from the handshake on
    boost::asio::steady_timer drain_, close_timer_;
    std::optional<boost::asio::posix::stream_descriptor> stdin_;
    boost::beast::flat_buffer buf_;
    std::deque<std::pair<bool, std::string>> queue_;  // (text?, payload)
    size_t queued_ = 0;                               // bytes in queue_
    RawMode* raw_mode_ = nullptr;
    bool raw_ = false, notes_ = false, at_line_start_ = true;
    bool writing_ = false, stdin_paused_ = false, stdin_eof_ = false, poll_stdin_ = true;
    bool leaving_ = false, close_wanted_ = false, done_ = false;
    uint64_t offset_ = 0;  // of the next console byte, once the server has said it
    bool offset_known_ = false;
    int exit_code_ = -1;
    int status_ = 0;
    std::string error_;
};

template <typename Stream>
int run_session(Connector& c, Stream stream, const TerminalOptions& o) {
    Session<Stream> s(c, std::move(stream), o);
    return s.run();
}

}  // namespace

std::optional<TerminalSize> terminal_size() {
    for (int fd : {STDIN_FILENO, STDOUT_FILENO}) {
        winsize ws{};
        if (isatty(fd) && ioctl(fd, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_row > 0) {
            return TerminalSize{ws.ws_col, ws.ws_row};
        }
    }
    return std::nullopt;
}

int run_terminal(Connector& c, const TerminalOptions& o) {
    // A closed stdout is an error to report (and the terminal to restore), not a death.
    std::signal(SIGPIPE, SIG_IGN);
    const Target& t = c.target();
    if (!t.socket.empty()) {
        return run_session(c, c.connect_unix(), o);
    }
    if (t.tls) {
        return run_session(c, c.connect_tls(), o);
    }
    return run_session(c, c.connect_tcp(), o);
}

}  // namespace hangar::cli
