// The display routes over the real route table and core, without QEMU: who gets a ticket and
// what it is good for, a stopped VM's screenshot and VNC, and which runtimes have a display.
#include <gtest/gtest.h>

#include <string>

#include "support/route_table.hpp"

using namespace hangar;

namespace {
api::Response call(test_support::RouteTable& t, const core::Caller& caller, std::string method,
                   std::string path, std::string body = "") {
    api::Request req;
    req.method = std::move(method);
    req.path = std::move(path);
    req.caller = caller;
    req.body = std::move(body);
    api::Response out;
    out.status = 0;
    t.router.dispatch(req, [&](api::Response res) { out = std::move(res); });
    for (int i = 0; i < 100 && out.status == 0; ++i) {
        t.io.poll();  // the consoles' watches keep the loop busy for good: no run()
        t.io.restart();
    }
    return out;
}
}  // namespace

TEST(Display, OnlyVmsHaveOne) {
    test_support::RouteTable t("display-caps");
    EXPECT_TRUE(t.runtimes->vms->supports(core::Capability::display, "v").ok());
    Status st = t.runtimes->containers->supports(core::Capability::display, "c");
    EXPECT_EQ(st.code(), Errc::bad_request);
    EXPECT_NE(st.message().find("VMs"), std::string::npos) << st.message();
}

TEST(Display, TicketsAndAStoppedVm) {
    test_support::RouteTable t("display-routes");
    core::Caller root{0, true, true, "unix"}, other{1001, false, true, "unix"};
    auto created = call(t, root, "POST", "/v1/machines",
                        R"({"name":"web","boot":{"kernel":"/etc/hostname"}})");
    ASSERT_EQ(created.status, 201) << created.body;

    auto res = call(t, root, "POST", "/v1/machines/web/console/ticket");
    ASSERT_EQ(res.status, 200) << res.body;
    EXPECT_NE(res.body.find("\"expires_in_s\":30"), std::string::npos) << res.body;
    auto start = res.body.find("hgt_");
    ASSERT_NE(start, std::string::npos);
    std::string ticket = res.body.substr(start, res.body.find('"', start) - start);
    auto who = t.tickets.redeem(ticket, "/v1/machines/web/vnc");
    ASSERT_TRUE(who);
    EXPECT_EQ(who->uid, 0u);
    EXPECT_TRUE(who->admin);

    // Another user's machine does not exist for them; nor does a ticket for it.
    EXPECT_EQ(call(t, other, "POST", "/v1/machines/web/console/ticket").status, 404);
    EXPECT_EQ(call(t, other, "GET", "/v1/machines/web/screenshot").status, 404);
    EXPECT_EQ(call(t, root, "GET", "/v1/machines/nope/screenshot").status, 404);
    // Stopped: no display to show.
    res = call(t, root, "GET", "/v1/machines/web/screenshot");
    EXPECT_EQ(res.status, 409) << res.body;
    EXPECT_NE(res.body.find("invalid_state"), std::string::npos) << res.body;
    EXPECT_EQ(call(t, root, "GET", "/v1/machines/web/vnc").status, 409);
}
