// libFuzzer target: bytes from QEMU's side of a QMP socket. The real client reads them through
// a socketpair after asking for a greeting and sending two commands, so greeting handling,
// line framing, replies by id, events and the close paths all see the input.
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>

#include <boost/asio/io_context.hpp>

#include "qmp/client.hpp"

using namespace hangar;
using namespace std::chrono_literals;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
        abort();
    }
    {
        boost::asio::io_context io;
        qmp::Client::Socket sock(io);
        sock.assign(boost::asio::local::stream_protocol(), sv[0]);
        qmp::Options opts;
        opts.max_line = 4096;
        opts.handshake_timeout = 1000ms;
        auto client = qmp::Client::create(std::move(sock), opts);
        size_t events = 0;
        client->on_event([&events](std::string_view, simdjson::dom::element msg) {
            std::string_view s;
            (void)msg["data"]["status"].get(s);
            ++events;
        });
        client->on_close([](const std::string&) {});
        client->handshake([&client](const Status& st) {
            if (!st) {
                return;
            }
            for (const char* cmd : {"query-status", "cont"}) {
                client->execute(cmd, {}, 1000ms,
                                [](const Status&, std::string_view r) { (void)r.size(); });
            }
        });
        // The input, then EOF: everything the client does with it happens in run().
        size_t off = 0;
        while (off < size) {
            ssize_t n = write(sv[1], data + off, size - off);
            if (n <= 0) {
                break;
            }
            off += static_cast<size_t>(n);
        }
        close(sv[1]);
        io.run_for(2s);
        client->close("done");
        io.poll();
    }
    return 0;
}
