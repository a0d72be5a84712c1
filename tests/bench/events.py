#!/usr/bin/python3
"""Event latency with S WebSocket subscribers (default 100): from the event's publication in
hangard (its "time" field, stamped right after the QMP event is parsed) to its receipt by each
subscriber, over E events (default 10,000). Then the memory of 1,000 idle subscribers.
Subscribers are Python asyncio clients spread over 4 processes; their own scheduling is part
of the figure."""
import asyncio
import json
import multiprocessing
import os
import signal
import sys
import time
from datetime import datetime

import websockets

from benchlib import FAKE_QEMU, Api, Daemon, kill_pids, pct

SUBS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
EVENTS = int(sys.argv[2]) if len(sys.argv) > 2 else 10000
PROCS = 4
BURST = int(os.environ.get("BURST", "10"))          # events per burst
INTERVAL = float(os.environ.get("INTERVAL", "0.04"))  # seconds between bursts


def parse_time(s):
    return datetime.strptime(s, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=__import__("datetime").timezone.utc).timestamp()


def subscriber_proc(sock, n, count, start_rev, ready, out):
    async def one():
        lat = []
        async with websockets.unix_connect(sock, f"ws://h/v1/events?since={start_rev}",
                                           max_queue=None) as ws:
            ready.put(1)
            while len(lat) < count:
                try:
                    frame = await ws.recv()
                except websockets.exceptions.ConnectionClosed as e:
                    print(f"subscriber closed after {len(lat)} events: {e}", file=sys.stderr)
                    break
                now = time.time()
                ev = json.loads(frame)
                lat.append(now - parse_time(ev["time"]))
        return lat

    async def many():
        return await asyncio.gather(*[one() for _ in range(n)])

    res = asyncio.run(many())
    out.put([x for r in res for x in r])


async def idle(sock, n):
    conns = [await websockets.unix_connect(sock, "ws://h/v1/events") for _ in range(n)]
    return conns


def main():
    os.environ["FAKE_QEMU_FLOOD"] = str(BURST // 2)  # STOP/RESUME pairs per SIGUSR1
    d = Daemon(qemu=FAKE_QEMU)
    d.start()
    api = Api(d.sock)
    pids = []
    try:
        api.call("POST", "/v1/machines", {"name": "src"})
        s, m = api.call("POST", "/v1/machines/src/actions/start")
        pids.append(m["pid"])
        s, info = api.call("GET", "/v1")
        start_rev = info["revision"]
        ready, out = multiprocessing.Queue(), multiprocessing.Queue()
        procs = [multiprocessing.Process(target=subscriber_proc,
                                         args=(d.sock, SUBS // PROCS, EVENTS, start_rev, ready,
                                               out)) for _ in range(PROCS)]
        for p in procs:
            p.start()
        for _ in range(SUBS // PROCS * PROCS):
            ready.get(timeout=60)
        time.sleep(0.5)
        t0 = time.monotonic()
        for _ in range(EVENTS // BURST):
            os.kill(m["pid"], signal.SIGUSR1)
            time.sleep(INTERVAL)
        lat = []
        for _ in procs:
            lat += out.get(timeout=300)
        for p in procs:
            p.join()
        elapsed = time.monotonic() - t0
        lat_us = [x * 1e6 for x in lat]
        print(f"{SUBS} subscribers x {EVENTS} events ({len(lat):,} receipts) in {elapsed:.1f} s, "
              f"bursts of {BURST} events every {INTERVAL * 1000:.0f} ms")
        print(f"publish -> receipt: p50 {pct(lat_us, 50):.0f} us, p99 {pct(lat_us, 99):.0f} us "
              f"(goal p50 <= 200 us, p99 <= 1 ms)")

        rss0 = d.rss_kib()

        async def hold():
            conns = await idle(d.sock, 1000)
            await asyncio.sleep(1)
            rss1 = d.rss_kib()
            s, text = api.call("GET", "/v1/health")
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
