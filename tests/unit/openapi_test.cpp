// The OpenAPI document against the router's own table: every route the daemon serves is
// documented with its method, and every documented operation is served.
#include <gtest/gtest.h>

#include <set>
#include <utility>

#include <simdjson.h>
#include "api/handlers.hpp"
#include "support/route_table.hpp"

using namespace hangar;

TEST(OpenApi, DocumentsExactlyTheRoutedOperations) {
    {
        test_support::RouteTable world("openapi");
        const api::Router& router = world.router;

        std::set<std::pair<std::string, std::string>> routed;
        for (const auto& r : router.routes()) {
            routed.emplace(r.method, r.pattern);
        }

        simdjson::dom::parser parser;
        simdjson::dom::element doc;
        simdjson::padded_string text(api::openapi_document());
        ASSERT_EQ(parser.parse(text).get(doc), simdjson::SUCCESS);
        std::string_view version;
        ASSERT_EQ(doc["openapi"].get(version), simdjson::SUCCESS);
        EXPECT_EQ(version, "3.1.0");
        simdjson::dom::object paths;
        ASSERT_EQ(doc["paths"].get(paths), simdjson::SUCCESS);
        std::set<std::pair<std::string, std::string>> documented;
        for (auto [path, item] : paths) {
            simdjson::dom::object ops;
            ASSERT_EQ(item.get(ops), simdjson::SUCCESS);
            for (auto [key, op] : ops) {
                std::string method(key);
                if (method == "parameters" || method == "summary" || method == "description") {
                    continue;
                }
                for (auto& c : method) {
                    c = static_cast<char>(toupper(c));
                }
                documented.emplace(method, std::string(path));
                // Every operation names its answers, errors included.
                simdjson::dom::object responses;
                EXPECT_EQ(op["responses"].get(responses), simdjson::SUCCESS) << method << path;
            }
        }
        for (const auto& r : routed) {
            EXPECT_TRUE(documented.count(r))
                << "routed but not documented: " << r.first << " " << r.second;
        }
        for (const auto& d : documented) {
            EXPECT_TRUE(routed.count(d))
                << "documented but not routed: " << d.first << " " << d.second;
        }
        EXPECT_GE(routed.size(), 17u);
    }
}

// Each operation says who may call it (x-hangar-access) exactly as its route declares, and
// documents the refusals that level brings.
TEST(OpenApi, DocumentsEachRoutesAccessLevel) {
    test_support::RouteTable world("openapi-access");
    simdjson::dom::parser parser;
    simdjson::dom::element doc;
    simdjson::padded_string text(api::openapi_document());
    ASSERT_EQ(parser.parse(text).get(doc), simdjson::SUCCESS);
    for (const auto& r : world.router.routes()) {
        std::string method = r.method;
        for (auto& c : method) {
            c = static_cast<char>(tolower(c));
        }
        simdjson::dom::element op;
        ASSERT_EQ(doc["paths"][r.pattern][method].get(op), simdjson::SUCCESS) << r.pattern;
        std::string_view access;
        ASSERT_EQ(op["x-hangar-access"].get(access), simdjson::SUCCESS)
            << r.method << " " << r.pattern << " has no x-hangar-access";
        EXPECT_EQ(access, api::to_string(r.access)) << r.method << " " << r.pattern;
        bool websocket = false;
        if (op["x-hangar-websocket"].error() == simdjson::SUCCESS) {
            ASSERT_EQ(op["x-hangar-websocket"].get(websocket), simdjson::SUCCESS);
        }
        EXPECT_EQ(websocket, r.upgrade != api::Upgrade::none) << r.method << " " << r.pattern;
        simdjson::dom::object responses;
        ASSERT_EQ(op["responses"].get(responses), simdjson::SUCCESS);
        bool anonymous = r.access == api::Access::anonymous;
        EXPECT_EQ(responses["401"].error() == simdjson::SUCCESS, !anonymous)
            << r.method << " " << r.pattern;
        if (r.access == api::Access::local || r.access == api::Access::admin) {
            EXPECT_EQ(responses["403"].error(), simdjson::SUCCESS) << r.method << " " << r.pattern;
        }
        // No security requirement exactly where anyone may call.
        simdjson::dom::array security;
        bool open = op["security"].get(security) == simdjson::SUCCESS && security.size() == 0;
        EXPECT_EQ(open, anonymous) << r.method << " " << r.pattern;
    }
}
