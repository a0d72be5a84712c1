#pragma once
// The WebSocket of an interactive exec (GET /v1/machines/{name}/exec/{id}): binary frames both
// ways are the pty's bytes; the client's text frames are {"type":"resize","cols":C,"rows":R};
// the last server frame is {"type":"exit","exit_code":N} once the command has exited and its
// output is sent, then a close 1000. When the WebSocket ends first, the pty is hung up (the
// command's session gets SIGHUP; what is left of it is killed 2 s later).
#include <memory>
#include <string>

#include "api/ws_channel.hpp"

namespace hangar {
class PtyCommand;
}

namespace hangar::api {

std::shared_ptr<WsChannel> make_exec_channel(std::string machine, std::shared_ptr<PtyCommand> pty);

}  // namespace hangar::api
