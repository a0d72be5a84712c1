#include "api/event_stream.hpp"

#include <algorithm>
#include <deque>
#include <memory>

#include <spdlog/spdlog.h>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>
#include <boost/beast/websocket.hpp>
#include <boost/beast/websocket/ssl.hpp>

#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/time.hpp"

namespace hangar::api {

namespace websocket = boost::beast::websocket;
using local = boost::asio::local::stream_protocol;

namespace {
template <typename Stream>
class EventSession : public std::enable_shared_from_this<EventSession<Stream>> {
  public:
    EventSession(EventStreams& streams, Stream sock, EventFilter filter,
                 std::optional<uint64_t> since)
        : streams_(streams),
          ws_(std::move(sock)),
          hard_close_(ws_.get_executor()),
          filter_(std::move(filter)),
          since_(since) {
        ++streams_.sessions_;
    }
    ~EventSession() {
        unsubscribe();
        --streams_.sessions_;
    }

    void run(boost::beast::http::request<boost::beast::http::string_body> req) {
        // Pings when idle; a peer that answers nothing for the suggested timeout is closed.
        ws_.set_option(websocket::stream_base::timeout::suggested(boost::beast::role_type::server));
        ws_.set_option(websocket::stream_base::decorator([](websocket::response_type& res) {
            res.set(boost::beast::http::field::server, "hangard/" HANGAR_VERSION);
        }));
        ws_.read_message_max(4096);
        ws_.async_accept(req, [self = this->shared_from_this()](boost::system::error_code ec) {
            if (!ec) {
                self->on_open();
            }
        });
    }

  private:
    void on_open() {
        // Subscribe, then start the replay: both in this one turn of the reactor. While the
        // replay runs, live events are not queued: they are in the ring, ahead of the cursor.
        std::weak_ptr<EventSession> weak = this->weak_from_this();
        sub_ = streams_.bus().subscribe([weak](const core::Event& e) {
            if (auto self = weak.lock()) {
                self->offer(e);
            }
        });
        if (since_) {
            start_replay(*since_);
        }
        read_loop();
    }

    // Sets the cursor after `since`; a `since` the ring no longer covers (or from another
    // history) gets events.gap first.
    void start_replay(uint64_t since) {
        uint64_t revision = streams_.bus().revision();
        uint64_t oldest = oldest_kept();
        if (since > revision) {
            enqueue(0, gap_frame(since, oldest, revision,
                                 "since is newer than this server's history: re-list"));
            cursor_ = revision + 1;
        } else if (since + 1 < oldest) {
            enqueue(0, gap_frame(since, oldest, revision, kLostMessage));
            cursor_ = oldest;
        } else {
            cursor_ = since + 1;
        }
        replaying_ = true;
        write_next();
    }

    uint64_t oldest_kept() const {
        const auto& ring = streams_.bus().ring();
        return ring.empty() ? streams_.bus().revision() + 1 : ring.front().seq;
    }

    static constexpr const char* kLostMessage =
        "events after since are no longer kept: re-list, then continue from the list's "
        "revision";

    static std::shared_ptr<const std::string> gap_frame(uint64_t since, uint64_t oldest,
                                                        uint64_t revision, const char* message) {
        // Not part of the sequence: seq 0.
        return std::make_shared<const std::string>(core::EventBus::frame(
            0, now_rfc3339_us(), to_string(core::EventType::events_gap), "",
            core::event_data(core::EventsGap{since, oldest, revision, message})));
    }

    // Replay: the next frame at or after the cursor that passes the filter, taken from the
    // ring only when the previous write has completed, so the socket paces it and nothing
    // piles up here. The ring may have dropped events under a slow reader: that range is
    // announced with events.gap and the replay goes on from the oldest kept. Once the cursor
    // is past the newest event the session is live, in the same turn, so every later event
    // reaches offer() and none is sent twice.
    bool pull_replay() {
        const auto& ring = streams_.bus().ring();
        if (uint64_t oldest = oldest_kept(); cursor_ < oldest) {
            queue_.push_back(
                {0, gap_frame(cursor_ - 1, oldest, streams_.bus().revision(), kLostMessage)});
            cursor_ = oldest;
            return true;
        }
        auto it = std::lower_bound(ring.begin(), ring.end(), cursor_,
                                   [](const core::Event& e, uint64_t seq) { return e.seq < seq; });
        for (; it != ring.end(); ++it) {
            if (filter_.matches(*it)) {
                cursor_ = it->seq + 1;
                queue_.push_back({it->seq, it->frame});
                return true;
            }
        }
        cursor_ = streams_.bus().revision() + 1;
        replaying_ = false;
        return false;
    }

