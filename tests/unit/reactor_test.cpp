// The reactor-thread check, what an escaped exception is reported as, the router's rule for a
// handler's exception, the health verdict, and the console log's bounded read.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <thread>

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "api/router.hpp"
#include "core/health.hpp"
#include "util/file_tail.hpp"
#include "util/reactor.hpp"

using namespace hangar;
namespace fs = std::filesystem;

namespace {
void guarded() {
    HANGAR_ASSERT_REACTOR();
}
}  // namespace

TEST(Reactor, ThreadCheck) {
    reactor::mark_this_thread();  // the test's main thread, where every other test runs too
    EXPECT_TRUE(reactor::on_reactor_thread());
    bool other = true;
    std::thread([&] { other = reactor::on_reactor_thread(); }).join();
    EXPECT_FALSE(other);
    guarded();  // passes on the reactor thread
}

TEST(Reactor, AssertOffTheThreadAborts) {
#ifdef HANGAR_REACTOR_CHECKS
    reactor::mark_this_thread();
    auto log = spdlog::default_logger();
    spdlog::set_default_logger(spdlog::stderr_logger_st("reactor-test"));  // what death tests read
    EXPECT_DEATH(std::thread(guarded).join(), "guarded\\(\\) called off the reactor thread");
    spdlog::drop("reactor-test");
    spdlog::set_default_logger(log);
#else
    GTEST_SKIP() << "HANGAR_ASSERT_REACTOR is compiled out of release builds";
#endif
}

TEST(Reactor, DescribesWhatEscapedAndWhere) {
    try {
        try {
            throw std::logic_error("boom");
        } catch (...) {
            std::throw_with_nested(reactor::EscapedFrom("handler of GET /x"));
        }
    } catch (...) {
        EXPECT_EQ(reactor::describe(std::current_exception()),
                  "std::logic_error \"boom\" in handler of GET /x");
    }
    try {
        throw 42;
    } catch (...) {
        EXPECT_EQ(reactor::describe(std::current_exception()), "an exception of type int");
    }
}

TEST(Reactor, RouterPassesHandlerExceptionsOnWithTheRoute) {
    api::Router router;
    router.add("POST", "/v1/things/{name}", api::Access::anonymous,
               [](api::Request&, api::Respond) { throw std::out_of_range("map::at"); });
    api::Request req;
    req.method = "POST";
    req.path = "/v1/things/a";
    bool answered = false;
    try {
        router.dispatch(req, [&](api::Response) { answered = true; });
        FAIL() << "the exception was swallowed";
    } catch (...) {
        EXPECT_EQ(reactor::describe(std::current_exception()),
                  "std::out_of_range \"map::at\" in handler of POST /v1/things/{name}");
    }
    EXPECT_FALSE(answered);  // never turned into a 500
}

TEST(Health, VerdictAndWhatAnonymousCallersSee) {
    fs::path dir = fs::temp_directory_path() / ("hangar-health-" + std::to_string(getpid()));
    fs::create_directories(dir);
    core::Health health("/bin/sh", "", dir.string());  // QEMU "found", no guest
    core::Caller local;
    core::Caller anonymous{0, false, false, "anonymous"};
    core::HealthReport r = health.report(local);
    EXPECT_TRUE(r.ok);  // guest and D-Bus are not required
    ASSERT_EQ(r.checks.size(), 4u);
    EXPECT_EQ(r.checks[0].name, "qemu");
    EXPECT_EQ(r.checks[0].detail, "/bin/sh");
    EXPECT_EQ(r.checks[1].detail, dir.string());
    EXPECT_FALSE(r.checks[2].ok);
    EXPECT_EQ(r.checks[3].detail, "not served");
    r = health.report(anonymous);
    EXPECT_EQ(r.checks[0].detail, "found");
    EXPECT_EQ(r.checks[1].detail, "writable");

    health.set_bus([](std::string& d) {
        d = "org.hangar on the system bus";
        return true;
    });
    r = health.report(local);
    EXPECT_TRUE(r.checks[3].ok);
    EXPECT_EQ(r.checks[3].detail, "org.hangar on the system bus");
    EXPECT_EQ(health.report(anonymous).checks[3].detail, "served");

    r = core::Health("/nonexistent/qemu", "", dir.string()).report(local);
    EXPECT_FALSE(r.ok);
    EXPECT_STREQ(r.status(), "degraded");
    EXPECT_EQ(r.checks[0].detail, "/nonexistent/qemu not found");
    fs::remove_all(dir);
}

TEST(FileTail, BoundedAndNeverAFifo) {
    fs::path dir = fs::temp_directory_path() / ("hangar-tail-" + std::to_string(getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::string out = "x";
    ASSERT_TRUE(read_file_tail((dir / "missing").string(), 10, out).ok());
    EXPECT_EQ(out, "");
    std::ofstream((dir / "log").string()) << "0123456789";
    ASSERT_TRUE(read_file_tail((dir / "log").string(), 4, out).ok());
    EXPECT_EQ(out, "6789");
    ASSERT_TRUE(read_file_tail((dir / "log").string(), 100, out).ok());
    EXPECT_EQ(out, "0123456789");
    // A FIFO nobody writes to would block an open without O_NONBLOCK, and a read after it.
    ASSERT_EQ(mkfifo((dir / "fifo").c_str(), 0600), 0);
    auto t0 = std::chrono::steady_clock::now();
    Status st = read_file_tail((dir / "fifo").string(), 100, out);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("not a regular file"), std::string::npos) << st.message();
    EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(1));
    fs::create_symlink(dir / "log", dir / "link");
    EXPECT_FALSE(read_file_tail((dir / "link").string(), 100, out).ok());
    fs::remove_all(dir);
}
