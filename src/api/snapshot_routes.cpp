// /v1/machines/{name}/snapshots: snapshots of a VM's disks and memory (core::Snapshots), and
// /v1/machines/{name}/clone: new machines on copies of a VM's disks or of a snapshot.
#include "api/handlers.hpp"
#include "core/operations.hpp"
#include "core/snapshots.hpp"
#include "util/json.hpp"

namespace hangar::api {

void register_snapshot_routes(Router& router, core::Snapshots& snapshots, core::Machines& machines,
                              core::Operations& operations) {
    router.add("GET", "/v1/machines/{name}/snapshots", Access::user,
               [&snapshots](Request& req, Respond respond) {
                   std::vector<const core::Snapshot*> list;
                   if (Status st = snapshots.list(req.caller, req.params["name"], list); !st) {
                       return respond(error_response(st));
                   }
                   std::string out = "{\"snapshots\":[";
                   for (size_t i = 0; i < list.size(); ++i) {
                       out += (i ? "," : "") + snapshots.to_json(*list[i]);
                   }
                   respond(json_response(200, out + "]}"));
               });
    // A snapshot with memory is an operation (202) unless ?wait=true; one of disks only is
    // answered when taken (milliseconds).
    router.add("POST", "/v1/machines/{name}/snapshots", Access::user,
               [&snapshots, &operations](Request& req, Respond respond) {
                   core::SnapshotRequest sr;
                   if (Status st = core::decode_snapshot_request(req.body, sr); !st) {
                       return respond(error_response(st));
                   }
                   bool wait = !sr.memory;
                   if (Status st = parse_wait(req.query, wait); !st) {
                       return respond(error_response(st));
                   }
                   std::string machine = req.params["name"];
                   auto op = std::make_shared<std::string>();
                   if (!wait) {
                       sr.accepted = [&operations, op, machine, respond, uid = req.caller.uid] {
                           *op = operations.new_id();
                           operations.start_step(*op, machine, uid, "snapshot");
                           respond(accepted(*op));
                       };
                   }
                   snapshots.create(req.caller, machine, std::move(sr),
                                    [&snapshots, &operations, op, machine, respond](
                                        const Status& st, const core::Snapshot* s) {
                                        if (!op->empty()) {
                                            return operations.finish_step(*op, st);
                                        }
                                        if (!st) {
                                            return respond(error_response(st));
                                        }
                                        auto res = json_response(201, snapshots.to_json(*s));
                                        res.headers.emplace_back(
                                            "Location",
                                            "/v1/machines/" + machine + "/snapshots/" + s->name);
                                        respond(std::move(res));
                                    });
               });
    router.add(
        "GET", "/v1/machines/{name}/snapshots/{snap}", Access::user,
        [&snapshots](Request& req, Respond respond) {
            const core::Snapshot* s = nullptr;
            if (Status st = snapshots.get(req.caller, req.params["name"], req.params["snap"], &s);
                !st) {
                return respond(error_response(st));
            }
            respond(json_response(200, snapshots.to_json(*s)));
        });
    router.add("DELETE", "/v1/machines/{name}/snapshots/{snap}", Access::user,
               [&snapshots](Request& req, Respond respond) {
                   snapshots.remove(req.caller, req.params["name"], req.params["snap"],
                                    [respond](const Status& st, const core::Snapshot*) {
                                        respond(st ? json_response(200, "{}") : error_response(st));
                                    });
               });
    // Answers with the machine.
    router.add("POST", "/v1/machines/{name}/snapshots/{snap}/restore", Access::user,
               [&snapshots, &machines](Request& req, Respond respond) {
                   bool memory = true;
                   if (Status st = core::decode_restore_request(req.body, memory); !st) {
                       return respond(error_response(st));
                   }
                   std::string machine = req.params["name"];
                   core::Caller caller = req.caller;
                   snapshots.restore(caller, machine, req.params["snap"], memory,
                                     [&machines, caller, machine, respond](const Status& st,
                                                                           const core::Snapshot*) {
                                         const core::Machine* m = nullptr;
                                         if (!st) {
                                             return respond(error_response(st));
                                         }
                                         if (Status gst = machines.get(caller, machine, &m); !gst) {
                                             return respond(error_response(gst));
                                         }
                                         respond(json_response(200, machines.to_json(*m)));
                                     });
               });
}

// A clone copies disks: an operation (202) unless ?wait=true (then 201 with the machine).
void register_clone_route(Router& router, core::Clones& clones, core::Machines& machines,
                          core::Operations& operations) {
    router.add(
        "POST", "/v1/machines/{name}/clone", Access::user,
        [&clones, &machines, &operations](Request& req, Respond respond) {
            core::CloneRequest cr;
            if (Status st = core::decode_clone_request(req.body, cr); !st) {
                return respond(error_response(st));
            }
            bool wait = false;
            if (Status st = parse_wait(req.query, wait); !st) {
                return respond(error_response(st));
            }
            std::string source = req.params["name"];
            auto op = std::make_shared<std::string>();
            if (!wait) {
                cr.accepted = [&operations, op, source, respond, uid = req.caller.uid] {
                    *op = operations.new_id();
                    operations.start_step(*op, source, uid, "clone");
                    respond(accepted(*op));
                };
                cr.progress = [&operations, op](const std::string& phase, uint64_t bytes) {
                    operations.progress(*op, phase, bytes, 0);
                };
            }
            clones.clone(
                req.caller, source, std::move(cr),
                [&machines, &operations, op, respond](const Status& st, const core::Machine* m) {
                    if (!op->empty()) {
                        return operations.finish_step(*op, st);
                    }
                    if (!st) {
                        return respond(error_response(st));
                    }
                    auto res = json_response(201, machines.to_json(*m));
                    res.headers.emplace_back("Location", "/v1/machines/" + m->spec.name);
                    respond(std::move(res));
                });
        });
}

}  // namespace hangar::api
