#pragma once
// GET /v1/events: a WebSocket that first replays what the client missed (`since`), then goes
// live. The replay is a cursor into the bus's ring, advanced as writes complete, so it never
// queues; live, each subscriber has a filter, a bounded queue and one write in flight, and one
// that cannot keep up is closed with a reason instead of being buffered without bound. Frames
// are shared: an event is serialized once for all subscribers.
#include <cstdint>
#include <optional>
#include <set>
#include <string>

#include <boost/asio/local/stream_protocol.hpp>
#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "api/event_filter.hpp"
#include "core/event_bus.hpp"

namespace hangar::api {

struct EventStreamLimits {
    size_t queue = 4096;  // live events waiting for one subscriber
    size_t max_subscribers = 1024;
};

class EventStreams {
  public:
    EventStreams(core::EventBus& bus, EventStreamLimits limits) : bus_(bus), limits_(limits) {}
    // Completes the WebSocket handshake of `req` on `stream` and streams events. Defined for
    // the unix socket, plain TCP and TLS streams.
    template <typename Stream>
    void start(Stream stream, boost::beast::http::request<boost::beast::http::string_body> req,
               EventFilter filter, std::optional<uint64_t> since);
    size_t subscribers() const { return sessions_; }
    bool full() const { return sessions_ >= limits_.max_subscribers; }
    uint64_t dropped_slow() const { return dropped_slow_; }

    core::EventBus& bus() { return bus_; }
    const EventStreamLimits& limits() const { return limits_; }
    size_t sessions_ = 0;
    uint64_t dropped_slow_ = 0;

  private:
    core::EventBus& bus_;
    EventStreamLimits limits_;
};

}  // namespace hangar::api
