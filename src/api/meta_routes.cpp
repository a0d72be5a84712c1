// Routes about the daemon itself: the Prometheus metrics and the OpenAPI document.
#include <map>

#include "api/handlers.hpp"
#include "core/credentials.hpp"
#include "qmp/client.hpp"
#include "util/metrics.hpp"

namespace hangar::api {

namespace {
void gauge(std::string& out, const char* name, const char* type, const char* help, uint64_t value) {
    metrics::header(out, name, type, help);
    out += name;
    out += ' ';
    out += std::to_string(value);
    out += '\n';
}

size_t probe(const std::function<size_t()>& fn) {
    return fn ? fn() : 0;
}
}  // namespace

void register_meta_routes(Router& router, core::Machines& machines,
                          const core::Credentials& credentials, const Probes& probes) {
    router.add("GET", "/v1/openapi.json", Access::user, [](Request&, Respond respond) {
        respond(json_response(200, std::string(openapi_document())));
    });

    router.add(
        "GET", "/v1/metrics", Access::admin,
        [&router, &machines, &credentials, &probes](Request&, Respond respond) {
            std::string out;
            metrics::header(out, "hangar_machines", "gauge", "Machines by state and type");
            std::map<std::pair<std::string, std::string>, int> by_state;
            for (auto s : {MachineState::stopped, MachineState::starting, MachineState::running,
                           MachineState::paused, MachineState::stopping, MachineState::crashed}) {
                by_state[{std::string(to_string(s)), "vm"}] = 0;
            }
            size_t unresponsive = 0;
            for (const auto& [name, m] : machines.all()) {
                ++by_state[{std::string(to_string(m->state)), m->spec.type}];
                unresponsive += m->unresponsive;
            }
            for (const auto& [key, n] : by_state) {
                out += "hangar_machines{state=\"" + key.first + "\",type=\"" + key.second + "\"} " +
                       std::to_string(n) + "\n";
            }
            gauge(out, "hangar_machines_unresponsive", "gauge",
                  "Machines whose QMP missed a deadline or dropped", unresponsive);
            gauge(out, "hangar_events_total", "counter",
                  "Events emitted (the event sequence number; survives restarts)",
                  machines.revision());
            gauge(out, "hangar_event_subscribers", "gauge", "Open event WebSockets",
                  probe(probes.subscribers));
            gauge(out, "hangar_event_subscribers_dropped_total", "counter",
                  "Event subscribers closed for being too slow", probe(probes.subscribers_dropped));
            gauge(out, "hangar_api_connections", "gauge", "Open API connections",
                  probe(probes.connections));
            metrics::header(out, "hangar_api_connections_refused_total", "counter",
                            "API connections refused by a connection budget, or closed for "
                            "not authenticating in time, by listener and reason");
            if (probes.connections_refused) {
                for (const auto& r : probes.connections_refused()) {
                    out += "hangar_api_connections_refused_total{listener=\"" + r.listener +
                           "\",reason=\"" + r.reason + "\"} " + std::to_string(r.count) + "\n";
                }
            }
            gauge(out, "hangar_images", "gauge", "Local images", probe(probes.images));
            gauge(out, "hangar_image_pulls_running", "gauge", "Image pulls and imports under way",
                  probe(probes.image_pulls_running));
            metrics::header(out, "hangar_image_pulls_total", "counter",
                            "Image pulls and imports ended since start, by result");
            out += "hangar_image_pulls_total{result=\"succeeded\"} " +
                   std::to_string(probe(probes.image_pulls_succeeded)) + "\n";
            out += "hangar_image_pulls_total{result=\"failed\"} " +
                   std::to_string(probe(probes.image_pulls_failed)) + "\n";
            gauge(out, "hangar_tokens", "gauge", "API tokens", credentials.count(core::kToken));
            gauge(out, "hangar_client_certificates", "gauge", "Trusted TLS client certificates",
                  credentials.count(core::kCertificate));
            for (const auto& render : probes.more) {
                render(out);
            }
            router.render_metrics(out);
            metrics::header(out, "hangar_qmp_command_duration_seconds", "histogram",
                            "Time from sending a QMP command to its reply");
            qmp::command_latency().render(out, "hangar_qmp_command_duration_seconds", "");
            metrics::header(out, "hangar_build_info", "gauge", "Version of this hangard");
            out += "hangar_build_info{version=\"" HANGAR_VERSION "\"} 1\n";
            Response res;
            res.body = std::move(out);
            res.content_type = "text/plain; version=0.0.4; charset=utf-8";
            respond(std::move(res));
        });
}

}  // namespace hangar::api
