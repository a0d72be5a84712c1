#include "api/handlers.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <fstream>
#include <set>

#include <simdjson.h>

#include "api/event_filter.hpp"
#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/x509.hpp"

namespace hangar::api {

namespace {
using simdjson::dom::element;

constexpr size_t kMaxConsoleLog = 16 * 1024 * 1024;

Status parse_object(simdjson::dom::parser& parser, const std::string& body, element& out,
                    bool allow_empty) {
    if (body.empty() && allow_empty) {
        out = element();
        return {};
    }
    if (parser.parse(body).get(out) != simdjson::SUCCESS) {
        return {Errc::invalid_json, "the request body is not valid JSON"};
    }
    if (!out.is_object()) {
        return {Errc::bad_request, "the request body must be a JSON object"};
    }
    return {};
}

Status get_string(element v, std::string_view field, std::string& out) {
    std::string_view s;
    if (v.get(s) != simdjson::SUCCESS) {
        return {Errc::bad_request, "field '" + std::string(field) + "' must be a string"};
    }
    if (s.find('\0') != std::string_view::npos) {
        return {Errc::bad_request, "field '" + std::string(field) + "' contains a NUL byte"};
    }
    out = s;
    return {};
}

Status get_u32(element v, std::string_view field, uint32_t& out) {
    uint64_t u = 0;
    if (v.get(u) != simdjson::SUCCESS || u > UINT32_MAX) {
        return {Errc::bad_request,
                "field '" + std::string(field) + "' must be a non-negative integer"};
    }
    out = static_cast<uint32_t>(u);
    return {};
}

Status get_strings(element v, std::string_view field, std::vector<std::string>& out) {
    simdjson::dom::array arr;
    if (v.get(arr) != simdjson::SUCCESS) {
        return {Errc::bad_request,
                "field '" + std::string(field) + "' must be an array of strings"};
    }
    out.clear();
    for (element e : arr) {
        if (Status st = get_string(e, field, out.emplace_back()); !st) {
            return {Errc::bad_request, "field '" + std::string(field) +
                                           "' must be an array of strings without NUL bytes"};
        }
    }
    return {};
}

Status unknown_field(std::string_view where, std::string_view key) {
    return {Errc::bad_request, "unknown field '" + std::string(where) + std::string(key) + "'"};
}

// ?wait=true|false (1|0); `wait` keeps its default when absent.
Status parse_wait(const std::map<std::string, std::string>& query, bool& wait) {
    if (auto it = query.find("wait"); it != query.end()) {
        if (it->second == "false" || it->second == "0") {
            wait = false;
        } else if (it->second == "true" || it->second == "1") {
            wait = true;
        } else {
            return {Errc::bad_request, "wait must be true or false"};
        }
    }
    return {};
}

Response accepted(const std::string& op_id) {
    json::Writer w;
    w.begin_object().field("operation", op_id).end_object();
    auto res = json_response(202, w.take());
    res.headers.emplace_back("Location", "/v1/operations/" + op_id);
    return res;
}

// {"name": ..., "source": {"type": ..., "server"/"alias" | "path"}}
Status parse_pull(const std::string& body, core::PullRequest& pr) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool has_source = false;
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        if (key == "name") {
            if (Status st = get_string(v, key, pr.name); !st) {
                return st;
            }
        } else if (key == "source") {
            simdjson::dom::object src;
            if (v.get(src) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field 'source' must be an object"};
            }
            has_source = true;
            for (auto [sk, sv] : src) {
                std::string* to = sk == "type"     ? &pr.type
                                  : sk == "server" ? &pr.server
                                  : sk == "alias"  ? &pr.alias
                                  : sk == "path"   ? &pr.path
                                                   : nullptr;
                if (!to) {
                    return unknown_field("source.", sk);
                }
                if (Status st = get_string(sv, "source." + std::string(sk), *to); !st) {
                    return st;
                }
            }
        } else {
            return unknown_field("", key);
        }
    }
    if (pr.name.empty() || !has_source) {
        return {Errc::bad_request, "'name' and 'source' are required"};
    }
    if (pr.name == "remote") {
        return {Errc::invalid_name, "image name 'remote' is reserved (GET /v1/images/remote)"};
    }
    if (pr.type == "file" ? !pr.server.empty() || !pr.alias.empty() : !pr.path.empty()) {
        return {Errc::bad_request,
                "a file source takes only 'path'; a server source 'server' "
                "and 'alias'"};
    }
    return {};
}

