#pragma once
#include <filesystem>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "api/router.hpp"
#include "core/clones.hpp"
#include "core/credentials.hpp"
#include "core/disks.hpp"
#include "core/health.hpp"
#include "core/images.hpp"
#include "core/machines.hpp"
#include "core/operations.hpp"
#include "core/pools.hpp"
#include "core/snapshots.hpp"

namespace boost::asio {
class io_context;
}
namespace hangar::api {

class Tickets;

struct ServerInfo {
    std::filesystem::path state_dir;
    std::string accelerator;
    const core::Quotas* quotas = nullptr;  // shown to the caller by GET /v1
    const core::Health* health = nullptr;  // GET /v1/health's checks; required
};

// Figures only the listeners know, read when /v1/metrics is rendered. Set them once the
// listeners exist; unset ones read as 0.
struct Probes {
    std::function<size_t()> subscribers, subscribers_dropped, connections;
    std::function<size_t()> images, image_pulls_running, image_pulls_succeeded, image_pulls_failed;
    // Connections the listeners refused, by listener ("unix", "tcp") and reason.
    struct Refused {
        std::string listener, reason;
        uint64_t count = 0;
    };
    std::function<std::vector<Refused>()> connections_refused;
    // Appends the metrics of other parts (the consoles).
    std::vector<std::function<void(std::string& out)>> more;
};

// Registers every route of the API on `router`. `info` and `probes` must outlive it.
void register_routes(Router& router, core::Machines& machines, core::Credentials& credentials,
                     core::Operations& operations, core::Images& images, const ServerInfo& info,
                     const Probes& probes);
// /v1/images (part of register_routes).
void register_image_routes(Router& router, core::Images& images);

// /v1/templates (template_routes.cpp), and the hangar_templates metric.
void register_template_routes(Router& router, core::Templates& templates);
void template_metrics(const core::Templates& templates, std::string& out);
// /v1/pools (pool_routes.cpp).
void register_pool_routes(Router& router, core::Pools& pools);
// /v1/disks and /v1/machines/{name}/disks (disk_routes.cpp).
void register_disk_routes(Router& router, core::Disks& disks, core::Machines& machines);
// /v1/machines/{name}/snapshots (snapshot_routes.cpp).
// ?wait=true|false (1|0); `wait` keeps its default when absent.
Status parse_wait(const std::map<std::string, std::string>& query, bool& wait);
// 202 naming operation `op_id` (body {"operation"}, Location /v1/operations/ID).
Response accepted(const std::string& op_id);

void register_snapshot_routes(Router& router, core::Snapshots& snapshots, core::Machines& machines,
                              core::Operations& operations);
// POST /v1/machines/{name}/clone (also in snapshot_routes.cpp).
void register_clone_route(Router& router, core::Clones& clones, core::Machines& machines,
                          core::Operations& operations);

// The parts of register_routes that live in other files.
void register_meta_routes(Router& router, core::Machines& machines,
                          const core::Credentials& credentials, const Probes& probes);

// A VM's display and browsers' tickets (display_routes.cpp): GET /v1/machines/{name}/vnc (a
// WebSocket piped to QEMU's VNC server), GET /v1/machines/{name}/screenshot (PNG) and
// POST /v1/machines/{name}/console/ticket. `io` and `tickets` must outlive the router.
void register_display_routes(Router& router, core::Machines& machines, boost::asio::io_context& io,
                             Tickets& tickets);

// The OpenAPI 3.1 document served at /v1/openapi.json (docs/openapi.json, built in).
std::string_view openapi_document();

}  // namespace hangar::api
