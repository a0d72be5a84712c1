// /v1/templates: size templates (core::Templates).
#include "api/handlers.hpp"
#include "core/templates.hpp"
#include "util/metrics.hpp"

namespace hangar::api {

void register_template_routes(Router& router, core::Templates& templates) {
    router.add("GET", "/v1/templates", Access::user, [&templates](Request&, Respond respond) {
        std::string out = "{\"templates\":[";
        bool first = true;
        for (const auto* t : templates.list()) {
            out += first ? "" : ",";
            first = false;
            out += templates.to_json(*t);
        }
        respond(json_response(200, out + "]}"));
    });
    router.add("POST", "/v1/templates", Access::admin, [&templates](Request& req, Respond respond) {
        core::Template t;
        if (Status st = core::decode_template(req.body, t); !st) {
            return respond(error_response(st));
        }
        const core::Template* made = nullptr;
        if (Status st = templates.create(req.caller, std::move(t), &made); !st) {
            return respond(error_response(st));
        }
        auto res = json_response(201, templates.to_json(*made));
        res.headers.emplace_back("Location", "/v1/templates/" + made->name);
        respond(std::move(res));
    });
    router.add("GET", "/v1/templates/{name}", Access::user,
               [&templates](Request& req, Respond respond) {
                   const core::Template* t = nullptr;
                   if (Status st = templates.get(req.params["name"], &t); !st) {
                       return respond(error_response(st));
                   }
                   respond(json_response(200, templates.to_json(*t)));
               });
    router.add("DELETE", "/v1/templates/{name}", Access::admin,
               [&templates](Request& req, Respond respond) {
                   Status st = templates.remove(req.caller, req.params["name"]);
                   respond(st ? json_response(200, "{}") : error_response(st));
               });
}

void template_metrics(const core::Templates& templates, std::string& out) {
    metrics::header(out, "hangar_templates", "gauge", "Size templates");
    out += "hangar_templates " + std::to_string(templates.size()) + "\n";
}

}  // namespace hangar::api
