#include "cli/connection.hpp"

#include <stdexcept>

#include <boost/asio/connect.hpp>
#include <boost/asio/ssl.hpp>

namespace hangar::cli {

namespace ssl = boost::asio::ssl;
using local = boost::asio::local::stream_protocol;
using tcp = boost::asio::ip::tcp;

Connector::Connector(boost::asio::io_context& io, Target t)
    : io_(io), t_(std::move(t)), tls_ctx_(ssl::context::tls_client) {
    if (!t_.tls) {
        return;
    }
    tls_ctx_.set_default_verify_paths();
    tls_ctx_.set_verify_mode(t_.insecure ? ssl::verify_none : ssl::verify_peer);
    if (!t_.cert.empty()) {
        boost::system::error_code ec;
        tls_ctx_.use_certificate_chain_file(t_.cert, ec);
        if (ec) {
            throw std::runtime_error("cannot load " + t_.cert + ": " + ec.message());
        }
        tls_ctx_.use_private_key_file(t_.key, ssl::context::pem, ec);
        if (ec) {
            throw std::runtime_error("cannot load " + t_.key + ": " + ec.message());
        }
    }
}

local::socket Connector::connect_unix() {
    local::socket sock(io_);
    boost::system::error_code ec;
    sock.connect(local::endpoint(t_.socket), ec);
    if (ec) {
        throw std::runtime_error("cannot connect to hangard at " + t_.socket + ": " + ec.message() +
                                 " (is it running? see --socket)");
    }
    return sock;
}

tcp::socket Connector::connect_tcp() {
    tcp::resolver resolver(io_);
    tcp::socket sock(io_);
    boost::system::error_code ec;
    auto results = resolver.resolve(t_.host, t_.port, ec);
    if (!ec) {
        boost::asio::connect(sock, results, ec);
    }
    if (ec) {
        throw std::runtime_error("cannot connect to hangard at " + t_.host + ":" + t_.port + ": " +
                                 ec.message());
    }
    return sock;
}

boost::beast::ssl_stream<tcp::socket> Connector::connect_tls() {
    boost::beast::ssl_stream<tcp::socket> stream(connect_tcp(), tls_ctx_);
    SSL_set_tlsext_host_name(stream.native_handle(), t_.host.c_str());
    if (!t_.insecure) {
        stream.set_verify_callback(ssl::host_name_verification(t_.host));
    }
    boost::system::error_code ec;
    stream.handshake(ssl::stream_base::client, ec);
    if (ec) {
        throw std::runtime_error("TLS handshake with " + t_.host + " failed: " + ec.message() +
                                 (t_.insecure ? "" : " (a self-signed server needs --insecure)"));
    }
    return stream;
}

}  // namespace hangar::cli
