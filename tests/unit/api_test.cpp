#include <gtest/gtest.h>

#include "api/handlers.hpp"
#include "api/router.hpp"
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
    r.add("GET", "/v1/machines/{name}", [&](api::Request& req, api::Respond respond) {
        seen = req.params["name"];
        respond(api::json_response(200, "{}"));
    });
    r.add("DELETE", "/v1/machines/{name}",
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
        api::parse_machine_spec(
            R"({"name":"a1","cpus":2,"memory_mib":256,"boot":{"cmdline":"x"},"autostart":true})", s)
            .ok());
    EXPECT_EQ(s.cpus, 2u);
    EXPECT_EQ(s.memory_mib, 256u);
    EXPECT_TRUE(s.autostart);
    EXPECT_EQ(s.boot.cmdline, "x");
    auto code = [](const std::string& body) {
        MachineSpec s;
        return api::parse_machine_spec(body, s).code();
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
