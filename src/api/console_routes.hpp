#pragma once
#include "api/router.hpp"
#include "core/console.hpp"

namespace hangar::api {

// GET /v1/machines/{name}/console (WebSocket; the protocol is in docs/openapi.json).
void register_console_routes(Router& router, core::Consoles& consoles, core::Machines& machines);

}  // namespace hangar::api
