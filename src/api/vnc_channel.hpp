#pragma once
// GET /v1/machines/NAME/vnc: a WebSocket piped to the VM's VNC server (QEMU's `-vnc unix:`
// socket in the machine's directory), byte for byte both ways, so noVNC and other
// VNC-over-WebSocket clients reach the display through hangard's own port. QEMU runs the VNC
// server shared (share=force-shared): each channel is one more VNC client.
//
// Both directions are bounded. Display → browser: the VNC socket is read only while the
// WebSocket's queue is under `kMaxQueued`; past it reading stops (QEMU then holds back its
// updates) and resumes on_drained. Browser → display: what waits for the VNC socket is at most
// `kMaxQueued` bytes; a viewer that sends more is closed (1008).
#include <array>
#include <deque>
#include <functional>
#include <memory>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/local/stream_protocol.hpp>

#include "api/ws_channel.hpp"
#include "hangar/error.hpp"

namespace hangar::api {

class VncChannel final : public WsChannel, public std::enable_shared_from_this<VncChannel> {
  public:
    static constexpr size_t kMaxQueued = 1 << 20;
    static constexpr size_t kReadSize = 64 * 1024;

    // Connects to `socket_path`; `done` (never from inside this call) with the channel once
    // connected, or an error saying why the display cannot be reached.
    static void connect(boost::asio::io_context& io, const std::string& socket_path,
                        const std::string& machine,
                        std::function<void(const Status&, std::shared_ptr<VncChannel>)> done);

    VncChannel(boost::asio::io_context& io, std::string machine);
    ~VncChannel() override;

    void on_open(std::shared_ptr<WsPeer> peer) override;
    void on_binary(std::string_view bytes) override;
    void on_text(std::string_view text) override;
    void on_drained() override;
    void on_closed() override;

    // Bytes carried so far each way (for metrics and tests).
    uint64_t bytes_from_display() const { return from_display_; }
    uint64_t bytes_to_display() const { return to_display_; }

  private:
    void read();
    void write();
    void end(std::string reason, unsigned short code);

    boost::asio::local::stream_protocol::socket sock_;
    std::string machine_;
    std::shared_ptr<WsPeer> peer_;  // until on_closed
    std::array<char, kReadSize> buf_{};
    bool reading_ = false;
    std::deque<std::string> out_;  // to the VNC server, the front being written
    size_t out_bytes_ = 0;
    bool writing_ = false;
    bool closed_ = false;
    uint64_t from_display_ = 0, to_display_ = 0;
};

}  // namespace hangar::api
