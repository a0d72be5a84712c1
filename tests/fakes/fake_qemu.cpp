// A stand-in for qemu-system-x86_64 that speaks just enough QMP for hangard, for fault
// injection and for scale benchmarks. It takes the argv hangard builds (-chardev
// socket,id=qmp,fd=N / -pidfile / -name guest=NAME / -S) and behaves by the name's prefix:
//   nogreet-*  accepts the QMP connection and never greets
//   stall-*    never answers "stop" (pause)
//   garbage-*  answers "stop" with a line that is not JSON
//   endless-*  answers "stop" with an endless line
//   exit-*     prints an error and exits 1 at once
//   diecont-*  on "cont" sends RESUME, then is killed (SIGKILL) before it answers
//   anything else: a well-behaved QEMU (guest powers off 50 ms after system_powerdown)
// SIGUSR1 makes it emit $FAKE_QEMU_FLOOD (default 100) STOP/RESUME event pairs.
#include <poll.h>
#include <signal.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {
int qmp_listen = -1, client = -1;
std::string name, status = "running";

bool send_all(const std::string& s) {
    size_t off = 0;
    while (off < s.size()) {
        ssize_t n = write(client, s.data() + off, s.size() - off);
        if (n <= 0) {
            return false;
        }
        off += static_cast<size_t>(n);
    }
    return true;
}

void event(const char* ev, const char* data = nullptr) {
    std::string s = "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"";
    s += ev;
    s += "\"";
    if (data) {
        s += ", \"data\": ";
        s += data;
    }
    s += ", \"unknown-key\": [1, 2]}\r\n";
    send_all(s);
}

void reply(const std::string& id, const std::string& ret) {
    send_all("{\"return\": " + ret + (id.empty() ? "" : ", \"id\": " + id) + "}\r\n");
}

bool starts(const std::string& prefix) {
    return name.rfind(prefix, 0) == 0;
}

std::string field(const std::string& line, const char* key) {
    std::string k = std::string("\"") + key + "\":";
    size_t p = line.find(k);
    if (p == std::string::npos) {
        return {};
    }
    p += k.size();
    while (p < line.size() && line[p] == ' ') {
        ++p;
    }
    size_t e = p;
    if (line[p] == '"') {
        e = line.find('"', p + 1);
        return line.substr(p + 1, e - p - 1);
    }
    while (e < line.size() && line[e] != ',' && line[e] != '}') {
        ++e;
    }
    return line.substr(p, e - p);
}

void handle(const std::string& line) {
    std::string cmd = field(line, "execute"), id = field(line, "id");
    if (cmd == "qmp_capabilities") {
        reply(id, "{}");
    } else if (cmd == "cont") {
        if (starts("diecont-")) {
            event("RESUME");
            raise(SIGKILL);
        }
        reply(id, "{}");
        if (status != "running") {
            status = "running";
            event("RESUME");
        }
    } else if (cmd == "stop") {
        if (starts("stall-")) {
            return;
        }
        if (starts("garbage-")) {
            send_all("this is not json at all\r\n");
            return;
        }
        if (starts("endless-")) {
            std::string chunk(64 * 1024, 'x');
            for (int i = 0; i < 64 && send_all(chunk); ++i) {
            }
            return;
        }
        status = "paused";
        event("STOP");
        reply(id, "{}");
    } else if (cmd == "system_powerdown") {
        reply(id, "{}");
        event("POWERDOWN");
        usleep(50000);
        status = "shutdown";
        event("SHUTDOWN", "{\"guest\": true, \"reason\": \"guest-shutdown\"}");
    } else if (cmd == "system_reset") {
        reply(id, "{}");
        event("RESET", "{\"guest\": false, \"reason\": \"host-qmp-system-reset\"}");
    } else if (cmd == "query-status") {
        reply(id, "{\"status\": \"" + status + "\", \"singlestep\": false, \"running\": " +
                      (status == "running" ? "true" : "false") + "}");
    } else if (cmd == "quit") {
        reply(id, "{}");
        event("SHUTDOWN", "{\"guest\": false, \"reason\": \"host-qmp-quit\"}");
        exit(0);
    } else {
        send_all("{\"error\": {\"class\": \"CommandNotFound\", \"desc\": \"The command " + cmd +
                 " has not been found\"}, \"id\": " + id + "}\r\n");
    }
}

void greet() {
    if (!starts("nogreet-")) {
        send_all(
            "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 0, \"minor\": 2, \"major\": 7}, "
            "\"package\": \"fake\"}, \"capabilities\": [\"oob\"]}}\r\n");
    }
}
}  // namespace

int main(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i], v = i + 1 < argc ? argv[i + 1] : "";
        if (a == "-chardev" && v.find("id=qmp") != std::string::npos) {
            qmp_listen = atoi(v.substr(v.find("fd=") + 3).c_str());
        } else if (a == "-name") {
            name = v.substr(6, v.find(',') - 6);
        } else if (a == "-S") {
            status = "prelaunch";
        } else if (a == "-pidfile") {
            FILE* f = fopen(v.c_str(), "w");
            if (f) {
                fprintf(f, "%d\n", getpid());
                fclose(f);
            }
        }
    }
    if (starts("exit-")) {
        fprintf(stderr, "fake-qemu: -kernel: cannot load kernel (injected failure)\n");
        return 1;
    }
    if (qmp_listen < 0) {
        fprintf(stderr, "fake-qemu: no QMP chardev fd\n");
        return 1;
    }
    signal(SIGPIPE, SIG_IGN);  // as QEMU does: a dropped QMP peer is not fatal
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGUSR1);
    sigprocmask(SIG_BLOCK, &mask, nullptr);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);
    int flood = getenv("FAKE_QEMU_FLOOD") ? atoi(getenv("FAKE_QEMU_FLOOD")) : 100;
    std::string buf;
    for (;;) {
        pollfd fds[2] = {{client >= 0 ? client : qmp_listen, POLLIN, 0}, {sfd, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            continue;
        }
        if (fds[1].revents & POLLIN) {
            signalfd_siginfo si;
            (void)!read(sfd, &si, sizeof si);
            for (int i = 0; client >= 0 && i < flood; ++i) {
                event("STOP");
                event("RESUME");
            }
        }
        if (!(fds[0].revents & (POLLIN | POLLHUP))) {
            continue;
        }
        if (client < 0) {
            client = accept4(qmp_listen, nullptr, nullptr, SOCK_CLOEXEC);
            if (client >= 0) {
                buf.clear();
                greet();
            }
            continue;
        }
        char tmp[4096];
        ssize_t n = read(client, tmp, sizeof tmp);
        if (n <= 0) {
            close(client);
            client = -1;  // hangard went away: wait for the next one
            continue;
        }
        buf.append(tmp, static_cast<size_t>(n));
        size_t nl;
        while ((nl = buf.find('\n')) != std::string::npos) {
            std::string line = buf.substr(0, nl);
            buf.erase(0, nl + 1);
            handle(line);
        }
    }
}
