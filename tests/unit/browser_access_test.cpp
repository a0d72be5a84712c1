#include <gtest/gtest.h>

#include <string>

#include "api/browser_access.hpp"

using hangar::Errc;
using hangar::api::check_origin;
using hangar::api::normalize_origin;
using hangar::api::Tickets;

namespace {
const std::string kVnc = "/v1/machines/web/vnc";
const std::string kConsole = "/v1/machines/web/console";
}  // namespace

TEST(Tickets, OneUseForTheCallerOnItsPaths) {
    Tickets t;
    hangar::core::Caller alice{1001, false, true, "token"};
    std::string ticket = t.issue(alice, {kConsole, kVnc});
    EXPECT_EQ(ticket.rfind("hgt_", 0), 0u);
    auto c = t.redeem(ticket, kVnc);
    ASSERT_TRUE(c);
    EXPECT_EQ(c->uid, 1001u);
    EXPECT_FALSE(c->admin);
    EXPECT_FALSE(c->local);
    EXPECT_STREQ(c->method, "ticket");
    EXPECT_FALSE(t.redeem(ticket, kVnc)) << "a ticket is good for one connection";
    EXPECT_FALSE(t.redeem(ticket, kConsole));
    EXPECT_EQ(t.outstanding(), 0u);
}

TEST(Tickets, AnotherPathUsesItUp) {
    Tickets t;
    std::string ticket = t.issue({1001, false, false, "token"}, {kVnc});
    EXPECT_FALSE(t.redeem(ticket, "/v1/machines/other/vnc"));
    EXPECT_FALSE(t.redeem(ticket, kVnc)) << "a ticket tried on the wrong path is gone";
    EXPECT_FALSE(t.redeem("hgt_unknown", kVnc));
    EXPECT_FALSE(t.redeem("", kVnc));
}

TEST(Tickets, ExpireAndAreBounded) {
    Tickets expired(std::chrono::seconds(0));
    std::string ticket = expired.issue({0, true, true, "unix"}, {kVnc});
    EXPECT_FALSE(expired.redeem(ticket, kVnc));

    Tickets few(std::chrono::seconds(30), 3);
    std::string first = few.issue({1, false, false, "token"}, {kVnc});
    for (int i = 0; i < 3; ++i) {
        few.issue({1, false, false, "token"}, {kVnc});
    }
    EXPECT_EQ(few.outstanding(), 3u);
    EXPECT_FALSE(few.redeem(first, kVnc)) << "the oldest makes room";
}

TEST(Origin, NoOriginIsNotABrowser) {
    EXPECT_TRUE(check_origin("", "https", "127.0.0.1:8443", {}).ok());
}

TEST(Origin, SameOriginWithDefaultPortsAndCase) {
    EXPECT_TRUE(check_origin("https://127.0.0.1:8443", "https", "127.0.0.1:8443", {}).ok());
    EXPECT_TRUE(check_origin("https://Hangar.Example", "https", "hangar.example:443", {}).ok());
    EXPECT_TRUE(check_origin("http://h.example:80", "http", "h.example", {}).ok());
    EXPECT_TRUE(check_origin("https://[::1]:8443", "https", "[::1]:8443", {}).ok());
}

TEST(Origin, OthersAreForbidden) {
    for (const char* o : {"https://evil.example", "http://127.0.0.1:8443", "https://127.0.0.1:8444",
                          "null", "https://127.0.0.1:8443.evil.example", "file://",
                          "https://user@127.0.0.1:8443", "https://127.0.0.1:8443/path"}) {
        auto st = check_origin(o, "https", "127.0.0.1:8443", {});
        EXPECT_EQ(st.code(), Errc::forbidden) << o;
    }
    EXPECT_NE(check_origin("https://evil.example", "https", "127.0.0.1:8443", {})
                  .message()
                  .find("--allowed-origin"),
              std::string::npos);
}

TEST(Origin, AllowedList) {
    std::vector<std::string> allowed{"https://dash.example:8443", "http://127.0.0.1:9000"};
    EXPECT_TRUE(check_origin("https://dash.example:8443", "https", "h:1", allowed).ok());
    EXPECT_TRUE(check_origin("http://127.0.0.1:9000", "https", "h:1", allowed).ok());
    EXPECT_FALSE(check_origin("https://dash.example", "https", "h:1", allowed).ok());
    EXPECT_EQ(normalize_origin("HTTPS://Dash.Example/"), "https://dash.example:443");
    EXPECT_EQ(normalize_origin("null"), "");
    EXPECT_EQ(normalize_origin("ftp://x"), "");
}
