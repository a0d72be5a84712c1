#include "api/ws_session.hpp"

#include <deque>
#include <string>

#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "util/reactor.hpp"

namespace hangar::api {

namespace websocket = boost::beast::websocket;
using Req = boost::beast::http::request<boost::beast::http::string_body>;

namespace {

// The first protocol of `offered` (a Sec-WebSocket-Protocol list) that `ours` has, or "".
std::string choose_subprotocol(std::string_view offered, const std::vector<std::string>& ours) {
    while (!offered.empty()) {
        size_t comma = offered.find(',');
        std::string_view item = offered.substr(0, comma);
        while (!item.empty() && (item.front() == ' ' || item.front() == '\t')) {
            item.remove_prefix(1);
        }
        while (!item.empty() && (item.back() == ' ' || item.back() == '\t')) {
            item.remove_suffix(1);
        }
        for (const auto& p : ours) {
            if (item == p) {
                return p;
            }
        }
        if (comma == std::string_view::npos) {
            break;
        }
        offered.remove_prefix(comma + 1);
    }
    return {};
}

template <typename Stream>
class ChannelSession final : public WsPeer,
                             public std::enable_shared_from_this<ChannelSession<Stream>> {
  public:
    ChannelSession(Stream stream, std::shared_ptr<WsChannel> channel, WsOptions options)
        : ws_(std::move(stream)),
          hard_close_(ws_.get_executor()),
          channel_(std::move(channel)),
          options_(std::move(options)) {}

    void run(Req req) {
        ws_.set_option(websocket::stream_base::timeout::suggested(boost::beast::role_type::server));
        auto offered = req[boost::beast::http::field::sec_websocket_protocol];
        std::string protocol =
            choose_subprotocol({offered.data(), offered.size()}, options_.subprotocols);
        ws_.set_option(websocket::stream_base::decorator([protocol](websocket::response_type& res) {
            res.set(boost::beast::http::field::server, "hangard/" HANGAR_VERSION);
            if (!protocol.empty()) {
                res.set(boost::beast::http::field::sec_websocket_protocol, protocol);
            }
        }));
        ws_.read_message_max(options_.max_message);
        ws_.auto_fragment(false);
        ws_.async_accept(req, [self = this->shared_from_this()](boost::system::error_code ec) {
            if (ec) {
                return self->finish();
            }
            self->channel_->on_open(self);
            self->read_loop();
        });
    }

    void send_binary(std::shared_ptr<const std::string> bytes) override {
        enqueue(true, std::move(bytes));
    }
    void send_text(std::string text) override {
        enqueue(false, std::make_shared<const std::string>(std::move(text)));
    }
    size_t queued_bytes() const override { return queued_bytes_; }
    bool closed() const override { return closing_ || finished_; }

    void close(std::string reason, unsigned short code) override {
        if (closing_ || finished_) {
            return;
        }
        closing_ = true;
        close_reason_ = std::move(reason);
        close_code_ = code;
        // Drop what is queued but not being written; the close follows the write in flight.
        while (queue_.size() > (writing_ ? 1u : 0u)) {
            queued_bytes_ -= queue_.back().bytes->size();
            queue_.pop_back();
        }
        if (!writing_) {
            send_close();
        }
        // A peer that reads nothing never lets the close frame out: cut the connection.
        hard_close_.expires_after(std::chrono::seconds(2));
        hard_close_.async_wait([self = this->shared_from_this()](boost::system::error_code ec) {
            if (!ec) {
                boost::system::error_code ignored;
                boost::beast::get_lowest_layer(self->ws_).close(ignored);
            }
        });
        // The channel hears of it from the reactor, never from inside its own call.
        boost::asio::post(ws_.get_executor(),
                          [self = this->shared_from_this()] { self->finish(); });
    }

  private:
    struct Frame {
        bool binary;
        std::shared_ptr<const std::string> bytes;
    };

    void enqueue(bool binary, std::shared_ptr<const std::string> bytes) {
        if (closing_ || finished_ || !bytes) {
            return;
        }
        queued_bytes_ += bytes->size();
        queue_.push_back({binary, std::move(bytes)});
        write_next();
    }

    void write_next() {
        if (writing_ || queue_.empty() || finished_) {
            return;
        }
        writing_ = true;
        ws_.binary(queue_.front().binary);
        // The frame stays alive with the write, also if finish() empties the queue.
        auto bytes = queue_.front().bytes;
        ws_.async_write(boost::asio::buffer(*bytes),
                        [self = this->shared_from_this(), bytes](boost::system::error_code ec,
                                                                 size_t) { self->written(ec); });
    }

    void written(boost::system::error_code ec) {
        HANGAR_ASSERT_REACTOR();
        writing_ = false;
        if (!queue_.empty()) {
            queued_bytes_ -= queue_.front().bytes->size();
            queue_.pop_front();
        }
        if (ec) {
            return finish();
        }
        if (closing_) {
            return send_close();
        }
        if (!queue_.empty()) {
            return write_next();
        }
        if (channel_ && !finished_) {
            channel_->on_drained();
        }
    }

    void send_close() {
        if (close_sent_) {
            return;
        }
        close_sent_ = true;
        websocket::close_reason cr(close_code_);
        cr.reason = close_reason_.substr(0, 120);
        ws_.async_close(cr, [self = this->shared_from_this()](boost::system::error_code) {
            boost::system::error_code ignored;
            boost::beast::get_lowest_layer(self->ws_).close(ignored);
        });
    }

    void read_loop() {
        ws_.async_read(rbuf_, [self = this->shared_from_this()](boost::system::error_code ec,
                                                                size_t) { self->got(ec); });
    }

    void got(boost::system::error_code ec) {
        HANGAR_ASSERT_REACTOR();
        if (ec) {
            // Closed by the peer, a timeout, a message over the limit (Beast answers 1009),
            // or an error.
            return finish();
        }
        auto data = rbuf_.cdata();
        std::string_view bytes(static_cast<const char*>(data.data()), data.size());
        if (channel_ && !closing_ && !finished_) {
            if (ws_.got_binary()) {
                channel_->on_binary(bytes);
            } else {
                channel_->on_text(bytes);
            }
        }
        rbuf_.consume(rbuf_.size());
        if (!finished_) {
            read_loop();
        }
    }

    // Once: the channel is told and let go (it may hold this session).
    void finish() {
        if (finished_) {
            return;
        }
        finished_ = true;
        queue_.clear();
        queued_bytes_ = 0;
        if (auto channel = std::move(channel_)) {
            channel->on_closed();
        }
    }

    websocket::stream<Stream> ws_;
    boost::asio::steady_timer hard_close_;
    std::shared_ptr<WsChannel> channel_;
    WsOptions options_;
    std::deque<Frame> queue_;
    size_t queued_bytes_ = 0;
    boost::beast::flat_buffer rbuf_;
    bool writing_ = false;
    bool closing_ = false;
    bool close_sent_ = false;
    bool finished_ = false;
    std::string close_reason_;
    unsigned short close_code_ = 1008;
};

}  // namespace

template <typename Stream>
void start_ws_channel(Stream stream, Req req, std::shared_ptr<WsChannel> channel,
                      WsOptions options) {
    std::make_shared<ChannelSession<Stream>>(std::move(stream), std::move(channel),
                                             std::move(options))
        ->run(std::move(req));
}

template void start_ws_channel(boost::asio::local::stream_protocol::socket, Req,
                               std::shared_ptr<WsChannel>, WsOptions);
template void start_ws_channel(boost::asio::ip::tcp::socket, Req, std::shared_ptr<WsChannel>,
                               WsOptions);
template void start_ws_channel(boost::beast::ssl_stream<boost::asio::ip::tcp::socket>, Req,
                               std::shared_ptr<WsChannel>, WsOptions);

}  // namespace hangar::api
