#pragma once
#include <filesystem>
#include <functional>
#include <set>
#include <string>

#include "api/router.hpp"
#include "core/credentials.hpp"
#include "core/images.hpp"
#include "core/machines.hpp"
#include "core/operations.hpp"

namespace hangar::api {

struct ServerInfo {
    std::filesystem::path state_dir;
    std::string accelerator;
};

// Figures only the listeners know, read when /v1/metrics is rendered. Set them once the
// listeners exist; unset ones read as 0.
struct Probes {
    std::function<size_t()> subscribers, subscribers_dropped, connections;
    std::function<size_t()> images, image_pulls_running, image_pulls_succeeded, image_pulls_failed;
    // Whether org.hangar is served on D-Bus, and how it stands.
    std::function<bool(std::string& detail)> dbus;
};

// Registers every route of the API on `router`. `info` and `probes` must outlive it.
void register_routes(Router& router, core::Machines& machines, core::Credentials& credentials,
                     core::Operations& operations, core::Images& images, const ServerInfo& info,
                     const Probes& probes);
// /v1/images (part of register_routes).
void register_image_routes(Router& router, core::Images& images);

// The parts of register_routes that live in other files.
void register_meta_routes(Router& router, core::Machines& machines,
                          const core::Credentials& credentials, const Probes& probes);

// The OpenAPI 3.1 document served at /v1/openapi.json (docs/openapi.json, built in).
std::string_view openapi_document();

// Parses a create body into `spec`. Unknown fields and wrong types are errors.
Status parse_machine_spec(const std::string& body, MachineSpec& spec);
// Reads the fields present in `body` over `spec` (create and PATCH); `seen` lists them.
Status parse_spec_fields(const std::string& body, MachineSpec& spec, std::set<std::string>& seen);

}  // namespace hangar::api
