// ws_latency SOCKET SUBSCRIBERS EVENTS SINCE: opens SUBSCRIBERS WebSockets to hangard's
// GET /v1/events?since=SINCE&types=machine.state over its unix socket and, on one epoll thread,
// takes the wall-clock time at which each frame is read, minus the frame's "time" (stamped by
// hangard when it handled the QMP event). Prints "ready" once every handshake is done, then,
// after EVENTS frames per subscriber, one JSON line with the latency percentiles in µs.
// A plain client (no Beast, no allocation per frame) so that its own cost stays out of the
// figure as far as possible.
//
// ws_latency --floor SUBSCRIBERS EVENTS INTERVAL_US: the same reader against a bare writer
// thread that stamps an event-sized frame and writes it to SUBSCRIBERS socketpairs, one write
// each, two events every INTERVAL_US: what this machine's kernel alone costs for the same
// fan-out under the same load.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace {

[[noreturn]] void die(const char* what) {
    perror(what);
    exit(1);
}

int64_t now_us() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return int64_t(ts.tv_sec) * 1000000 + ts.tv_nsec / 1000;
}

// "2026-11-23T10:00:00.123456Z" → µs since the epoch; -1 when malformed.
int64_t parse_time(std::string_view s) {
    if (s.size() < 27 || s[4] != '-' || s[10] != 'T' || s[19] != '.' || s[26] != 'Z') {
        return -1;
    }
    auto num = [&](size_t at, size_t len) {
        int v = 0;
        for (size_t i = at; i < at + len; ++i) {
            v = v * 10 + (s[i] - '0');
        }
        return v;
    };
    tm t{};
    t.tm_year = num(0, 4) - 1900;
    t.tm_mon = num(5, 2) - 1;
    t.tm_mday = num(8, 2);
    t.tm_hour = num(11, 2);
    t.tm_min = num(14, 2);
    t.tm_sec = num(17, 2);
    return int64_t(timegm(&t)) * 1000000 + num(20, 6);
}

struct Conn {
    int fd = -1;
    std::string buf;
    bool upgraded = false;
    long frames = 0;
};

int connect_unix(const char* path) {
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (fd < 0 || connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) {
        die("connect");
    }
    return fd;
}

}  // namespace

// The floor's writer: frames shaped like hangard's machine.state events.
void floor_writer(std::vector<int> fds, long events, long interval_us) {
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    for (long e = 0; e < events; ++e) {
        timespec ts{};
        clock_gettime(CLOCK_REALTIME, &ts);
        tm t{};
        gmtime_r(&ts.tv_sec, &t);
        char stamp[40];
        strftime(stamp, sizeof stamp, "%Y-%m-%dT%H:%M:%S", &t);
        char payload[256];
        int n = snprintf(payload, sizeof payload,
                         "{\"seq\":%ld,\"time\":\"%s.%06ldZ\",\"type\":\"machine.state\","
                         "\"machine\":\"src\",\"data\":{\"from\":\"running\",\"to\":"
                         "\"paused\",\"reason\":\"qmp:STOP\"}}",
                         e + 1, stamp, ts.tv_nsec / 1000);
        unsigned char frame[260] = {0x81, 126, static_cast<unsigned char>(n >> 8),
                                    static_cast<unsigned char>(n & 0xff)};
        memcpy(frame + 4, payload, size_t(n));
        for (int fd : fds) {
            if (write(fd, frame, size_t(n) + 4) != n + 4) {
                die("floor write");
            }
        }
        if (e % 2 == 1) {  // events come in pairs (STOP, RESUME), as from fake QEMU
            std::this_thread::sleep_for(std::chrono::microseconds(interval_us));
        }
    }
}