    void offer(const core::Event& e) {
        if (!replaying_ && filter_.matches(e)) {
            enqueue(e.seq, e.frame);
        }
    }

    void enqueue(uint64_t seq, std::shared_ptr<const std::string> frame) {
        if (closing_) {
            return;
        }
        if (queue_.size() >= streams_.limits().queue) {
            ++streams_.dropped_slow_;
            spdlog::warn("events: closing a subscriber that is {} events behind", queue_.size());
            close_with("subscriber too slow: " + std::to_string(queue_.size()) +
                       " events queued; reconnect with since=" + std::to_string(last_sent_));
            return;
        }
        queue_.push_back({seq, std::move(frame)});
        write_next();
    }

    void write_next() {
        if (writing_ || closing_) {
            return;
        }
        if (queue_.empty() && !(replaying_ && pull_replay())) {
            return;
        }
        writing_ = true;
        ws_.text(true);
        ws_.async_write(boost::asio::buffer(*queue_.front().frame),
                        [self = this->shared_from_this()](boost::system::error_code ec, size_t) {
                            self->writing_ = false;
                            if (ec) {
                                return self->unsubscribe();
                            }
                            if (self->queue_.front().seq != 0) {
                                self->last_sent_ = self->queue_.front().seq;
                            }
                            self->queue_.pop_front();
                            if (self->closing_) {
                                return self->send_close();
                            }
                            self->write_next();
                        });
    }

    void close_with(std::string reason) {
        closing_ = true;
        close_reason_ = std::move(reason);
        unsubscribe();
        // Drop what is queued but not being written; the close follows the write in flight.
        while (queue_.size() > (writing_ ? 1u : 0u)) {
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
    }

    void send_close() {
        if (close_sent_) {
            return;
        }
        close_sent_ = true;
        websocket::close_reason cr(websocket::close_code::policy_error);
        cr.reason = close_reason_.substr(0, 120);
        ws_.async_close(cr, [self = this->shared_from_this()](boost::system::error_code) {});
    }

    void read_loop() {
        ws_.async_read(
            rbuf_, [self = this->shared_from_this()](boost::system::error_code ec, size_t n) {
                if (ec) {
                    return self->unsubscribe();  // closed by the peer, a timeout, or an error
                }
                self->rbuf_.consume(n);  // clients have nothing to say; ignore it
                self->read_loop();
            });
    }

    void unsubscribe() {
        if (sub_) {
            streams_.bus().unsubscribe(sub_);
            sub_ = 0;
        }
    }

    EventStreams& streams_;
    websocket::stream<Stream> ws_;
    boost::asio::steady_timer hard_close_;
    EventFilter filter_;
    std::optional<uint64_t> since_;
    uint64_t sub_ = 0;
    bool replaying_ = false;
    uint64_t cursor_ = 0;  // while replaying: the next seq to take from the ring
    struct Queued {
        uint64_t seq;  // 0 for frames outside the sequence (events.gap)
        std::shared_ptr<const std::string> frame;
    };
    std::deque<Queued> queue_;
    boost::beast::flat_buffer rbuf_;
    bool writing_ = false;
    bool closing_ = false;
    bool close_sent_ = false;
    std::string close_reason_;
    uint64_t last_sent_ = 0;
};
}  // namespace

template <typename Stream>
void EventStreams::start(Stream stream,
                         boost::beast::http::request<boost::beast::http::string_body> req,
                         EventFilter filter, std::optional<uint64_t> since) {
    std::make_shared<EventSession<Stream>>(*this, std::move(stream), std::move(filter), since)
        ->run(std::move(req));
}

using Req = boost::beast::http::request<boost::beast::http::string_body>;
template void EventStreams::start(local::socket, Req, EventFilter, std::optional<uint64_t>);
template void EventStreams::start(boost::asio::ip::tcp::socket, Req, EventFilter,
                                  std::optional<uint64_t>);
template void EventStreams::start(boost::beast::ssl_stream<boost::asio::ip::tcp::socket>, Req,
                                  EventFilter, std::optional<uint64_t>);

}  // namespace hangar::api
