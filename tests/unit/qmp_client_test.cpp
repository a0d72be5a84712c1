// The QMP client against a scripted peer on a socketpair: greeting, capabilities, replies
// routed by id, events before replies, partial reads, deadlines, garbage, endless lines, EOF.
#include "qmp/client.hpp"

#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>

#include <chrono>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

using namespace std::chrono_literals;
using hangar::Errc;
using hangar::Status;
using hangar::qmp::Client;

namespace {
const char* kGreeting =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"x\"}, \"capabilities\": [\"oob\"]}}\r\n";

class QmpClientTest : public ::testing::Test {
  protected:
    void SetUp() override {
        int sv[2];
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        peer_ = sv[1];
        Client::Socket sock(io_);
        sock.assign(boost::asio::local::stream_protocol(), sv[0]);
        hangar::qmp::Options opts;
        opts.max_line = 4096;
        opts.handshake_timeout = 300ms;
        client_ = Client::create(std::move(sock), opts);
        client_->on_event(
            [this](std::string_view ev, simdjson::dom::element) { events_.emplace_back(ev); });
        client_->on_close([this](const std::string& why) { closed_ = why; });
        client_->on_responsive([this](bool r) { responsive_.push_back(r); });
    }
    void TearDown() override {
        if (peer_ >= 0) {
            close(peer_);
        }
    }
    void peer_write(const std::string& s) {
        ASSERT_EQ(write(peer_, s.data(), s.size()), static_cast<ssize_t>(s.size()));
    }
    // Everything the client sent so far.
    std::string peer_read() {
        run_for(20ms);
        std::string out;
        char buf[4096];
        ssize_t n;
        while ((n = recv(peer_, buf, sizeof buf, MSG_DONTWAIT)) > 0) {
            out.append(buf, static_cast<size_t>(n));
        }
        return out;
    }
    void run_for(std::chrono::milliseconds d) {
        io_.restart();
        io_.run_for(d);
    }
    // Greets and answers qmp_capabilities; returns the handshake's status.
    Status handshake() {
        Status result{Errc::internal, "not done"};
        client_->handshake([&](const Status& st) { result = st; });
        peer_write(kGreeting);
        EXPECT_NE(peer_read().find("\"execute\":\"qmp_capabilities\",\"id\":1"), std::string::npos);
        peer_write("{\"return\": {}, \"id\": 1}\r\n");
        run_for(20ms);
        return result;
    }

    boost::asio::io_context io_;
    int peer_ = -1;
    std::shared_ptr<Client> client_;
    std::vector<std::string> events_;
    std::vector<bool> responsive_;
    std::string closed_;
};
}  // namespace

TEST_F(QmpClientTest, HandshakeThenCommandReply) {
    ASSERT_TRUE(handshake().ok());
    EXPECT_EQ(client_->greeting_version(), "7.2.22");
    std::string result;
    Status st{Errc::internal, "pending"};
    client_->execute("query-status", {}, 1s, [&](const Status& s, std::string_view r) {
        st = s;
        result = r;
    });
    EXPECT_NE(peer_read().find("\"execute\":\"query-status\",\"id\":2"), std::string::npos);
    peer_write("{\"return\": {\"status\": \"running\", \"new-key\": [1]}, \"id\": 2}\r\n");
    run_for(20ms);
    EXPECT_TRUE(st.ok());
    EXPECT_EQ(result, "{\"status\":\"running\",\"new-key\":[1]}");
}

// getfd's descriptor arrives with the command's bytes (SCM_RIGHTS), in order with the others;
// the caller's own descriptor stays its own.
TEST_F(QmpClientTest, DescriptorTravelsWithItsCommand) {
    ASSERT_TRUE(handshake().ok());
    int pipefd[2];
    ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);
    Status first{Errc::internal, "pending"}, second{Errc::internal, "pending"};
    client_->execute("query-status", {}, 1s, [&](const Status& s, std::string_view) { first = s; });
    client_->execute_with_fd("getfd", "{\"fdname\":\"m\"}", pipefd[1], 1s,
                             [&](const Status& s, std::string_view) { second = s; });
    close(pipefd[1]);  // the client holds its own copy until it is sent
    run_for(20ms);
    std::string got;
    int received = -1;
    for (int i = 0; i < 2; ++i) {
        char buf[4096];
        alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int))] = {};
        iovec iov{buf, sizeof buf};
        msghdr msg{};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        ssize_t n = recvmsg(peer_, &msg, MSG_DONTWAIT);
        if (n <= 0) {
            break;
        }
        for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
            if (c->cmsg_type == SCM_RIGHTS) {
                std::memcpy(&received, CMSG_DATA(c), sizeof(int));
                // The descriptor rides on the bytes of getfd, not on those of the command before.
                EXPECT_NE(std::string(buf, size_t(n)).find("getfd"), std::string::npos);
            }
        }
        got.append(buf, size_t(n));
    }
    EXPECT_LT(got.find("query-status"), got.find("\"execute\":\"getfd\""));
    ASSERT_GE(received, 0);
    // It is the pipe's write end: what goes in comes out of the read end.
    ASSERT_EQ(write(received, "x", 1), 1);
    char c = 0;
    ASSERT_EQ(read(pipefd[0], &c, 1), 1);
    EXPECT_EQ(c, 'x');
    close(received);
    close(pipefd[0]);
    peer_write("{\"return\": {}, \"id\": 2}\r\n{\"return\": {}, \"id\": 3}\r\n");
    run_for(20ms);
    EXPECT_TRUE(first.ok());
    EXPECT_TRUE(second.ok());
}

