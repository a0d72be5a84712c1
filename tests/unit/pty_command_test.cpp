// PtyCommand (interactive exec's process): a pty that is the command's controlling terminal,
// of the size asked and resized, read to EIO after the exit; hang-up sends SIGHUP; dropping it
// kills the command. Real processes (the host's sh), on a real io_context.
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>

#include <boost/asio/io_context.hpp>
#include <boost/asio/steady_timer.hpp>

#include "util/process.hpp"

using namespace hangar;
namespace fs = std::filesystem;

namespace {
// Reads the master until EIO (or `until` is in the output), running `io` for at most 10 s.
std::string read_pty(boost::asio::io_context& io, PtyCommand& pty, const std::string& until = {}) {
    std::string out;
    bool done = false;
    std::function<void()> wait = [&] {
        pty.master().async_wait(
            boost::asio::posix::stream_descriptor::wait_read, [&](boost::system::error_code ec) {
                if (ec) {
                    done = true;
                    return;
                }
                char buf[4096];
                ssize_t n = ::read(pty.master().native_handle(), buf, sizeof buf);
                if (n > 0) {
                    out.append(buf, static_cast<size_t>(n));
                } else if (n < 0 && errno == EAGAIN) {
                } else {
                    done = true;  // EIO: the slave is closed everywhere
                    return;
                }
                if (!until.empty() && out.find(until) != std::string::npos) {
                    done = true;
                    return;
                }
                wait();
            });
    };
    wait();
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!done && std::chrono::steady_clock::now() < deadline) {
        io.run_for(std::chrono::milliseconds(50));
    }
    io.restart();
    return out;
}

bool alive(pid_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string line;
    std::getline(stat, line);
    return !line.empty() && line.find(") Z ") == std::string::npos;
}
}  // namespace

TEST(PtyCommand, ControllingTerminalSizeAndExit) {
    boost::asio::io_context io;
    PtyOptions opts;
    opts.argv = {"/bin/sh", "-c",
                 "stty size; exec 3</dev/tty && echo has-ctty; read line; stty size; "
                 "echo got-$line; exit 3"};
    opts.cols = 100;
    opts.rows = 40;
    std::shared_ptr<PtyCommand> pty;
    ASSERT_TRUE(PtyCommand::start(io, opts, pty));
    int exit_code = -1;
    pty->on_exit([&](ExitInfo info) { exit_code = info.code; });
    std::string out = read_pty(io, *pty, "has-ctty");
    EXPECT_NE(out.find("40 100"), std::string::npos) << out;
    EXPECT_NE(out.find("has-ctty"), std::string::npos) << out;  // /dev/tty opens: its ctty
    ASSERT_TRUE(pty->resize(132, 50));
    ASSERT_EQ(::write(pty->master().native_handle(), "hello\n", 6), 6);
    out += read_pty(io, *pty);
    EXPECT_NE(out.find("50 132"), std::string::npos) << out;
    EXPECT_NE(out.find("got-hello"), std::string::npos) << out;
    io.run_for(std::chrono::milliseconds(200));
    EXPECT_TRUE(pty->exited());
    EXPECT_EQ(exit_code, 3);
}

TEST(PtyCommand, HangUpSendsSighupAndDroppingKills) {
    boost::asio::io_context io;
    fs::path mark = fs::temp_directory_path() / ("hangar-pty-" + std::to_string(getpid()));
    fs::remove(mark);
    PtyOptions opts;
    opts.argv = {"/bin/sh", "-c",
                 "trap 'echo hup > " + mark.string() +
                     "; exit 0' HUP; echo ready; while :; do sleep 0.1; done"};
    std::shared_ptr<PtyCommand> pty;
    ASSERT_TRUE(PtyCommand::start(io, opts, pty));
    bool exited = false;
    pty->on_exit([&](ExitInfo) { exited = true; });
    EXPECT_NE(read_pty(io, *pty, "ready").find("ready"), std::string::npos);
    pty->hang_up(std::chrono::seconds(5));
    pty.reset();  // the grace timer keeps it until then
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!exited && std::chrono::steady_clock::now() < deadline) {
        io.run_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(exited);
    std::ifstream in(mark);
    std::string got;
    in >> got;
    EXPECT_EQ(got, "hup");
    fs::remove(mark);

    // A command that ignores SIGHUP ends when its PtyCommand goes.
    std::string secs = std::to_string(100000 + getpid());
    opts.argv = {"/bin/sh", "-c", "trap '' HUP; echo ready; exec sleep " + secs};
    ASSERT_TRUE(PtyCommand::start(io, opts, pty));
    read_pty(io, *pty, "ready");
    std::string pids;
    for (const auto& e : fs::directory_iterator("/proc")) {
        std::ifstream cmd(e.path() / "cmdline");
        std::string c((std::istreambuf_iterator<char>(cmd)), std::istreambuf_iterator<char>());
        if (c == "sleep" + std::string(1, '\0') + secs + std::string(1, '\0')) {
            pids = e.path().filename().string();
        }
    }
    ASSERT_FALSE(pids.empty());
    pid_t pid = std::stoi(pids);
    EXPECT_TRUE(alive(pid));
    pty.reset();
    deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (alive(pid) && std::chrono::steady_clock::now() < deadline) {
        io.run_for(std::chrono::milliseconds(20));
    }
    EXPECT_FALSE(alive(pid));
}
