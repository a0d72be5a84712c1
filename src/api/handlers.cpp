#include "api/handlers.hpp"

#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <memory>
#include <set>
#include <tuple>

#include <simdjson.h>

#include "api/event_filter.hpp"
#include "api/exec_channel.hpp"
#include "core/spec_codec.hpp"
#include "hangar/machine_files.hpp"
#include "hangar/names.hpp"
#include "util/file_tail.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"
#include "util/process.hpp"
#include "util/x509.hpp"

namespace hangar::api {

namespace {
using simdjson::dom::element;

constexpr size_t kMaxConsoleLog = 16 * 1024 * 1024;
constexpr size_t kMaxListPage = 1000;  // GET /v1/machines?limit=

using json::get_bool;
using json::get_string;
using json::get_strings;
using json::get_u32;
using json::parse_object;
using json::unknown_field;

// {"name": ..., "kind": ..., "source": {"type": ..., "server"/"alias" | "path" | "url"/"sha256"}}
Status parse_pull(const std::string& body, core::PullRequest& pr) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool has_source = false;
    simdjson::dom::object fields = doc.get_object().value_unsafe();
    for (auto [key, v] : fields) {
        if (key == "name" || key == "kind") {
            if (Status st = get_string(v, key, key == "name" ? pr.name : pr.kind); !st) {
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
                                  : sk == "url"    ? &pr.url
                                  : sk == "sha256" ? &pr.sha256
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
    bool server = !pr.server.empty() || !pr.alias.empty(),
         url = !pr.url.empty() || !pr.sha256.empty();
    if (pr.type == "file"  ? server || url
        : pr.type == "url" ? server || !pr.path.empty()
                           : url || !pr.path.empty()) {
        return {Errc::bad_request,
                "a file source takes only 'path'; a URL source 'url' and 'sha256'; a server "
                "source 'server' and 'alias'"};
    }
    return {};
}

// GET /v1/machines: filters, a page (names in order, after `after`, at most `limit`), a form.
struct ListQuery {
    std::optional<MachineState> state;
    std::string type;
    size_t limit = SIZE_MAX;  // the whole list unless ?limit=
    std::string after;
    bool compact = false;
};

Status parse_list_query(const std::map<std::string, std::string>& query, ListQuery& q) {
    if (auto it = query.find("state"); it != query.end()) {
        q.state = parse_machine_state(it->second);
        if (!q.state) {
            return {Errc::bad_request, "unknown state " + json::quote(it->second)};
        }
    }
    if (auto it = query.find("type"); it != query.end()) {
        q.type = it->second;
        if (q.type != "vm" && q.type != "container") {
            return {Errc::bad_request, "unknown type " + json::quote(q.type)};
        }
    }
    if (auto it = query.find("limit"); it != query.end()) {
        const std::string& v = it->second;
        bool digits = !v.empty() && v.size() <= 4 &&
                      std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; });
        q.limit = digits ? std::stoul(v) : 0;
        if (q.limit < 1 || q.limit > kMaxListPage) {
            return {Errc::bad_request, "limit must be a number from 1 to " +
                                           std::to_string(kMaxListPage) + ", not " +
                                           json::quote(v.substr(0, 32))};
        }
    }
    if (auto it = query.find("after"); it != query.end()) {
        if (Status st = check_name("machine", it->second); !st) {
            return {st.code(), "after: " + st.message()};
        }
        q.after = it->second;
    }
    if (auto it = query.find("fields"); it != query.end()) {
        if (it->second != "full" && it->second != "compact") {
            return {Errc::bad_request,
                    "fields must be full or compact, not " + json::quote(it->second.substr(0, 32))};
        }
        q.compact = it->second == "compact";
    }
    return {};
}

// The compact form of a machine, for dashboards: what its state is, written straight from
// the registry (no full serialization).
void append_compact(std::string& out, const core::Machine& m) {
    out += "{\"name\":";
    json::append_string(out, m.spec.name);
    out += ",\"type\":";
    json::append_string(out, m.spec.type);
    out += ",\"state\":";
    json::append_string(out, to_string(m.state));
    out += ",\"state_reason\":";
    json::append_string(out, m.state_reason);
    out += m.unresponsive ? ",\"unresponsive\":true" : ",\"unresponsive\":false";
    out += ",\"owner\":" + std::to_string(m.spec.owner);
    out += ",\"pid\":" + std::to_string(static_cast<int64_t>(m.pid));
    if (m.op != core::Op::none) {
        out += ",\"operation\":";
        json::append_string(out, core::to_string(m.op));
    }
    out += '}';
}

// What Machines::list answered for one caller and filter, by name, kept while the event
// revision stays the same (every create, delete and state change moves it): a page is then a
// binary search and `limit` lookups, not a walk over every machine.
class ListCache {
  public:
    const std::vector<std::string>& names(const core::Machines& machines,
                                          const core::Caller& caller, const ListQuery& q) {
        Key key{caller.uid, caller.admin, q.state ? static_cast<int>(*q.state) : -1, q.type};
        auto it = entries_.find(key);
        if (it == entries_.end() || it->second.revision != machines.revision()) {
            if (it == entries_.end() && entries_.size() >= kEntries) {
                entries_.clear();
            }
            Entry& e = entries_[key];
            e.revision = machines.revision();
            e.names.clear();
            for (const auto* m : machines.list(caller, q.state, q.type)) {
                e.names.push_back(m->spec.name);
            }
            return e.names;
        }
        return it->second.names;
    }

