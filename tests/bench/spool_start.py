#!/usr/bin/python3
"""Spool start latency: from writing service/vm/NAME/start in the caller's spool tree to the
machine's `running` event on a WebSocket, against the same start over the unix socket
(POST .../actions/start?wait=false, then the same event). Fake QEMU; the two ways alternate,
N of each (default 20); medians compared (goal: the spool costs <= 5 ms more)."""
import asyncio
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import websockets

from benchlib import FAKE_QEMU, Api, Daemon

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20
NAME = "bench"


async def wait_state(ws, to):
    while True:
        ev = json.loads(await asyncio.wait_for(ws.recv(), 30))
        if ev["type"] == "machine.state" and ev["data"]["to"] == to:
            return ev


async def run(d, api, tree):
    start_file = os.path.join(tree, "service", "vm", NAME, "start")
    url = f"ws://h/v1/events?types=machine.state&machine={NAME}"
    spool, unix = [], []
    async with websockets.unix_connect(d.sock, url) as ws:
        for i in range(N * 2):
            by_file = i % 2 == 0
            t0 = time.perf_counter()
            if by_file:
                with open(start_file, "w"):
                    pass
            else:
                status, body = api.call("POST", f"/v1/machines/{NAME}/actions/start?wait=false")
                assert status == 202, body
            await wait_state(ws, "running")
            (spool if by_file else unix).append(time.perf_counter() - t0)
            status, m = api.call("POST", f"/v1/machines/{NAME}/actions/kill")
            assert status == 200 and m["state"] == "stopped", m
            await wait_state(ws, "stopped")
    return spool, unix


def main():
    base = tempfile.mkdtemp(prefix="hangar-bench-spool-")
    os.chmod(base, 0o755)
    tree = os.path.join(base, str(os.getuid()))
    os.makedirs(os.path.join(tree, "service", "vm", NAME))
    d = Daemon(qemu=FAKE_QEMU, extra=["--spool-dir", base])
    d.start()
    api = Api(d.sock)
    try:
        status, m = api.call("POST", "/v1/machines", {"name": NAME})
        assert status == 201, m
        spool, unix = asyncio.run(run(d, api, tree))
        with open(os.path.join(tree, "logs", "vm", f"{NAME}.log")) as f:
            taken = sum(1 for line in f if '"spool.taken"' in line)
        assert taken == N, f"{taken} starts taken from files, expected {N}"
    finally:
        d.kill()
        shutil.rmtree(base, ignore_errors=True)
    ms, mu = statistics.median(spool) * 1000, statistics.median(unix) * 1000
    print(f"start file written -> running event: median {ms:.2f} ms, "
          f"min {min(spool) * 1000:.2f} ms (n={N})")
    print(f"POST start?wait=false -> running event: median {mu:.2f} ms, "
          f"min {min(unix) * 1000:.2f} ms (n={N})")
    print(f"spool overhead: {ms - mu:+.2f} ms (goal <= 5 ms)")


if __name__ == "__main__":
    main()
