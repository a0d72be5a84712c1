#include <gtest/gtest.h>

#include "api/handlers.hpp"
#include "api/router.hpp"
#include "core/spec_codec.hpp"
#include "hangar/names.hpp"

using namespace hangar;

TEST(Names, ContractPattern) {
    EXPECT_TRUE(is_valid_name("web1"));
    EXPECT_TRUE(is_valid_name("0-a"));
    EXPECT_TRUE(is_valid_name(std::string(63, 'a')));
    for (std::string bad : {"", "../x", "a b", "Web", "-a", "a_b", "a/b", "a.b", "é"}) {
        EXPECT_FALSE(is_valid_name(bad)) << bad;
    }
    EXPECT_FALSE(is_valid_name(std::string(64, 'a')));
    EXPECT_FALSE(is_valid_name(std::string(300, 'a')));
    Status st = check_name("machine", std::string("a\"\n\x01") + std::string(300, 'b'));
    EXPECT_EQ(st.code(), Errc::invalid_name);
    EXPECT_LT(st.message().size(), 300u);
}

TEST(Errors, OneMappingToHttp) {
    EXPECT_EQ(http_status(Errc::invalid_name), 400);
    EXPECT_EQ(http_status(Errc::busy), 409);
    EXPECT_EQ(http_status(Errc::invalid_spec), 422);
    EXPECT_EQ(http_status(Errc::timeout), 504);
    auto r = api::error_response({Errc::invalid_state, "it is \"running\""});
    EXPECT_EQ(r.status, 409);
    EXPECT_EQ(r.body,
              "{\"error\":{\"code\":\"invalid_state\",\"message\":\"it is \\\"running\\\"\"}}");
}

TEST(Router, TargetParsing) {
    std::string path;
    std::map<std::string, std::string> q;
    ASSERT_TRUE(api::parse_target("/v1/machines?state=running&x=a%20b+c&flag", path, q));
    EXPECT_EQ(path, "/v1/machines");
    EXPECT_EQ(q["state"], "running");
    EXPECT_EQ(q["x"], "a b c");
    EXPECT_EQ(q.count("flag"), 1u);
    EXPECT_TRUE(api::parse_target("/v1/machines/%2e%2e%2fx", path, q));
    EXPECT_EQ(path, "/v1/machines/%2e%2e%2fx");
    EXPECT_FALSE(api::parse_target("/v1/%zz", path, q));
    EXPECT_FALSE(api::parse_target("/v1/%2", path, q));
    EXPECT_FALSE(api::parse_target("/v1/%00", path, q));
    EXPECT_FALSE(api::parse_target("v1", path, q));
    EXPECT_FALSE(api::parse_target("", path, q));
}

TEST(Router, MatchesParamsAnd404And405) {
    api::Router r;
    std::string seen;
    r.add("GET", "/v1/machines/{name}", api::Access::user,
          [&](api::Request& req, api::Respond respond) {
              seen = req.params["name"];
              respond(api::json_response(200, "{}"));
          });
    r.add("DELETE", "/v1/machines/{name}", api::Access::user,
          [&](api::Request&, api::Respond respond) { respond(api::json_response(200, "{}")); });
    auto call = [&](std::string method, std::string path) {
        api::Request req;
        req.method = method;
        req.path = path;
        api::Response out;
        r.dispatch(req, [&](api::Response res) { out = std::move(res); });
        return out;
    };
    EXPECT_EQ(call("GET", "/v1/machines/web1").status, 200);
    EXPECT_EQ(seen, "web1");
    // An encoded '/' stays inside its segment and reaches the handler decoded.
    EXPECT_EQ(call("GET", "/v1/machines/..%2fx").status, 200);
    EXPECT_EQ(seen, "../x");
    auto nf = call("GET", "/v1/nope");
    EXPECT_EQ(nf.status, 404);
    EXPECT_NE(nf.body.find("\"not_found\""), std::string::npos);
    auto na = call("PUT", "/v1/machines/web1");
    EXPECT_EQ(na.status, 405);
    ASSERT_EQ(na.headers.size(), 1u);
    EXPECT_EQ(na.headers[0].second, "GET, DELETE");
}

