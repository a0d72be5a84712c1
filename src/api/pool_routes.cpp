// /v1/pools: storage pools (core::Pools).
#include "api/handlers.hpp"
#include "core/pools.hpp"

namespace hangar::api {

void register_pool_routes(Router& router, core::Pools& pools) {
    router.add("GET", "/v1/pools", Access::user, [&pools](Request&, Respond respond) {
        std::string out = "{\"pools\":[";
        bool first = true;
        for (const auto* p : pools.list()) {
            out += first ? "" : ",";
            first = false;
            out += pools.to_json(*p);
        }
        respond(json_response(200, out + "]}"));
    });
    router.add("POST", "/v1/pools", Access::admin, [&pools](Request& req, Respond respond) {
        core::Pool p;
        if (Status st = core::decode_pool(req.body, p); !st) {
            return respond(error_response(st));
        }
        const core::Pool* made = nullptr;
        if (Status st = pools.create(req.caller, std::move(p), &made); !st) {
            return respond(error_response(st));
        }
        auto res = json_response(201, pools.to_json(*made));
        res.headers.emplace_back("Location", "/v1/pools/" + made->name);
        respond(std::move(res));
    });
    router.add("GET", "/v1/pools/{name}", Access::user, [&pools](Request& req, Respond respond) {
        const core::Pool* p = nullptr;
        if (Status st = pools.get(req.params["name"], &p); !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, pools.to_json(*p)));
    });
    router.add("DELETE", "/v1/pools/{name}", Access::admin,
               [&pools](Request& req, Respond respond) {
                   Status st = pools.remove(req.caller, req.params["name"]);
                   respond(st ? json_response(200, "{}") : error_response(st));
               });
}

}  // namespace hangar::api