int main(int argc, char** argv) {
    bool floor = argc == 5 && std::string_view(argv[1]) == "--floor";
    if (argc != 5) {
        fprintf(stderr,
                "usage: ws_latency SOCKET SUBSCRIBERS EVENTS SINCE\n"
                "       ws_latency --floor SUBSCRIBERS EVENTS INTERVAL_US\n");
        return 2;
    }
    const char* path = argv[1];
    int subs = atoi(argv[2]);
    long events = atol(argv[3]);
    std::string since = argv[4];
    std::vector<Conn> conns(subs);
    std::vector<int64_t> lat;
    lat.reserve(size_t(subs) * size_t(events));
    int ep = epoll_create1(EPOLL_CLOEXEC);
    std::thread writer;
    if (floor) {
        std::vector<int> out;
        for (int i = 0; i < subs; ++i) {
            int sv[2];
            if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0) {
                die("socketpair");
            }
            conns[i].fd = sv[0];
            conns[i].upgraded = true;
            out.push_back(sv[1]);
            epoll_event ev{};
            ev.events = EPOLLIN;
            ev.data.u32 = uint32_t(i);
            epoll_ctl(ep, EPOLL_CTL_ADD, sv[0], &ev);
        }
        writer = std::thread(floor_writer, out, events, atol(argv[4]));
    }
    std::string req = "GET /v1/events?since=" + since +
                      "&types=machine.state HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n";
    for (int i = 0; i < (floor ? 0 : subs); ++i) {
        conns[i].fd = connect_unix(path);
        if (write(conns[i].fd, req.data(), req.size()) != ssize_t(req.size())) {
            die("write");
        }
        epoll_event ev{};
        ev.events = EPOLLIN;
        ev.data.u32 = uint32_t(i);
        epoll_ctl(ep, EPOLL_CTL_ADD, conns[i].fd, &ev);
    }
    int upgraded = 0, done = 0;
    long bad = 0;
    char chunk[1 << 16];
    epoll_event evs[256];
    while (done < subs) {
        // Signals to fake QEMU can merge, so fewer events than asked may come: once frames
        // have flowed, 2 s of silence ends the run.
        int n = epoll_wait(ep, evs, 256, lat.empty() ? 60000 : 2000);
        if (n <= 0 && !lat.empty()) {
            break;
        }
        if (n <= 0) {
            fprintf(stderr, "ws_latency: no data for 60 s (%d of %d subscribers upgraded)\n",
                    upgraded, subs);
            return 1;
        }
        for (int k = 0; k < n; ++k) {
            Conn& c = conns[evs[k].data.u32];
            ssize_t r = read(c.fd, chunk, sizeof chunk);
            int64_t t = now_us();
            if (r <= 0) {
                fprintf(stderr, "ws_latency: a subscriber was closed after %ld frames\n", c.frames);
                return 1;
            }
            c.buf.append(chunk, size_t(r));
            if (!c.upgraded) {
                size_t end = c.buf.find("\r\n\r\n");
                if (end == std::string::npos) {
                    continue;
                }
                if (c.buf.compare(0, 12, "HTTP/1.1 101") != 0) {
                    fprintf(stderr, "ws_latency: upgrade refused: %.80s\n", c.buf.c_str());
                    return 1;
                }
                c.upgraded = true;
                c.buf.erase(0, end + 4);
                if (++upgraded == subs) {
                    printf("ready\n");
                    fflush(stdout);
                }
            }
            size_t pos = 0;
            while (c.buf.size() - pos >= 2) {
                auto* p = reinterpret_cast<const unsigned char*>(c.buf.data() + pos);
                size_t avail = c.buf.size() - pos, hdr = 2;
                uint64_t len = p[1] & 0x7f;
                if (len == 126) {
                    hdr = 4;
                    if (avail < hdr) {
                        break;
                    }
                    len = (uint64_t(p[2]) << 8) | p[3];
                } else if (len == 127) {
                    hdr = 10;
                    if (avail < hdr) {
                        break;
                    }
                    len = 0;
                    for (int i = 0; i < 8; ++i) {
                        len = (len << 8) | p[2 + i];
                    }
                }
                if (avail < hdr + len) {
                    break;
                }
                std::string_view payload(c.buf.data() + pos + hdr, len);
                pos += hdr + len;
                if ((p[0] & 0x0f) != 1 || c.frames >= events) {
                    continue;  // pings, and frames past the count
                }
                size_t at = payload.find("\"time\":\"");
                int64_t sent =
                    at == std::string_view::npos ? -1 : parse_time(payload.substr(at + 8));
                if (sent < 0) {
                    ++bad;
                    continue;
                }
                lat.push_back(t - sent);
                if (++c.frames == events) {
                    ++done;
                }
            }
            c.buf.erase(0, pos);
        }
    }
    if (writer.joinable()) {
        writer.join();
    }
    std::sort(lat.begin(), lat.end());
    auto pct = [&](double q) {
        return lat[std::min(lat.size() - 1, size_t(q / 100 * lat.size()))];
    };
    printf(
        "{\"receipts\": %zu, \"unparsed\": %ld, \"p50_us\": %ld, \"p90_us\": %ld, "
        "\"p99_us\": %ld, \"max_us\": %ld}\n",
        lat.size(), bad, long(pct(50)), long(pct(90)), long(pct(99)), long(lat.back()));
    return 0;
}
