#!/usr/bin/python3
"""Event latency with S WebSocket subscribers (default 100) over E events (default 10,000):
from the moment hangard handled the QMP event (the event's "time", stamped right after the
QMP message is parsed) to its receipt by each subscriber. The subscribers are one native
epoll client (build/tests/ws_latency) on hangard's unix socket, so the figure is the daemon's
fan-out plus the kernel, not a client runtime. Events come from fake QEMU as STOP/RESUME pairs
(one pair per SIGUSR1, every INTERVAL seconds). Then the memory of 1,000 idle subscribers."""
import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import websockets

from benchlib import BUILD, FAKE_QEMU, Api, Daemon, kill_pids

SUBS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
EVENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
INTERVAL = float(os.environ.get("INTERVAL", "0.002"))  # seconds between pairs
WS_LATENCY = os.path.join(BUILD, "tests", "ws_latency")


def main():
    os.environ["FAKE_QEMU_FLOOD"] = "1"  # one STOP/RESUME pair per SIGUSR1
    d = Daemon(qemu=FAKE_QEMU)
    d.start()
    api = Api(d.sock)
    pids = []
    try:
        api.call("POST", "/v1/machines", {"name": "src"})
        s, m = api.call("POST", "/v1/machines/src/actions/start")
        pids.append(m["pid"])
        s, info = api.call("GET", "/v1")
        client = subprocess.Popen([WS_LATENCY, d.sock, str(SUBS), str(EVENTS),
                                   str(info["revision"])], stdout=subprocess.PIPE, text=True)
        if client.stdout.readline().strip() != "ready":
            raise SystemExit("ws_latency did not connect")
        time.sleep(0.2)
        t0 = time.monotonic()
        for _ in range(EVENTS // 2):
            os.kill(m["pid"], signal.SIGUSR1)
            time.sleep(INTERVAL)
        out = json.loads(client.stdout.readline())
        client.wait(timeout=60)
        elapsed = time.monotonic() - t0
        print(f"{SUBS} subscribers x {EVENTS} events ({out['receipts']:,} receipts) in "
              f"{elapsed:.1f} s, one STOP/RESUME pair every {INTERVAL * 1000:.1f} ms")
        print(f"QMP event handled -> WebSocket receipt: p50 {out['p50_us']} us, "
              f"p90 {out['p90_us']} us, p99 {out['p99_us']} us, max {out['max_us']} us "
              f"(goal p50 <= 200 us, p99 <= 1 ms)")
        # The same reader against a bare C writer: this machine's cost for the same fan-out.
        floor = json.loads(subprocess.run(
            [WS_LATENCY, "--floor", str(SUBS), str(EVENTS), str(int(INTERVAL * 1e6))],
            capture_output=True, text=True, timeout=300, check=True).stdout)
        print(f"floor (one write per subscriber from a bare C loop, same reader): "
              f"p50 {floor['p50_us']} us, p90 {floor['p90_us']} us, p99 {floor['p99_us']} us, "
              f"max {floor['max_us']} us")

        rss0 = d.rss_kib()

        async def hold():
            conns = [await websockets.unix_connect(d.sock, "ws://h/v1/events")
                     for _ in range(1000)]
            await asyncio.sleep(1)
            rss1 = d.rss_kib()
            for c in conns:
                await c.close()
            return rss1

        rss1 = asyncio.run(hold())
        print(f"1000 idle subscribers: RSS {rss0} -> {rss1} KiB = "
              f"{(rss1 - rss0) / 1000:.1f} KiB each (goal <= 16 KiB)")
    finally:
        d.kill()
        kill_pids(pids)


if __name__ == "__main__":
    main()
