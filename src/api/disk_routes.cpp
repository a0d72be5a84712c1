// /v1/disks: disks in storage pools; /v1/machines/{name}/disks: attaching them (core::Disks).
#include <simdjson.h>

#include "api/handlers.hpp"
#include "core/disks.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"

namespace hangar::api {

namespace {
// A body of one field: {"size_gib": N} or {"disk": "NAME"}.
Status one_field(const std::string& body, const char* want, std::string* str, uint32_t* num) {
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    if (Status st = json::parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool seen = false;
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        if (key != want) {
            return json::unknown_field("", key);
        }
        Status st = str ? json::get_string(v, key, *str) : json::get_u32(v, key, *num);
        if (!st) {
            return st;
        }
        seen = true;
    }
    if (!seen) {
        return {Errc::bad_request, std::string("field '") + want + "' is required"};
    }
    return {};
}
}  // namespace

void register_disk_routes(Router& router, core::Disks& disks, core::Machines& machines) {
    router.add("GET", "/v1/disks", Access::user, [&disks](Request& req, Respond respond) {
        std::string out = "{\"disks\":[";
        bool first = true;
        for (const auto* d : disks.list(req.caller)) {
            out += first ? "" : ",";
            first = false;
            out += disks.to_json(*d);
        }
        respond(json_response(200, out + "]}"));
    });
    router.add("POST", "/v1/disks", Access::user, [&disks](Request& req, Respond respond) {
        core::DiskRequest dr;
        if (Status st = core::decode_disk_request(req.body, dr); !st) {
            return respond(error_response(st));
        }
        disks.create(req.caller, std::move(dr),
                     [&disks, respond](const Status& st, const core::Disk* d) {
                         if (!st) {
                             return respond(error_response(st));
                         }
                         auto res = json_response(201, disks.to_json(*d));
                         res.headers.emplace_back("Location", "/v1/disks/" + d->name);
                         respond(std::move(res));
                     });
    });
    router.add("GET", "/v1/disks/{name}", Access::user, [&disks](Request& req, Respond respond) {
        const core::Disk* d = nullptr;
        if (Status st = disks.get(req.caller, req.params["name"], &d); !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, disks.to_json(*d)));
    });
    router.add("PATCH", "/v1/disks/{name}", Access::user, [&disks](Request& req, Respond respond) {
        uint32_t size = 0;
        if (Status st = one_field(req.body, "size_gib", nullptr, &size); !st) {
            return respond(error_response(st));
        }
        disks.resize(req.caller, req.params["name"], size,
                     [&disks, respond](const Status& st, const core::Disk* d) {
                         respond(st ? json_response(200, disks.to_json(*d)) : error_response(st));
                     });
    });
    router.add("DELETE", "/v1/disks/{name}", Access::user, [&disks](Request& req, Respond respond) {
        Status st = disks.remove(req.caller, req.params["name"]);
        respond(st ? json_response(200, "{}") : error_response(st));
    });
    // Answers with the machine, its "disks" as they are now.
    auto machine_answer = [&machines](const core::Caller& caller, const std::string& name,
                                      Respond respond) {
        return [&machines, caller, name, respond](const Status& st, const core::Disk*) {
            const core::Machine* m = nullptr;
            if (!st) {
                return respond(error_response(st));
            }
            if (Status gst = machines.get(caller, name, &m); !gst) {
                return respond(error_response(gst));
            }
            respond(json_response(200, machines.to_json(*m)));
        };
    };
    router.add("POST", "/v1/machines/{name}/disks", Access::user,
               [&disks, machine_answer](Request& req, Respond respond) {
                   std::string disk;
                   if (Status st = one_field(req.body, "disk", &disk, nullptr); !st) {
                       return respond(error_response(st));
                   }
                   const std::string& name = req.params["name"];
                   disks.attach(req.caller, name, disk,
                                machine_answer(req.caller, name, std::move(respond)));
               });
    router.add("DELETE", "/v1/machines/{name}/disks/{disk}", Access::user,
               [&disks, machine_answer](Request& req, Respond respond) {
                   const std::string& name = req.params["name"];
                   disks.detach(req.caller, name, req.params["disk"],
                                machine_answer(req.caller, name, std::move(respond)));
               });
}

}  // namespace hangar::api