TEST_F(QmpClientTest, EventBeforeItsReplyAndSeveralMessagesInOneRead) {
    ASSERT_TRUE(handshake().ok());
    std::vector<std::string> order;
    client_->on_event([&](std::string_view ev, simdjson::dom::element) { order.emplace_back(ev); });
    client_->execute("stop", {}, 1s, [&](const Status& s, std::string_view) {
        order.push_back(s.ok() ? "reply" : "error");
    });
    client_->execute("cont", {}, 1s, [&](const Status& s, std::string_view) {
        order.push_back(s.ok() ? "reply2" : "error2");
    });
    peer_read();
    peer_write(
        "{\"event\": \"STOP\", \"timestamp\": {}}\r\n{\"return\": {}, \"id\": 2}\r\n"
        "{\"event\": \"RESUME\"}\r\n{\"return\": {}, \"id\": 3}\r\n");
    run_for(20ms);
    EXPECT_EQ(order, (std::vector<std::string>{"STOP", "reply", "RESUME", "reply2"}));
}

TEST_F(QmpClientTest, PartialReadsAreReassembled) {
    ASSERT_TRUE(handshake().ok());
    std::string msg = "{\"event\": \"SHUTDOWN\", \"data\": {\"guest\": true}}\r\n";
    for (char c : msg) {
        peer_write(std::string(1, c));
        run_for(1ms);
    }
    run_for(10ms);
    EXPECT_EQ(events_, std::vector<std::string>{"SHUTDOWN"});
    EXPECT_TRUE(closed_.empty());
}

TEST_F(QmpClientTest, ErrorReplyBecomesStatus) {
    ASSERT_TRUE(handshake().ok());
    Status st;
    client_->execute("nope", "{\"a\":1}", 1s, [&](const Status& s, std::string_view) { st = s; });
    EXPECT_NE(peer_read().find("\"arguments\":{\"a\":1}"), std::string::npos);
    peer_write("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"no\"}, \"id\": 2}\n");
    run_for(20ms);
    EXPECT_EQ(st.code(), Errc::internal);
    EXPECT_NE(st.message().find("CommandNotFound"), std::string::npos);
}

TEST_F(QmpClientTest, DeadlineFailsCommandAndFlagsUnresponsiveUntilQemuSpeaks) {
    ASSERT_TRUE(handshake().ok());
    Status st;
    client_->execute("stop", {}, 50ms, [&](const Status& s, std::string_view) { st = s; });
    run_for(100ms);
    EXPECT_EQ(st.code(), Errc::timeout);
    EXPECT_EQ(responsive_, std::vector<bool>{false});
    EXPECT_EQ(client_->pending(), 0u);
    // The late reply is ignored; hearing from QEMU clears the flag.
    peer_write("{\"return\": {}, \"id\": 2}\r\n");
    run_for(20ms);
    EXPECT_EQ(responsive_, (std::vector<bool>{false, true}));
    EXPECT_TRUE(client_->is_open());
}

TEST_F(QmpClientTest, GarbageDropsConnectionAndFailsPending) {
    ASSERT_TRUE(handshake().ok());
    Status st;
    client_->execute("stop", {}, 5s, [&](const Status& s, std::string_view) { st = s; });
    peer_write("this is not json\r\n");
    run_for(20ms);
    EXPECT_FALSE(client_->is_open());
    EXPECT_NE(closed_.find("not a JSON object"), std::string::npos);
    EXPECT_EQ(st.code(), Errc::unavailable);
}

TEST_F(QmpClientTest, EndlessLineDropsConnection) {
    ASSERT_TRUE(handshake().ok());
    peer_write(std::string(5000, 'x'));
    run_for(20ms);
    EXPECT_FALSE(client_->is_open());
    EXPECT_NE(closed_.find("longer than 4096"), std::string::npos);
}

TEST_F(QmpClientTest, EofFailsEveryPendingCommandAtOnce) {
    ASSERT_TRUE(handshake().ok());
    int failed = 0;
    for (int i = 0; i < 3; ++i) {
        client_->execute("stop", {}, 10s, [&](const Status& s, std::string_view) {
            failed += s.code() == Errc::unavailable;
        });
    }
    run_for(10ms);
    close(peer_);
    peer_ = -1;
    run_for(20ms);
    EXPECT_EQ(failed, 3);
    EXPECT_NE(closed_.find("closed by QEMU"), std::string::npos);
    // Commands after the close fail too, asynchronously.
    bool called = false;
    client_->execute("cont", {}, 1s, [&](const Status& s, std::string_view) {
        called = s.code() == Errc::unavailable;
    });
    EXPECT_FALSE(called);
    run_for(10ms);
    EXPECT_TRUE(called);
}

TEST_F(QmpClientTest, NoGreetingTimesOut) {
    Status result;
    client_->handshake([&](const Status& st) { result = st; });
    run_for(400ms);
    EXPECT_EQ(result.code(), Errc::unavailable);
    EXPECT_NE(result.message().find("no QMP greeting"), std::string::npos);
    EXPECT_FALSE(client_->is_open());
}

TEST_F(QmpClientTest, MessageBeforeGreetingIsRejected) {
    Status result;
    client_->handshake([&](const Status& st) { result = st; });
    peer_write("{\"return\": {}}\n");
    run_for(20ms);
    EXPECT_FALSE(result.ok());
    EXPECT_FALSE(client_->is_open());
}