std::string machines_json(const core::Machines& machines,
                          const std::vector<const core::Machine*>& list) {
    std::string out;
    out.reserve(64 + list.size() * 512);
    out += "{\"revision\":" + std::to_string(machines.revision()) + ",\"machines\":[";
    bool first = true;
    for (const auto* m : list) {
        if (!first) {
            out += ',';
        }
        first = false;
        out += machines.to_json(*m);
    }
    out += "]}";
    return out;
}

}  // namespace

Status parse_spec_fields(const std::string& body, MachineSpec& spec, std::set<std::string>& seen) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = parse_object(parser, body, doc, false); !st) {
        return st;
    }
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        Status st;
        seen.insert(std::string(key));
        if (key == "name") {
            st = get_string(v, key, spec.name);
        } else if (key == "type") {
            st = get_string(v, key, spec.type);
        } else if (key == "cpus") {
            st = get_u32(v, key, spec.cpus);
        } else if (key == "memory_mib") {
            st = get_u32(v, key, spec.memory_mib);
        } else if (key == "description") {
            st = get_string(v, key, spec.description);
        } else if (key == "image") {
            st = get_string(v, key, spec.image);
        } else if (key == "autostart") {
            if (v.get(spec.autostart) != simdjson::SUCCESS) {
                st = {Errc::bad_request, "field 'autostart' must be a boolean"};
            }
        } else if (key == "boot") {
            simdjson::dom::object boot;
            if (v.get(boot) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field 'boot' must be an object"};
            }
            for (auto [bk, bv] : boot) {
                if (bk == "kernel") {
                    st = get_string(bv, "boot.kernel", spec.boot.kernel);
                } else if (bk == "initrd") {
                    st = get_string(bv, "boot.initrd", spec.boot.initrd);
                } else if (bk == "cmdline") {
                    st = get_string(bv, "boot.cmdline", spec.boot.cmdline);
                } else if (bk == "disk") {
                    st = get_string(bv, "boot.disk", spec.boot.disk);
                } else if (bk == "command") {
                    st = get_strings(bv, "boot.command", spec.boot.command);
                } else {
                    st = unknown_field("boot.", bk);
                }
                if (!st) {
                    return st;
                }
            }
        } else {
            st = unknown_field("", key);
        }
        if (!st) {
            return st;
        }
    }
    return {};
}

Status parse_machine_spec(const std::string& body, MachineSpec& spec) {
    std::set<std::string> seen;
    if (Status st = parse_spec_fields(body, spec, seen); !st) {
        return st;
    }
    if (!seen.count("name")) {
        return {Errc::bad_request, "field 'name' is required"};
    }
    return check_name("machine", spec.name);
}

namespace {
Status parse_exec(const std::string& body, core::ExecRequest& req) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool has_command = false;
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        Status st;
        if (key == "command") {
            has_command = true;
            st = get_strings(v, key, req.command);
        } else if (key == "cwd") {
            st = get_string(v, key, req.cwd);
        } else if (key == "timeout_s") {
            uint32_t t = 0;
            st = get_u32(v, key, t);
            req.timeout = std::chrono::seconds(t);
        } else if (key == "env") {
            simdjson::dom::object env;
            if (v.get(env) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field 'env' must be an object of strings"};
            }
            for (auto [ek, ev] : env) {
                if (Status est = get_string(ev, "env." + std::string(ek), req.env[std::string(ek)]);
                    !est) {
                    return est;
                }
            }
        } else {
            st = unknown_field("", key);
        }
        if (!st) {
            return st;
        }
    }
    if (!has_command) {
        return {Errc::bad_request, "field 'command' is required"};
    }
    return {};
}

