#pragma once
// A WebSocket route's far side, without Beast: the console, VNC and interactive exec are
// channels. The HTTP server completes the handshake of an upgrade its route accepted and
// then pumps frames between the socket and the channel (api/ws_session.cpp): binary and text
// frames in, bounded queues out, pings while idle, a close with a reason.
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hangar::api {

struct WsOptions {
    // A bigger message from the client closes the connection (1009, "message too big").
    size_t max_message = 64 * 1024;
    // The first of these the client offers is accepted (Sec-WebSocket-Protocol), e.g.
    // "binary" for noVNC. None offered: none answered.
    std::vector<std::string> subprotocols;
};

// What a channel sees of its WebSocket. Every call is on the reactor; none calls back into
// the channel from inside itself.
class WsPeer {
  public:
    virtual ~WsPeer() = default;
    // Queued behind what is queued; written one frame at a time.
    virtual void send_binary(std::shared_ptr<const std::string> bytes) = 0;
    virtual void send_text(std::string text) = 0;
    // Bytes accepted by send_* and not yet written: a channel keeps this bounded (waits for
    // on_drained, or closes a viewer that is too slow).
    virtual size_t queued_bytes() const = 0;
    // Sends a close frame carrying `reason` (cut to 120 bytes) after the frame being written,
    // drops the rest of the queue, and cuts the connection 2 s later if the peer has not
    // answered. `code` is a WebSocket close code (1000 normal, 1008 policy, 1009 too big,
    // 1011 server error).
    virtual void close(std::string reason, unsigned short code = 1008) = 0;
    virtual bool closed() const = 0;
};

class WsChannel {
  public:
    virtual ~WsChannel() = default;
    // The handshake is done; `peer` lives until on_closed and is kept by the session (a
    // channel holds it as a weak_ptr, or drops its shared_ptr in on_closed).
    virtual void on_open(std::shared_ptr<WsPeer> peer) = 0;
    virtual void on_binary(std::string_view bytes) { (void)bytes; }
    virtual void on_text(std::string_view text) { (void)text; }
    // The send queue has become empty.
    virtual void on_drained() {}
    // The peer closed, went away, timed out, or close() was called: nothing is sent after.
    virtual void on_closed() {}
};

}  // namespace hangar::api
