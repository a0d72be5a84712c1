#pragma once
#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "api/router.hpp"
#include "core/machines.hpp"
#include "core/operations.hpp"
#include "core/tokens.hpp"

namespace hangar::api {

struct ServerInfo {
    std::filesystem::path state_dir;
    std::string accelerator;
    std::string dbus = "none";
};

// Registers every route of the API on `router`.
void register_routes(Router& router, core::Machines& machines, core::Tokens& tokens,
                     core::Operations& operations, const ServerInfo& info);

// Parses a create body into `spec`. Unknown fields and wrong types are errors.
Status parse_machine_spec(const std::string& body, MachineSpec& spec);
// Reads the fields present in `body` over `spec` (create and PATCH); `seen` lists them.
Status parse_spec_fields(const std::string& body, MachineSpec& spec, std::set<std::string>& seen);

}  // namespace hangar::api