Status parse_action_args(core::Action action, const std::string& body, core::ActionArgs& args) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = parse_object(parser, body, doc, true); !st) {
        return st;
    }
    if (body.empty()) {
        return {};
    }
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        bool stops = action == core::Action::stop || action == core::Action::restart;
        if (key == "timeout_s" && stops) {
            uint32_t t = 0;
            if (Status st = get_u32(v, key, t); !st) {
                return st;
            }
            if (t > 3600) {
                return {Errc::bad_request, "timeout_s must be at most 3600"};
            }
            args.stop_timeout = std::chrono::seconds(t);
        } else if (key == "reset" && action == core::Action::restart) {
            if (v.get(args.reset) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field 'reset' must be a boolean"};
            }
        } else {
            return unknown_field("", key);
        }
    }
    return {};
}
}  // namespace

void register_image_routes(Router& router, core::Images& images) {
    router.add("GET", "/v1/images", [&images](Request&, Respond respond) {
        std::string out = "{\"images\":[";
        bool first = true;
        for (const auto* img : images.list()) {
            out += first ? "" : ",";
            first = false;
            out += images.to_json(*img);
        }
        respond(json_response(200, out + "]}"));
    });
    router.add("POST", "/v1/images", [&images](Request& req, Respond respond) {
        bool wait = false;
        core::PullRequest pr;
        if (Status st = parse_wait(req.query, wait); !st) {
            return respond(error_response(st));
        }
        if (Status st = parse_pull(req.body, pr); !st) {
            return respond(error_response(st));
        }
        std::string op;
        std::function<void(const Status&, const core::Image*)> done;
        if (wait) {
            done = [&images, respond](const Status& st, const core::Image* img) {
                respond(st ? json_response(201, images.to_json(*img)) : error_response(st));
            };
        }
        if (Status st = images.pull(req.caller, pr, op, std::move(done)); !st) {
            return respond(error_response(st));
        }
        if (!wait) {
            respond(accepted(op));
        }
    });
    // Before /v1/images/{name}: the name "remote" is reserved for it.
    router.add("GET", "/v1/images/remote", [&images](Request& req, Respond respond) {
        std::string server = req.query.count("server") ? req.query["server"] : "";
        std::string type = req.query.count("type") ? req.query["type"] : "simplestreams";
        if (server.empty()) {
            return respond(error_response({Errc::bad_request, "?server=URL is required"}));
        }
        images.remote(
            server, type,
            [server, type, respond](const Status& st,
                                    std::vector<hangar::images::RemoteImage> list) {
                respond(st ? json_response(200, core::Images::remote_json(server, type, list))
                           : error_response(st));
            });
    });
    router.add("GET", "/v1/images/{name}", [&images](Request& req, Respond respond) {
        const core::Image* img = nullptr;
        if (Status st = images.get(req.params["name"], &img); !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, images.to_json(*img)));
    });
    router.add("DELETE", "/v1/images/{name}", [&images](Request& req, Respond respond) {
        Status st = images.remove(req.caller, req.params["name"]);
        respond(st ? json_response(200, "{}") : error_response(st));
    });
}

