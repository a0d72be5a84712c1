#include "api/router.hpp"

#include <chrono>
#include <exception>

#include "util/json.hpp"
#include "util/reactor.hpp"

namespace hangar::api {

namespace {
std::vector<std::string> split_path(const std::string& path) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i < path.size()) {
        if (path[i] == '/') {
            ++i;
            continue;
        }
        size_t j = path.find('/', i);
        if (j == std::string::npos) {
            j = path.size();
        }
        out.push_back(path.substr(i, j - i));
        i = j;
    }
    return out;
}

int hex(char c) {
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

bool decode(std::string_view in, std::string& out, bool plus_is_space) {
    out.clear();
    for (size_t i = 0; i < in.size(); ++i) {
        char c = in[i];
        if (c == '%') {
            if (i + 2 >= in.size()) {
                return false;
            }
            int hi = hex(in[i + 1]), lo = hex(in[i + 2]);
            if (hi < 0 || lo < 0) {
                return false;
            }
            out += static_cast<char>(hi * 16 + lo);
            i += 2;
        } else if (c == '+' && plus_is_space) {
            out += ' ';
        } else {
            out += c;
        }
    }
    return true;
}
}  // namespace

Response json_response(int status, std::string body) {
    Response r;
    r.status = status;
    r.body = std::move(body);
    return r;
}

Response error_response(const Status& st) {
    json::Writer w;
    w.begin_object().field("error", st).end_object();
    return json_response(http_status(st.code()), w.take());
}

bool parse_target(const std::string& target, std::string& path,
                  std::map<std::string, std::string>& query) {
    if (target.empty() || target[0] != '/') {
        return false;
    }
    size_t q = target.find('?');
    // The path stays encoded so that an encoded '/' cannot create segments; segments are
    // decoded one by one when routed. Here it must merely decode cleanly.
    path = target.substr(0, q);
    std::string decoded;
    if (!decode(path, decoded, false) || decoded.find('\0') != std::string::npos) {
        return false;
    }
    if (q == std::string::npos) {
        return true;
    }
    std::string_view rest = std::string_view(target).substr(q + 1);
    while (!rest.empty()) {
        size_t amp = rest.find('&');
        std::string_view pair = rest.substr(0, amp);
        rest = amp == std::string_view::npos ? std::string_view() : rest.substr(amp + 1);
        if (pair.empty()) {
            continue;
        }
        size_t eq = pair.find('=');
        std::string k, v;
        if (!decode(pair.substr(0, eq), k, true) ||
            !decode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1), v,
                    true)) {
            return false;
        }
        query[k] = v;
    }
    return true;
}

std::string_view to_string(Access a) {
    switch (a) {
        case Access::anonymous:
            return "anonymous";
        case Access::user:
            return "user";
        case Access::local:
            return "local";
        case Access::admin:
            return "admin";
    }
    return "user";
}

core::Caller anonymous_caller() {
    return core::Caller{static_cast<uint32_t>(-1), false, false, "anonymous"};
}

bool is_anonymous(const core::Caller& caller) {
    return std::string_view(caller.method) == "anonymous";
}

void Router::add(std::string method, std::string pattern, Access access, Handler handler) {
    add_upgrade(std::move(method), std::move(pattern), access, Upgrade::none, std::move(handler));
}

void Router::add_upgrade(std::string method, std::string pattern, Access access, Upgrade upgrade,
                         Handler handler) {
    auto segments = split_path(pattern);
    routes_.push_back({{std::move(method), std::move(pattern), access, upgrade},
                       std::move(segments),
                       std::move(handler),
                       nullptr});
}

void Router::add_channel(std::string method, std::string pattern, Access access,
                         ChannelHandler on_upgrade, Handler plain) {
    add_upgrade(std::move(method), std::move(pattern), access, Upgrade::channel, std::move(plain));
    routes_.back().on_upgrade = std::move(on_upgrade);
}

std::vector<RouteInfo> Router::routes() const {
    std::vector<RouteInfo> out;
    for (const auto& r : routes_) {
        out.push_back(r.info);
    }
    return out;
}

Upgrade Router::Target::upgrade() const {
    return route ? route->info.upgrade : Upgrade::none;
}

