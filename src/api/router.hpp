#pragma once
// Transport-neutral HTTP request/response types and the one routing table. Nothing here
// depends on Beast, so handlers compile quickly and the fuzz target can drive the router.
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "core/machines.hpp"
#include "hangar/error.hpp"
#include "util/metrics.hpp"

namespace hangar::api {

struct Request {
    std::string method;
    std::string path;  // as sent (percent-encoded), without the query; params are decoded
    std::map<std::string, std::string> query;
    std::map<std::string, std::string> params;  // from {placeholders} in the route
    std::string body;
    core::Caller caller;
};

struct Response {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
    std::vector<std::pair<std::string, std::string>> headers;
};

using Respond = std::function<void(Response)>;
using Handler = std::function<void(Request& req, Respond respond)>;

// The JSON error shape {"error": {"code", "message"}} with its status. The only place where
// errors become HTTP.
Response error_response(const Status& st);
Response json_response(int status, std::string body);

// Splits "/a/b?x=1&y=%20" into the path and the decoded query. false when the target is
// malformed (bad percent-encoding, an encoded NUL, not starting with '/').
bool parse_target(const std::string& target, std::string& path,
                  std::map<std::string, std::string>& query);

class Router {
  public:
    void add(std::string method, std::string pattern, Handler handler);
    // Calls the handler of the matching route, or answers 404 / 405 itself.
    void dispatch(Request req, Respond respond) const;
    std::vector<std::pair<std::string, std::string>> routes() const;
    // Appends hangar_api_requests_total and hangar_api_request_duration_seconds.
    void render_metrics(std::string& out) const;

  private:
    struct Stats {
        std::map<int, uint64_t> by_status;
        metrics::Histogram latency{metrics::latency_buckets()};
    };
    // Keyed by "METHOD pattern" ("unmatched" for 404/405 answers of the router itself).
    mutable std::map<std::string, Stats> stats_;
    Respond measured(const std::string& key, Respond respond) const;

    struct Route {
        std::string method;
        std::string pattern;
        std::vector<std::string> segments;
        Handler handler;
    };
    std::vector<Route> routes_;
};

}  // namespace hangar::api
