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
        for (auto& [method, pattern] : router.routes()) {
            routed.emplace(method, pattern);
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