Respond Router::measured(const std::string& key, Respond respond) const {
    auto start = std::chrono::steady_clock::now();
    return [this, key, start, respond = std::move(respond)](Response res) {
        auto& st = stats_[key];
        ++st.by_status[res.status];
        st.latency.observe(
            std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
        respond(std::move(res));
    };
}

namespace {
// Prometheus labels of a stats key "METHOD pattern" (or "unmatched").
std::string route_labels(const std::string& key) {
    size_t sp = key.find(' ');
    if (sp == std::string::npos) {
        return "route=\"unmatched\",method=\"\"";
    }
    return "route=\"" + metrics::label(key.substr(sp + 1)) + "\",method=\"" + key.substr(0, sp) +
           "\"";
}
}  // namespace

void Router::render_metrics(std::string& out) const {
    metrics::header(out, "hangar_api_requests_total", "counter",
                    "API requests answered, by route, method and status");
    for (const auto& [key, st] : stats_) {
        std::string labels = route_labels(key);
        for (const auto& [code, n] : st.by_status) {
            out += "hangar_api_requests_total{" + labels + ",code=\"" + std::to_string(code) +
                   "\"} " + std::to_string(n) + "\n";
        }
    }
    metrics::header(out, "hangar_api_request_duration_seconds", "histogram",
                    "Time from a routed request to its answer (operations included)");
    for (const auto& [key, st] : stats_) {
        st.latency.render(out, "hangar_api_request_duration_seconds", route_labels(key));
    }
}

namespace {
Response unauthorized(const Request& req) {
    auto res = error_response({Errc::unauthorized, req.unauthenticated.empty()
                                                       ? "this request needs credentials"
                                                       : req.unauthenticated});
    res.headers.emplace_back("WWW-Authenticate", "Bearer realm=\"hangar\"");
    return res;
}
}  // namespace

// The one place where access levels are enforced.
std::optional<Response> Router::refusal(const Route& route, const Request& req) const {
    const RouteInfo& r = route.info;
    if (r.access == Access::anonymous) {
        return std::nullopt;
    }
    if (is_anonymous(req.caller)) {
        return unauthorized(req);
    }
    if (r.access == Access::local && !req.caller.local) {
        return error_response(
            {Errc::forbidden, r.method + " " + r.pattern + " is served over the unix socket only"});
    }
    if (r.access == Access::admin && !req.caller.admin) {
        return error_response(
            {Errc::forbidden, r.method + " " + r.pattern + " is for root and the admin group"});
    }
    return std::nullopt;
}

Router::Target Router::resolve(Request& req) const {
    auto segments = split_path(req.path);
    std::string allowed;
    for (const auto& r : routes_) {
        if (r.segments.size() != segments.size()) {
            continue;
        }
        std::map<std::string, std::string> params;
        bool match = true;
        for (size_t i = 0; i < segments.size() && match; ++i) {
            const auto& p = r.segments[i];
            if (p.size() > 2 && p.front() == '{' && p.back() == '}') {
                std::string value;
                decode(segments[i], value, false);  // parse_target checked the encoding
                params[p.substr(1, p.size() - 2)] = std::move(value);
            } else {
                match = p == segments[i];
            }
        }
        if (!match) {
            continue;
        }
        if (r.info.method != req.method) {
            allowed += (allowed.empty() ? "" : ", ") + r.info.method;
            continue;
        }
        req.params = std::move(params);
        return Target{&r, refusal(r, req)};
    }
    Target t;
    if (is_anonymous(req.caller)) {
        // What exists is not told to a caller nobody stands for.
        t.refusal = unauthorized(req);
    } else if (!allowed.empty()) {
        t.refusal = error_response({Errc::method_not_allowed, "method " + req.method +
                                                                  " is not allowed on " + req.path +
                                                                  " (allowed: " + allowed + ")"});
        t.refusal->headers.emplace_back("Allow", allowed);
    } else {
        t.refusal =
            error_response({Errc::not_found, "no route for " + req.method + " " + req.path});
    }
    return t;
}

void Router::run(const Target& target, Request req, Respond respond) const {
    if (!target.route) {
        return measured("unmatched", std::move(respond))(*target.refusal);
    }
    const RouteInfo& r = target.route->info;
    respond = measured(r.method + " " + r.pattern, std::move(respond));
    if (target.refusal) {
        return respond(*target.refusal);
    }
    try {
        target.route->handler(req, std::move(respond));
    } catch (...) {
        // Never a 500: expected failures are Status values, so an exception is a bug that
        // may have left the core half-updated. It goes on to the reactor, which ends the
        // daemon (util/reactor.hpp); this adds where it came from.
        std::throw_with_nested(reactor::EscapedFrom("handler of " + r.method + " " + r.pattern));
    }
}

void Router::upgrade(const Target& target, Request req, Respond refuse, Accept accept) const {
    if (!target.permitted() || !target.route->on_upgrade) {
        return run(target, std::move(req), std::move(refuse));
    }
    const RouteInfo& r = target.route->info;
    std::string key = r.method + " " + r.pattern;
    refuse = measured(key, std::move(refuse));
    accept = [this, key, accept = std::move(accept)](std::shared_ptr<WsChannel> channel,
                                                     WsOptions options) {
        ++stats_[key].by_status[101];
        accept(std::move(channel), std::move(options));
    };
    try {
        target.route->on_upgrade(req, std::move(refuse), std::move(accept));
    } catch (...) {
        std::throw_with_nested(
            reactor::EscapedFrom("upgrade handler of " + r.method + " " + r.pattern));
    }
}

void Router::dispatch(Request req, Respond respond) const {
    Target target = resolve(req);
    run(target, std::move(req), std::move(respond));
}

}  // namespace hangar::api