void register_routes(Router& router, core::Machines& machines, core::Credentials& credentials,
                     core::Operations& operations, core::Images& images, const ServerInfo& info,
                     const Probes& probes) {
    register_meta_routes(router, machines, credentials, probes);
    router.add("GET", "/v1", [&machines, info](Request& req, Respond respond) {
        struct utsname u {};
        uname(&u);
        json::Writer w;
        w.begin_object()
            .field("api_version", "1.0")
            .field("version", HANGAR_VERSION)
            .key("api_extensions")
            .begin_array()
            .end_array()
            .field("host_arch", u.machine)
            .field("accelerator", info.accelerator)
            .field("revision", machines.revision())
            .key("auth")
            .begin_object()
            .field("method", req.caller.method)
            .field("uid", req.caller.uid)
            .field("admin", req.caller.admin)
            .end_object()
            .end_object();
        respond(json_response(200, w.take()));
    });

    router.add("GET", "/v1/health", [&machines, info, &probes](Request&, Respond respond) {
        std::string qemu = find_program(machines.config().qemu.binary);
        std::string dbus_detail = "not served";
        bool dbus_ok = probes.dbus && probes.dbus(dbus_detail);
        bool store_ok = access(info.state_dir.c_str(), W_OK) == 0;
        bool guest_ok = !machines.config().default_boot.kernel.empty();
        json::Writer w;
        w.begin_object()
            .field("status", qemu.empty() || !store_ok ? "degraded" : "ok")
            .key("checks")
            .begin_object()
            .key("qemu")
            .begin_object()
            .field("ok", !qemu.empty())
            .field("detail", qemu.empty() ? machines.config().qemu.binary + " not found" : qemu)
            .end_object()
            .key("store")
            .begin_object()
            .field("ok", store_ok)
            .field("detail", info.state_dir.string())
            .end_object()
            .key("guest")
            .begin_object()
            .field("ok", guest_ok)
            .field("detail", guest_ok ? machines.config().default_boot.kernel
                                      : std::string("built-in guest not found"))
            .end_object()
            .key("dbus")
            .begin_object()
            .field("ok", dbus_ok)
            .field("detail", dbus_detail)
            .end_object()
            .end_object()
            .end_object();
        respond(json_response(qemu.empty() || !store_ok ? 503 : 200, w.take()));
    });

    router.add("GET", "/v1/machines", [&machines](Request& req, Respond respond) {
        std::optional<MachineState> state;
        if (auto it = req.query.find("state"); it != req.query.end()) {
            state = parse_machine_state(it->second);
            if (!state) {
                return respond(error_response(
                    {Errc::bad_request, "unknown state " + json::quote(it->second)}));
            }
        }
        std::string type;
        if (auto it = req.query.find("type"); it != req.query.end()) {
            type = it->second;
            if (type != "vm" && type != "container") {
                return respond(
                    error_response({Errc::bad_request, "unknown type " + json::quote(type)}));
            }
        }
        respond(
            json_response(200, machines_json(machines, machines.list(req.caller, state, type))));
    });

    router.add("POST", "/v1/machines", [&machines](Request& req, Respond respond) {
        MachineSpec spec;
        if (Status st = parse_machine_spec(req.body, spec); !st) {
            return respond(error_response(st));
        }
        const core::Machine* m = nullptr;
        if (Status st = machines.create(req.caller, std::move(spec), &m); !st) {
            return respond(error_response(st));
        }
        auto res = json_response(201, machines.to_json(*m));
        res.headers.emplace_back("Location", "/v1/machines/" + m->spec.name);
        respond(std::move(res));
    });

    router.add("GET", "/v1/machines/{name}", [&machines](Request& req, Respond respond) {
        const core::Machine* m = nullptr;
        if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, machines.to_json(*m)));
    });

    router.add("PATCH", "/v1/machines/{name}", [&machines](Request& req, Respond respond) {
        const core::Machine* m = nullptr;
        if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
            return respond(error_response(st));
        }
        MachineSpec spec = m->spec;
        std::set<std::string> changed;
        if (Status st = parse_spec_fields(req.body, spec, changed); !st) {
            return respond(error_response(st));
        }
        if (Status st =
                machines.update(req.caller, req.params["name"], std::move(spec), changed, &m);
            !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, machines.to_json(*m)));
    });

    router.add("DELETE", "/v1/machines/{name}", [&machines](Request& req, Respond respond) {
        bool force =
            req.query.count("force") && req.query["force"] != "false" && req.query["force"] != "0";
        machines.remove(req.caller, req.params["name"], force,
                        [respond = std::move(respond)](const Status& st) {
                            respond(st ? json_response(200, "{}") : error_response(st));
                        });
    });

    router.add("POST", "/v1/machines/{name}/actions/{action}",
               [&machines, &operations](Request& req, Respond respond) {
                   const std::string& name = req.params["name"];
                   if (Status st = check_name("machine", name); !st) {
                       return respond(error_response(st));
                   }
                   auto action = core::parse_action(req.params["action"]);
                   if (!action) {
                       return respond(error_response(
                           {Errc::not_found, "unknown action " + json::quote(req.params["action"]) +
                                                 " (start, stop, kill, restart, pause, resume)"}));
                   }
                   bool wait = true;
                   if (Status st = parse_wait(req.query, wait); !st) {
                       return respond(error_response(st));
                   }
                   core::ActionArgs args;
                   if (Status st = parse_action_args(*action, req.body, args); !st) {
                       return respond(error_response(st));
                   }
                   if (!wait) {
                       // 202 at once; the result arrives as operation.done and at
                       // /v1/operations/ID.
                       std::string id = operations.new_id();
                       Status st = machines.act(
                           req.caller, name, *action, args,
                           [&operations, id](const Status& st, const core::Machine* m) {
                               operations.finish(id, st, m);
                           });
                       if (!st) {
                           return respond(error_response(st));
                       }
                       const core::Machine* m = nullptr;
                       machines.get(req.caller, name, &m);
                       operations.start(id, name, m ? m->spec.owner : req.caller.uid,
                                        req.params["action"]);
                       return respond(accepted(id));
                   }
                   Status st =
                       machines.act(req.caller, name, *action, args,
                                    [&machines, respond](const Status& st, const core::Machine* m) {
                                        if (!st) {
                                            return respond(error_response(st));
                                        }
                                        respond(m ? json_response(200, machines.to_json(*m))
                                                  : json_response(200, "{}"));
                                    });
                   if (!st) {
                       respond(error_response(st));
                   }
               });

    router.add("POST", "/v1/machines/{name}/exec", [&machines](Request& req, Respond respond) {
        core::ExecRequest er;
        if (Status st = parse_exec(req.body, er); !st) {
            return respond(error_response(st));
        }
        Status st = machines.exec(req.caller, req.params["name"], std::move(er),
                                  [respond](const Status& st, const core::ExecResult& r) {
                                      if (!st) {
                                          return respond(error_response(st));
                                      }
                                      json::Writer w;
                                      w.begin_object()
                                          .field("exit_code", r.exit_code)
                                          .field("stdout", r.out)
                                          .field("stderr", r.err)
                                          .field("stdout_truncated", r.out_truncated)
                                          .field("stderr_truncated", r.err_truncated)
                                          .field("in", r.running ? "running" : "rootfs")
                                          .end_object();
                                      respond(json_response(200, w.take()));
                                  });
        if (!st) {
            respond(error_response(st));
        }
    });

    router.add("GET", "/v1/operations/{id}", [&operations](Request& req, Respond respond) {
        const core::Operation* op = nullptr;
        if (Status st = operations.get(req.caller, req.params["id"], &op); !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, operations.to_json(*op)));
    });

    auto credential_json = [](json::Writer& w, const store::CredentialRow& c) {
        w.field("name", c.name).field("uid", c.uid).field("admin", c.admin);
        w.field("created_at", c.created_at);
        if (c.kind == core::kCertificate) {
            w.field("fingerprint", c.hash);
        }
    };
    // Reads the string fields of a small JSON object; anything else is an error.
    auto string_fields = [](const std::string& body, std::map<std::string, std::string>& fields) {
        simdjson::dom::parser parser;
        element doc;
        if (Status st = parse_object(parser, body, doc, false); !st) {
            return st;
        }
        simdjson::dom::object object = doc.get_object().value_unsafe();
        for (auto [key, v] : object) {
            auto it = fields.find(std::string(key));
            if (it == fields.end()) {
                return unknown_field("", key);
            }
            if (Status st = get_string(v, key, it->second); !st) {
                return st;
            }
        }
        return Status{};
    };
    router.add("POST", "/v1/tokens",
               [&credentials, credential_json, string_fields](Request& req, Respond respond) {
                   std::map<std::string, std::string> fields{{"name", ""}};
                   if (Status st = string_fields(req.body, fields); !st) {
                       return respond(error_response(st));
                   }
                   std::string token;
                   store::CredentialRow row;
                   if (Status st = credentials.create_token(req.caller, fields["name"], token, row);
                       !st) {
                       return respond(error_response(st));
                   }
                   json::Writer w;
                   w.begin_object();
                   credential_json(w, row);
                   w.field("token", token).end_object();
                   respond(json_response(201, w.take()));
               });
    router.add(
        "POST", "/v1/certificates",
        [&credentials, credential_json, string_fields](Request& req, Respond respond) {
            std::map<std::string, std::string> fields{
                {"name", ""}, {"fingerprint", ""}, {"certificate", ""}};
            if (Status st = string_fields(req.body, fields); !st) {
                return respond(error_response(st));
            }
            std::string fp = fields["fingerprint"];
            if (fp.empty() == fields["certificate"].empty()) {
                return respond(
                    error_response({Errc::bad_request,
                                    "give either 'certificate' (PEM) or 'fingerprint' (SHA-256)"}));
            }
            if (fp.empty()) {
                auto parsed = pem_certificate_fingerprint(fields["certificate"]);
                if (!parsed) {
                    return respond(error_response(
                        {Errc::bad_request, "'certificate' is not a PEM certificate"}));
                }
                fp = *parsed;
            }
            store::CredentialRow row;
            if (Status st = credentials.add_certificate(req.caller, fields["name"], fp, row); !st) {
                return respond(error_response(st));
            }
            json::Writer w;
            w.begin_object();
            credential_json(w, row);
            w.end_object();
            respond(json_response(201, w.take()));
        });
    for (std::string_view kind : {core::kToken, core::kCertificate}) {
        std::string plural = std::string(kind) + "s";
        std::string path = "/v1/" + plural;
        router.add("GET", path,
                   [&credentials, credential_json, kind, plural](Request& req, Respond respond) {
                       json::Writer w;
                       w.begin_object().key(plural).begin_array();
                       for (const auto& c : credentials.list(req.caller, kind)) {
                           w.begin_object();
                           credential_json(w, c);
                           w.end_object();
                       }
                       w.end_array().end_object();
                       respond(json_response(200, w.take()));
                   });
        router.add("DELETE", path + "/{name}", [&credentials, kind](Request& req, Respond respond) {
            Status st = credentials.remove(req.caller, kind, req.params["name"]);
            respond(st ? json_response(200, "{}") : error_response(st));
        });
    }

    register_image_routes(router, images);

    router.add("GET", "/v1/events", [](Request& req, Respond respond) {
        EventFilter filter;
        std::optional<uint64_t> since;
        if (Status st = parse_event_query(req.query, req.caller, filter, since); !st) {
            return respond(error_response(st));
        }
        respond(error_response(
            {Errc::bad_request, "GET /v1/events is a WebSocket: send an Upgrade request"}));
    });

    router.add(
        "GET", "/v1/machines/{name}/console/log", [&machines](Request& req, Respond respond) {
            const core::Machine* m = nullptr;
            if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
                return respond(error_response(st));
            }
            uint64_t tail = kMaxConsoleLog;
            if (auto it = req.query.find("tail"); it != req.query.end()) {
                char* end = nullptr;
                tail = std::strtoull(it->second.c_str(), &end, 10);
                if (it->second.empty() || *end != '\0') {
                    return respond(
                        error_response({Errc::bad_request, "tail must be a number of bytes"}));
                }
                tail = std::min<uint64_t>(tail, kMaxConsoleLog);
            }
            Response res;
            res.content_type = "text/plain; charset=utf-8";
            std::ifstream in(machines.machine_dir(m->spec.name) / "console.log", std::ios::binary);
            if (in) {
                in.seekg(0, std::ios::end);
                auto size = static_cast<uint64_t>(in.tellg());
                uint64_t start = size > tail ? size - tail : 0;
                in.seekg(static_cast<std::streamoff>(start));
                res.body.resize(size - start);
                in.read(res.body.data(), static_cast<std::streamsize>(res.body.size()));
            }
            respond(std::move(res));
        });
}

}  // namespace hangar::api
