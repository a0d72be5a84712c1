#pragma once
// Transport-neutral HTTP request/response types and the one routing table. Nothing here
// depends on Beast, so handlers compile quickly and the fuzz target can drive the router.
// Every route declares who may call it (Access) and the router enforces it: the listeners
// only say who the caller is. A WebSocket route names its Upgrade, which the HTTP server maps
// to its WebSocket code.
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "api/ws_channel.hpp"
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
    // Why the caller is anonymous (no credentials, a bad token...): the message of the 401 a
    // route that needs more than Access::anonymous answers.
    std::string unauthenticated;
};

// Who may call a route.
enum class Access {
    anonymous,  // anyone, also an unauthenticated TCP caller
    user,       // any authenticated caller: a unix-socket peer, a token, a certificate
    local,      // a unix-socket peer (any uid), not a token or certificate over TCP
    admin,      // root or the admin group, over either transport
};
std::string_view to_string(Access a);

// The WebSocket a route upgrades to ("none": a plain HTTP route; "channel": the route's own
// WsChannel).
enum class Upgrade { none, events, channel };

// A caller no credentials stand for (over TCP).
core::Caller anonymous_caller();
bool is_anonymous(const core::Caller& caller);

struct Response {
    int status = 200;
    std::string body;
    std::string content_type = "application/json";
    std::vector<std::pair<std::string, std::string>> headers;
};

using Respond = std::function<void(Response)>;
using Handler = std::function<void(Request& req, Respond respond)>;
// Takes the upgraded connection over: the server completes the handshake and pumps frames
// between the socket and `channel`.
using Accept = std::function<void(std::shared_ptr<WsChannel> channel, WsOptions options)>;
// An upgrade request that matched its route and passed the route's access check. Calls
// exactly one of `refuse` (answered as HTTP, no upgrade) and `accept`, now or later.
using ChannelHandler = std::function<void(Request& req, Respond refuse, Accept accept)>;

// The JSON error shape {"error": {"code", "message"}} with its status. The only place where
// errors become HTTP.
Response error_response(const Status& st);
Response json_response(int status, std::string body);

// Splits "/a/b?x=1&y=%20" into the path and the decoded query. false when the target is
// malformed (bad percent-encoding, an encoded NUL, not starting with '/').
bool parse_target(const std::string& target, std::string& path,
                  std::map<std::string, std::string>& query);

struct RouteInfo {
    std::string method, pattern;
    Access access = Access::user;
    Upgrade upgrade = Upgrade::none;
};

class Router {
    struct Route;

  public:
    void add(std::string method, std::string pattern, Access access, Handler handler);
    // A WebSocket route: an upgrade request is taken over by the server's `upgrade` code once
    // the router has matched it and checked its access; `handler` answers a plain request.
    void add_upgrade(std::string method, std::string pattern, Access access, Upgrade upgrade,
                     Handler handler);
    // A WebSocket route with a channel of its own: `on_upgrade` takes upgrade requests,
    // `plain` answers the others.
    void add_channel(std::string method, std::string pattern, Access access,
                     ChannelHandler on_upgrade, Handler plain);

    // A request matched against the table: the route, or the answer when it has none or its
    // caller may not call it (401 anonymous, 403, 404, 405).
    struct Target {
        const Route* route = nullptr;
        std::optional<Response> refusal;
        Upgrade upgrade() const;
        bool permitted() const { return route && !refusal; }
    };
    // Matches req.method and req.path, fills req.params and checks req.caller's access. An
    // anonymous caller is answered 401 for anything it may not call, an unknown route too.
    Target resolve(Request& req) const;
    // Answers `req` as resolved: the route's handler, or the refusal.
    void run(const Target& target, Request req, Respond respond) const;
    // Hands an upgrade request (Upgrade::channel, handshake checked) to its route; counted
    // with the route's requests (101 when accepted).
    void upgrade(const Target& target, Request req, Respond refuse, Accept accept) const;
    // resolve + run.
    void dispatch(Request req, Respond respond) const;
    std::vector<RouteInfo> routes() const;
    // Appends hangar_api_requests_total and hangar_api_request_duration_seconds.
    void render_metrics(std::string& out) const;

  private:
    struct Stats {
        std::map<int, uint64_t> by_status;
        metrics::Histogram latency{metrics::latency_buckets()};
    };
    // Keyed by "METHOD pattern" ("unmatched" for 404/405 answers of the router itself, and
    // 401 to an anonymous caller on a route that does not exist).
    mutable std::map<std::string, Stats> stats_;
    Respond measured(const std::string& key, Respond respond) const;

    struct Route {
        RouteInfo info;
        std::vector<std::string> segments;
        Handler handler;
        ChannelHandler on_upgrade;
    };
    std::optional<Response> refusal(const Route& route, const Request& req) const;
    std::vector<Route> routes_;
};

}  // namespace hangar::api