  private:
    static constexpr size_t kEntries = 64;
    using Key = std::tuple<uint32_t, bool, int, std::string>;
    struct Entry {
        uint64_t revision = 0;
        std::vector<std::string> names;  // in name order, as list() gives them
    };
    std::map<Key, Entry> entries_;
};

// {"revision", "machines": [...], "next": the `after` of the next page, or null}. `names` is
// in name order; `machine(i)` is the i-th one (nullptr: gone).
template <typename Name, typename Lookup>
std::string machines_json(const core::Machines& machines, const ListQuery& q, size_t count,
                          Name name, Lookup machine) {
    size_t first = 0;
    if (!q.after.empty()) {
        // The first name after `after`.
        size_t lo = 0, hi = count;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            if (name(mid) <= q.after) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        first = lo;
    }
    size_t last = first + std::min(q.limit, count - first);
    std::string out;
    out.reserve(64 + (last - first) * (q.compact ? 160 : 512));
    out += "{\"revision\":" + std::to_string(machines.revision()) + ",\"machines\":[";
    bool empty = true;
    for (size_t i = first; i < last; ++i) {
        const core::Machine* m = machine(i);
        if (!m) {
            continue;
        }
        if (!empty) {
            out += ',';
        }
        empty = false;
        if (q.compact) {
            append_compact(out, *m);
        } else {
            out += machines.to_json(*m);
        }
    }
    out += "],\"next\":";
    if (last < count) {
        json::append_string(out, name(last - 1));
    } else {
        out += "null";
    }
    out += '}';
    return out;
}

std::string list_machines(const core::Machines& machines, ListCache& cache,
                          const core::Caller& caller, const ListQuery& q) {
    if (q.limit == SIZE_MAX) {
        auto list = machines.list(caller, q.state, q.type);
        return machines_json(
            machines, q, list.size(),
            [&](size_t i) -> const std::string& { return list[i]->spec.name; },
            [&](size_t i) { return list[i]; });
    }
    const auto& names = cache.names(machines, caller, q);
    const auto& all = machines.all();
    return machines_json(
        machines, q, names.size(), [&](size_t i) -> const std::string& { return names[i]; },
        [&](size_t i) -> const core::Machine* {
            auto it = all.find(names[i]);
            return it == all.end() ? nullptr : it->second.get();
        });
}

Status parse_exec(const std::string& body, core::ExecRequest& req) {
    simdjson::dom::parser parser;
    element doc;
    if (Status st = parse_object(parser, body, doc, false); !st) {
        return st;
    }
    bool has_command = false, has_timeout = false, has_tty = false;
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
            has_timeout = true;
        } else if (key == "interactive") {
            st = get_bool(v, key, req.interactive);
        } else if (key == "tty") {
            simdjson::dom::object tty;
            if (v.get(tty) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field 'tty' must be an object {\"cols\", \"rows\"}"};
            }
            has_tty = true;
            for (auto [tk, tv] : tty) {
                Status tst = tk == "cols"   ? get_u32(tv, "tty.cols", req.cols)
                             : tk == "rows" ? get_u32(tv, "tty.rows", req.rows)
                                            : unknown_field("tty.", tk);
                if (!tst) {
                    return tst;
                }
            }
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
    if (has_tty && !req.interactive) {
        return {Errc::bad_request, "field 'tty' is for \"interactive\": true"};
    }
    if (req.interactive && !has_timeout) {
        req.timeout = std::chrono::seconds(0);  // none: it ends with its WebSocket
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

void register_image_routes(Router& router, core::Images& images) {
    router.add("GET", "/v1/images", Access::user, [&images](Request&, Respond respond) {
        std::string out = "{\"images\":[";
        bool first = true;
        for (const auto* img : images.list()) {
            out += first ? "" : ",";
            first = false;
            out += images.to_json(*img);
        }
        respond(json_response(200, out + "]}"));
    });
    router.add("POST", "/v1/images", Access::user, [&images](Request& req, Respond respond) {
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
    router.add("GET", "/v1/images/remote", Access::user, [&images](Request& req, Respond respond) {
        std::string server = req.query.count("server") ? req.query["server"] : "";
        std::string type = req.query.count("type") ? req.query["type"] : "simplestreams";
        if (server.empty()) {
            return respond(error_response({Errc::bad_request, "?server=URL is required"}));
        }
        images.remote(
            req.caller, server, type,
            [server, type, respond](const Status& st,
                                    std::vector<hangar::images::RemoteImage> list) {
                respond(st ? json_response(200, core::Images::remote_json(server, type, list))
                           : error_response(st));
            });
    });
    router.add("GET", "/v1/images/{name}", Access::user, [&images](Request& req, Respond respond) {
        const core::Image* img = nullptr;
        if (Status st = images.get(req.params["name"], &img); !st) {
            return respond(error_response(st));
        }
        respond(json_response(200, images.to_json(*img)));
    });
    router.add("DELETE", "/v1/images/{name}", Access::user,
               [&images](Request& req, Respond respond) {
                   Status st = images.remove(req.caller, req.params["name"]);
                   respond(st ? json_response(200, "{}") : error_response(st));
               });
}

void register_routes(Router& router, core::Machines& machines, core::Credentials& credentials,
                     core::Operations& operations, core::Images& images, const ServerInfo& info,
                     const Probes& probes) {
    register_meta_routes(router, machines, credentials, probes);
    router.add("GET", "/v1", Access::user, [&machines, info](Request& req, Respond respond) {
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
            .end_object();
        if (const core::Quotas* q = info.quotas) {
            const core::QuotaLimits& l = q->limits();
            core::QuotaUsage u = q->usage(req.caller.uid);
            w.key("quota").begin_object().field("exempt",
                                                req.caller.admin || q->exempt(req.caller.uid));
            for (auto [name, limit, used] :
                 {std::tuple{"machines", l.machines, u.machines},
                  std::tuple{"vcpus", l.vcpus, u.vcpus},
                  std::tuple{"memory_mib", l.memory_mib, u.memory_mib},
                  std::tuple{"images", l.images, u.images},
                  std::tuple{"disk_bytes", l.disk_bytes, u.disk_bytes}}) {
                w.key(name).begin_object().field("limit", limit).field("used", used).end_object();
            }
            w.end_object()
                .key("host")
                .begin_object()
                .field("cpus", q->host().cpus)
                .field("memory_mib", q->host().memory_mib)
                .end_object();
        }
        w.end_object();
        respond(json_response(200, w.take()));
    });

    // The verdict and what each caller may see are core::Health's; this renders them.
    router.add("GET", "/v1/health", Access::anonymous,
               [health = info.health](Request& req, Respond respond) {
                   core::HealthReport r = health->report(req.caller);
                   json::Writer w;
                   w.begin_object().field("status", r.status()).key("checks").begin_object();
                   for (const auto& c : r.checks) {
                       w.key(c.name)
                           .begin_object()
                           .field("ok", c.ok)
                           .field("detail", c.detail)
                           .end_object();
                   }
                   w.end_object().end_object();
                   respond(json_response(r.ok ? 200 : 503, w.take()));
               });

    auto list_cache = std::make_shared<ListCache>();
    router.add("GET", "/v1/machines", Access::user,
               [&machines, list_cache](Request& req, Respond respond) {
                   ListQuery q;
                   if (Status st = parse_list_query(req.query, q); !st) {
                       return respond(error_response(st));
                   }
                   respond(json_response(200, list_machines(machines, *list_cache, req.caller, q)));
               });

    router.add("POST", "/v1/machines", Access::user, [&machines](Request& req, Respond respond) {
        MachineSpec spec;
        if (Status st = core::decode_machine_spec(req.body, spec); !st) {
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

    router.add("GET", "/v1/machines/{name}", Access::user,
               [&machines](Request& req, Respond respond) {
                   const core::Machine* m = nullptr;
                   if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
                       return respond(error_response(st));
                   }
                   respond(json_response(200, machines.to_json(*m)));
               });

    router.add(
        "PATCH", "/v1/machines/{name}", Access::user, [&machines](Request& req, Respond respond) {
            const core::Machine* m = nullptr;
            if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
                return respond(error_response(st));
            }
            MachineSpec spec = m->spec;
            std::set<std::string> changed;
            if (Status st = core::decode_spec_fields(req.body, spec, changed); !st) {
                return respond(error_response(st));
            }
            machines.update_live(
                req.caller, req.params["name"], std::move(spec), std::move(changed),
                [&machines, respond](const Status& st, const core::Machine* m) {
                    respond(st ? json_response(200, machines.to_json(*m)) : error_response(st));
                });
        });

    router.add("DELETE", "/v1/machines/{name}", Access::user,
               [&machines](Request& req, Respond respond) {
                   bool force = req.query.count("force") && req.query["force"] != "false" &&
                                req.query["force"] != "0";
                   machines.remove(req.caller, req.params["name"], force,
                                   [respond = std::move(respond)](const Status& st) {
                                       respond(st ? json_response(200, "{}") : error_response(st));
                                   });
               });

    router.add("POST", "/v1/machines/{name}/actions/{action}", Access::user,
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
                       std::string id;
                       Status st = operations.run_action(req.caller, name, *action, args, id);
                       return respond(st ? accepted(id) : error_response(st));
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

    auto exec_sessions = std::make_shared<core::ExecSessions>(machines.io());
    router.add("POST", "/v1/machines/{name}/exec", Access::user,
               [&machines, exec_sessions](Request& req, Respond respond) {
                   core::ExecRequest er;
                   if (Status st = parse_exec(req.body, er); !st) {
                       return respond(error_response(st));
                   }
                   if (er.interactive) {
                       if (Status st = exec_sessions->can_add(req.caller.uid); !st) {
                           return respond(error_response(st));
                       }
                   }
                   std::string name = req.params["name"];
                   Status st = machines.exec(
                       req.caller, name, std::move(er),
                       [respond, exec_sessions, name, uid = req.caller.uid](
                           const Status& st, const core::ExecResult& r) {
                           if (!st) {
                               return respond(error_response(st));
                           }
                           if (r.pty) {
                               // Interactive: its WebSocket is the session's.
                               std::string id = exec_sessions->add(uid, name, r.pty);
                               json::Writer w;
                               w.begin_object()
                                   .field("session", id)
                                   .field("url", "/v1/machines/" + name + "/exec/" + id)
                                   .end_object();
                               return respond(json_response(201, w.take()));
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

    // The interactive exec's terminal: the session's command, once, for its user.
    router.add_channel(
        "GET", "/v1/machines/{name}/exec/{id}", Access::user,
        [exec_sessions](Request& req, Respond refuse, Accept accept) {
            std::string name = req.params["name"];
            std::shared_ptr<PtyCommand> pty;
            if (Status st = exec_sessions->take(req.caller.uid, name, req.params["id"], pty); !st) {
                return refuse(error_response(st));
            }
            accept(make_exec_channel(name, std::move(pty)), WsOptions{});
        },
        [](Request&, Respond respond) {
            respond(error_response({Errc::bad_request,
                                    "an interactive exec's terminal is a WebSocket: send an "
                                    "upgrade (Connection: Upgrade, Upgrade: websocket)"}));
        });

    router.add("GET", "/v1/operations/{id}", Access::user,
               [&operations](Request& req, Respond respond) {
                   const core::Operation* op = nullptr;
                   if (Status st = operations.get(req.caller, req.params["id"], &op); !st) {
                       return respond(error_response(st));
                   }
                   respond(json_response(200, operations.to_json(*op)));
               });
    router.add("DELETE", "/v1/operations/{id}", Access::user,
               [&operations](Request& req, Respond respond) {
                   const core::Operation* op = nullptr;
                   if (Status st = operations.cancel(req.caller, req.params["id"], &op); !st) {
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
    router.add("POST", "/v1/tokens", Access::local,
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
        "POST", "/v1/certificates", Access::local,
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
        router.add("GET", path, Access::user,
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
        router.add("DELETE", path + "/{name}", Access::local,
                   [&credentials, kind](Request& req, Respond respond) {
                       Status st = credentials.remove(req.caller, kind, req.params["name"]);
                       respond(st ? json_response(200, "{}") : error_response(st));
                   });
    }

    register_image_routes(router, images);

    router.add_upgrade(
        "GET", "/v1/events", Access::user, Upgrade::events, [](Request& req, Respond respond) {
            EventFilter filter;
            std::optional<uint64_t> since;
            if (Status st = parse_event_query(req.query, req.caller, filter, since); !st) {
                return respond(error_response(st));
            }
            respond(error_response(
                {Errc::bad_request, "GET /v1/events is a WebSocket: send an Upgrade request"}));
        });

    router.add("GET", "/v1/machines/{name}/console/log", Access::user,
               [&machines](Request& req, Respond respond) {
                   const core::Machine* m = nullptr;
                   if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
                       return respond(error_response(st));
                   }
                   uint64_t tail = kMaxConsoleLog;
                   if (auto it = req.query.find("tail"); it != req.query.end()) {
                       char* end = nullptr;
                       tail = std::strtoull(it->second.c_str(), &end, 10);
                       if (it->second.empty() || *end != '\0') {
                           return respond(error_response(
                               {Errc::bad_request, "tail must be a number of bytes"}));
                       }
                       tail = std::min<uint64_t>(tail, kMaxConsoleLog);
                   }
                   Response res;
                   res.content_type = "text/plain; charset=utf-8";
                   // Bounded, and never a FIFO or a device: the read cannot stall the reactor.
                   if (Status st = read_file_tail(
                           MachineFiles(machines.machine_dir(m->spec.name)).console_log().string(),
                           tail, res.body);
                       !st) {
                       return respond(error_response(st));
                   }
                   respond(std::move(res));
               });
}

}  // namespace hangar::api
