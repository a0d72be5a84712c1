#pragma once
#include <filesystem>
#include <functional>
#include <string>

#include "api/router.hpp"
#include "core/machines.hpp"
#include "core/tokens.hpp"

namespace hangar::api {

struct ServerInfo {
    std::filesystem::path state_dir;
    std::string accelerator;
    std::string dbus = "none";
};

// Registers every route of the API on `router`.
void register_routes(Router& router, core::Machines& machines, core::Tokens& tokens,
                     const ServerInfo& info);

// Parses a create body into `spec`. Unknown fields and wrong types are errors.
Status parse_machine_spec(const std::string& body, MachineSpec& spec);

}  // namespace hangar::api
