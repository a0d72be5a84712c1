#!/usr/bin/python3
"""Root's latency under connection floods: GET /v1/machines on a new unix connection each time
(as hangarctl does), first alone, then while TCP idle connections (default 2000) and unix idle
connections of uid 1001 (default 500) are held, then while a child also opens and drops TCP
connections as fast as it can. Prints p50/p99/max per phase and what hangard refused.
Run as root (a second uid is used); loopback only, every loop bounded in count and time."""
import os
import resource
import socket
import sys
import time

from benchlib import FAKE_QEMU, Daemon, pct

TCP = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
UNIX = int(sys.argv[2]) if len(sys.argv) > 2 else 500
REQUESTS = int(os.environ.get("REQUESTS", "500"))
CHURN_SECONDS = 30  # upper bound of the churning child's life
UID = 1001


def get(sock_path, path):
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    s.connect(sock_path)
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    data = b""
    while chunk := s.recv(65536):
        data += chunk
    s.close()
    return int(data.split()[1]), data.partition(b"\r\n\r\n")[2]


def measure(sock_path):
    times = []
    for _ in range(REQUESTS):
        t0 = time.monotonic()
        status, _ = get(sock_path, "/v1/machines")
        times.append(time.monotonic() - t0)
        assert status == 200, status
    return times


def report(name, times):
    ms = [t * 1000 for t in times]
    print(f"{name:<44} p50 {pct(ms, 50):7.3f} ms  p99 {pct(ms, 99):7.3f} ms  "
          f"max {max(ms):7.3f} ms")


def child(fn):
    pid = os.fork()
    if pid == 0:
        try:
            fn()
        finally:
            os._exit(0)
    return pid


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    d = Daemon(qemu=FAKE_QEMU)
    d.start()
    port = int(d.url.rsplit(":", 1)[1])
    pids = []
    tcp = []
    try:
        report("alone", measure(d.sock))

        tcp = [socket.create_connection(("127.0.0.1", port)) for _ in range(TCP)]
        r, w = os.pipe()

        def hold_unix():
            os.setgroups([])
            os.setgid(UID)
            os.setuid(UID)
            held = []
            for _ in range(UNIX):
                s = socket.socket(socket.AF_UNIX)
                s.connect(d.sock)
                held.append(s)
            os.write(w, b"x")
            time.sleep(CHURN_SECONDS * 3)  # killed before that

        pids.append(child(hold_unix))
        os.read(r, 1)
        report(f"{TCP} idle TCP + {UNIX} unix of uid {UID}", measure(d.sock))

        def churn():
            deadline = time.monotonic() + CHURN_SECONDS
            while time.monotonic() < deadline:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                except OSError:
                    pass

        pids.append(child(churn))
        time.sleep(0.5)
        report("... + a child reconnecting to TCP in a loop", measure(d.sock))
        _, metrics = get(d.sock, "/v1/metrics")
        for line in metrics.decode().splitlines():
            if line.startswith("hangar_api_connections_refused_total") and \
                    not line.endswith(" 0"):
                print(line)
    finally:
        for p in pids:
            os.kill(p, 9)
            os.waitpid(p, 0)
        for s in tcp:
            s.close()
        d.kill()


if __name__ == "__main__":
    main()
