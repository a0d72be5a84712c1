#include "api/router.hpp"

#include <chrono>

#include "util/json.hpp"

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
    w.begin_object()
        .key("error")
        .begin_object()
        .field("code", errc_name(st.code()))
        .field("message", st.message())
        .end_object()
        .end_object();
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

void Router::add(std::string method, std::string pattern, Handler handler) {
    auto segments = split_path(pattern);
    routes_.push_back(
        {std::move(method), std::move(pattern), std::move(segments), std::move(handler)});
}

std::vector<std::pair<std::string, std::string>> Router::routes() const {
    std::vector<std::pair<std::string, std::string>> out;
    for (const auto& r : routes_) {
        out.emplace_back(r.method, r.pattern);
    }
    return out;
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

void Router::dispatch(Request req, Respond respond) const {
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
        if (r.method != req.method) {
            allowed += (allowed.empty() ? "" : ", ") + r.method;
            continue;
        }
        req.params = std::move(params);
        r.handler(req, measured(r.method + " " + r.pattern, std::move(respond)));
        return;
    }
    respond = measured("unmatched", std::move(respond));
    if (!allowed.empty()) {
        auto res = error_response({Errc::method_not_allowed, "method " + req.method +
                                                                 " is not allowed on " + req.path +
                                                                 " (allowed: " + allowed + ")"});
        res.headers.emplace_back("Allow", allowed);
        respond(std::move(res));
        return;
    }
    respond(error_response({Errc::not_found, "no route for " + req.method + " " + req.path}));
}

}  // namespace hangar::api
