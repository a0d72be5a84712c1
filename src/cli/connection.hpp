#pragma once
// Where hangarctl finds hangard and how it connects: the unix socket, or TCP with TLS (or
// plain HTTP for tests), each stream ready for an HTTP request or a WebSocket handshake.
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/local/stream_protocol.hpp>
#include <boost/asio/ssl/context.hpp>
#include <boost/beast/ssl/ssl_stream.hpp>

namespace hangar::cli {

// Where hangard is: its unix socket, or an HTTPS/HTTP URL with a token.
struct Target {
    std::string socket;
    std::string host, port;
    bool tls = false, insecure = false;
    std::string token;
    std::string cert, key;  // a TLS client certificate and its key (PEM files)
};

// Opens connections to a Target; throws std::runtime_error with a message for the user.
class Connector {
  public:
    Connector(boost::asio::io_context& io, Target t);

    const Target& target() const { return t_; }
    boost::asio::io_context& io() { return io_; }
    // The Host header: the URL's host, or "hangar" over the unix socket.
    std::string host() const { return t_.socket.empty() ? t_.host : "hangar"; }

    boost::asio::local::stream_protocol::socket connect_unix();
    boost::asio::ip::tcp::socket connect_tcp();
    boost::beast::ssl_stream<boost::asio::ip::tcp::socket> connect_tls();

  private:
    boost::asio::io_context& io_;
    Target t_;
    boost::asio::ssl::context tls_ctx_;
};

}  // namespace hangar::cli
