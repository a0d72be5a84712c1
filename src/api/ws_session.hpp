#pragma once
// The Beast side of a WsChannel: completes the WebSocket handshake of an accepted upgrade
// and pumps frames between the socket and the channel. Defined in ws_session.cpp for the
// unix socket, plain TCP and TLS streams, so only that file compiles Beast's WebSocket.
#include <memory>

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include "api/ws_channel.hpp"

namespace hangar::api {

template <typename Stream>
void start_ws_channel(Stream stream,
                      boost::beast::http::request<boost::beast::http::string_body> req,
                      std::shared_ptr<WsChannel> channel, WsOptions options);

}  // namespace hangar::api