TEST(Spec, ParsesAndRejects) {
    MachineSpec s;
    ASSERT_TRUE(
        core::decode_machine_spec(
            R"({"name":"a1","cpus":2,"memory_mib":256,"boot":{"cmdline":"x"},"autostart":true})", s)
            .ok());
    EXPECT_EQ(s.cpus, 2u);
    EXPECT_EQ(s.memory_mib, 256u);
    EXPECT_TRUE(s.autostart);
    EXPECT_EQ(s.boot.cmdline, "x");
    auto code = [](const std::string& body) {
        MachineSpec s;
        return core::decode_machine_spec(body, s).code();
    };
    EXPECT_EQ(code("{"), Errc::invalid_json);
    EXPECT_EQ(code("[]"), Errc::bad_request);
    EXPECT_EQ(code("{}"), Errc::bad_request);
    EXPECT_EQ(code(R"({"name":"a","cpus":"2"})"), Errc::bad_request);
    EXPECT_EQ(code(R"({"name":"a","cpus":-1})"), Errc::bad_request);
    EXPECT_EQ(code(R"({"name":"a","bogus":1})"), Errc::bad_request);
    EXPECT_EQ(code(R"({"name":"a","boot":{"bogus":""}})"), Errc::bad_request);
    EXPECT_EQ(code(R"({"name":"../x"})"), Errc::invalid_name);
    EXPECT_EQ(code(R"({"name":5})"), Errc::bad_request);
    EXPECT_EQ(code(R"({"name":"a\u0000b"})"), Errc::bad_request);
}

TEST(Router, EnforcesEachRoutesAccessLevel) {
    api::Router r;
    int called = 0;
    auto ok = [&](api::Request&, api::Respond respond) {
        ++called;
        respond(api::json_response(200, "{}"));
    };
    r.add("GET", "/v1/health", api::Access::anonymous, ok);
    r.add("GET", "/v1/machines", api::Access::user, ok);
    r.add("POST", "/v1/tokens", api::Access::local, ok);
    r.add("GET", "/v1/metrics", api::Access::admin, ok);
    r.add_upgrade("GET", "/v1/events", api::Access::user, api::Upgrade::events, ok);
    core::Caller anonymous = api::anonymous_caller();
    core::Caller unix_user{1000, false, true, "unix"}, unix_root{0, true, true, "unix"};
    core::Caller token_user{1000, false, false, "token"}, token_admin{0, true, false, "token"};
    auto call = [&](const core::Caller& caller, std::string method, std::string path) {
        api::Request req;
        req.method = std::move(method);
        req.path = std::move(path);
        req.caller = caller;
        req.unauthenticated = "the bearer token is not valid";
        api::Response out;
        r.dispatch(req, [&](api::Response res) { out = std::move(res); });
        return out;
    };
    struct Case {
        std::string method, path;
        int anonymous, unix_user, unix_root, token_user, token_admin;
    };
    for (const auto& c : std::vector<Case>{{"GET", "/v1/health", 200, 200, 200, 200, 200},
                                           {"GET", "/v1/machines", 401, 200, 200, 200, 200},
                                           {"POST", "/v1/tokens", 401, 200, 200, 403, 403},
                                           {"GET", "/v1/metrics", 401, 403, 200, 403, 200},
                                           {"GET", "/v1/events", 401, 200, 200, 200, 200},
                                           // What exists is not told to the anonymous.
                                           {"GET", "/v1/nope", 401, 404, 404, 404, 404},
                                           {"PUT", "/v1/machines", 401, 405, 405, 405, 405}}) {
        int before = called;
        EXPECT_EQ(call(anonymous, c.method, c.path).status, c.anonymous) << c.path;
        EXPECT_EQ(call(unix_user, c.method, c.path).status, c.unix_user) << c.path;
        EXPECT_EQ(call(unix_root, c.method, c.path).status, c.unix_root) << c.path;
        EXPECT_EQ(call(token_user, c.method, c.path).status, c.token_user) << c.path;
        EXPECT_EQ(call(token_admin, c.method, c.path).status, c.token_admin) << c.path;
        // A refused call never reaches its handler.
        int allowed = 0;
        for (int s : {c.anonymous, c.unix_user, c.unix_root, c.token_user, c.token_admin}) {
            allowed += s == 200;
        }
        EXPECT_EQ(called - before, allowed) << c.path;
    }
    auto res = call(anonymous, "GET", "/v1/machines");
    EXPECT_NE(res.body.find("\"unauthorized\""), std::string::npos);
    EXPECT_NE(res.body.find("the bearer token is not valid"), std::string::npos);
    ASSERT_EQ(res.headers.size(), 1u);
    EXPECT_EQ(res.headers[0].first, "WWW-Authenticate");
    res = call(token_user, "GET", "/v1/metrics");
    EXPECT_NE(res.body.find("\"forbidden\""), std::string::npos);
    res = call(token_admin, "POST", "/v1/tokens");
    EXPECT_NE(res.body.find("unix socket only"), std::string::npos);
    // The table says which route is a WebSocket, and the resolved target carries it.
    api::Request req;
    req.method = "GET";
    req.path = "/v1/events";
    req.caller = unix_user;
    auto target = r.resolve(req);
    EXPECT_TRUE(target.permitted());
    EXPECT_EQ(target.upgrade(), api::Upgrade::events);
    req.caller = anonymous;
    EXPECT_FALSE(r.resolve(req).permitted());
    size_t websockets = 0;
    for (const auto& route : r.routes()) {
        websockets += route.upgrade != api::Upgrade::none;
    }
    EXPECT_EQ(websockets, 1u);
}
