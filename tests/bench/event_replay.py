#!/usr/bin/python3
"""Time to replay E events (default 5,000) over the WebSocket with since=0: from the upgrade
request to the last frame, read by a bare socket client (no WebSocket library) and by the
`websockets` library, median of RUNS (default 5) each. Events come from fake QEMU as
STOP/RESUME pairs before anyone subscribes; the ring is --event-ring 10000."""
import asyncio
import json
import os
import signal
import socket
import statistics
import sys
import time

import websockets

from benchlib import FAKE_QEMU, Api, Daemon, kill_pids

EVENTS = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
RUNS = int(os.environ.get("RUNS", "5"))


def raw_replay(sock_path, count):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock_path)
    t0 = time.monotonic()
    s.sendall(b"GET /v1/events?since=0 HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(65536)
    buf = buf.split(b"\r\n\r\n", 1)[1]
    got, pos, last = 0, 0, None
    while got < count:
        while got < count:  # parse the whole frames in buf
            if len(buf) - pos < 2:
                break
            n, hdr = buf[pos + 1] & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, hdr = int.from_bytes(buf[pos + 2:pos + 4], "big"), 4
            if len(buf) - pos < hdr + n:
                break
            if buf[pos] & 0x0F == 1:
                got += 1
                last = buf[pos + hdr:pos + hdr + n]
            pos += hdr + n
        buf, pos = buf[pos:], 0
        if got < count:
            chunk = s.recv(1 << 20)
            if not chunk:
                raise SystemExit(f"closed after {got} events")
            buf += chunk
    elapsed = time.monotonic() - t0
    s.close()
    return elapsed, json.loads(last)["seq"]


async def lib_replay(sock_path, count):
    t0 = time.monotonic()
    async with websockets.unix_connect(sock_path, "ws://h/v1/events?since=0",
                                       max_size=1 << 20) as ws:
        for _ in range(count):
            frame = await ws.recv()
    return time.monotonic() - t0, json.loads(frame)["seq"]


def main():
    os.environ["FAKE_QEMU_FLOOD"] = "500"
    d = Daemon(qemu=FAKE_QEMU, extra=("--event-ring", "10000"))
    d.start()
    api = Api(d.sock)
    pids = []
    try:
        api.call("POST", "/v1/machines", {"name": "src"})
        s, m = api.call("POST", "/v1/machines/src/actions/start")
        pids.append(m["pid"])
        rev = api.call("GET", "/v1")[1]["revision"]
        while rev < EVENTS:
            target = rev + 1000
            os.kill(m["pid"], signal.SIGUSR1)
            while rev < target:
                time.sleep(0.05)
                rev = api.call("GET", "/v1")[1]["revision"]
        raw = [raw_replay(d.sock, EVENTS) for _ in range(RUNS)]
        lib = [asyncio.run(lib_replay(d.sock, EVENTS)) for _ in range(RUNS)]
        assert all(seq == EVENTS for _, seq in raw + lib), (raw, lib)
        for what, runs in (("bare socket client", raw), ("websockets library", lib)):
            t = statistics.median(e for e, _ in runs)
            print(f"replay of {EVENTS:,} events (since=0, {rev:,} events kept) to a {what}: "
                  f"median {t * 1000:.0f} ms = {EVENTS / t:,.0f} events/s "
                  f"(min {min(e for e, _ in runs) * 1000:.0f} ms, {RUNS} runs)")
    finally:
        d.kill()
        kill_pids(pids)


if __name__ == "__main__":
    main()
