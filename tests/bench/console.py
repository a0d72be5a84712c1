#!/usr/bin/python3
"""Serial console figures with the built-in guest under TCG.

1. Keystroke -> echo through hangard's console WebSocket, against the floor: the same QEMU
   argv run by hand with a client straight on its console socket. p50/p99 of N keystrokes.
2. 100 viewers while the guest prints as fast as it can: the guest's output rate with one
   viewer and with 100, each viewer's lag behind the first at the end marker (p50/p99), and
   hangard's RSS.

usage: console.py [N_KEYSTROKES] [VIEWERS]"""
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import websockets

from benchlib import Api, Daemon, pct

N = int(sys.argv[1]) if len(sys.argv) > 1 else 200
VIEWERS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
MARKER = b"HANGAR-GUEST-READY"
FLOOD = 1_000_000


async def keystrokes(send, recv_until):
    """Times `N` round trips of one key and its echo; each key is erased again."""
    times = []
    for _ in range(N):
        t0 = time.perf_counter()
        await send(b"a")
        await recv_until(b"a")
        times.append(time.perf_counter() - t0)
        await send(b"\x7f")
        await recv_until(b"\x08")
    return times


def bare_argv(argv, d):
    out = list(argv)
    i = out.index("-pidfile")
    out[i + 1] = os.path.join(d, "q.pid")
    j = out.index("-chardev", out.index("-mon"))
    out[j + 1] = f"socket,id=serial0,path={d}/c.sock,server=on,wait=off"
    return out


async def floor(argv):
    d = tempfile.mkdtemp()
    qmp_path = os.path.join(d, "q.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(qmp_path)
    srv.listen(1)
    qmp = socket.socket(socket.AF_UNIX)
    qmp.connect(qmp_path)
    argv = [a.replace("fd=3", f"fd={srv.fileno()}") for a in bare_argv(argv, d)]
    p = subprocess.Popen(argv, pass_fds=[srv.fileno()], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    srv.close()
    f = qmp.makefile("rwb")
    f.readline()
    for c in (b'{"execute":"qmp_capabilities"}\n', b'{"execute":"cont"}\n'):
        f.write(c)
        f.flush()
        f.readline()
    while not os.path.exists(f"{d}/c.sock"):
        await asyncio.sleep(0.01)
    reader, writer = await asyncio.open_unix_connection(f"{d}/c.sock")
    buf = bytearray()

    async def recv_until(b):
        nonlocal buf
        while b not in buf:
            buf = buf[-len(b):] + await reader.read(65536)
        buf = buf[buf.index(b) + len(b):]

    async def send(b):
        writer.write(b)
        await writer.drain()

    await asyncio.wait_for(recv_until(MARKER), 120)
    await asyncio.sleep(1.0)
    await send(b"\n")
    await recv_until(b"# ")
    times = await keystrokes(send, recv_until)
    writer.close()
    p.kill()
    p.wait()
    f.close()
    qmp.close()
    return times


class Viewer:
    def __init__(self, ws):
        self.ws = ws
        self.buf = bytearray()

    async def recv_until(self, b):
        while b not in self.buf:
            msg = await self.ws.recv()
            if isinstance(msg, bytes):
                # Only a tail that could hold the start of `b` is kept.
                self.buf = self.buf[-len(b):] + msg
        self.buf = self.buf[self.buf.index(b) + len(b):]

    async def send(self, b):
        await self.ws.send(b)


async def open_viewer(sock, name, query=""):
    ws = await websockets.unix_connect(sock, f"ws://h/v1/machines/{name}/console{query}",
                                       max_size=None, ping_interval=None)
    json.loads(await ws.recv())
    return Viewer(ws)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


CPU = {}


async def flood(sock, name, viewers, pid=None):
    """Guest prints FLOOD bytes; returns the guest's rate and each viewer's lag."""
    main = viewers[0]
    tag = f"done-{time.monotonic_ns()}"
    arrival = {}

    async def watch(i, v):
        await v.recv_until(f"{tag}-1\r\n".encode())
        arrival[i] = time.perf_counter()

    c0 = cpu_s(pid), time.process_time()
    t0 = time.perf_counter()
    await main.send(f"yes hangar-flood-line | head -c {FLOOD}; echo {tag}-$((1))\n".encode())
    await asyncio.gather(*(watch(i, v) for i, v in enumerate(viewers)))
    first = min(arrival.values())
    lags = [arrival[i] - first for i in arrival]
    CPU[len(viewers)] = (cpu_s(pid) - c0[0], time.process_time() - c0[1], first - t0)
    return FLOOD / (first - t0), lags


async def run_hangar(d):
    api = Api(d.sock)
    api.call("POST", "/v1/machines", {"name": "bench"})
    status, m = api.call("POST", "/v1/machines/bench/actions/start")
    assert status == 200, m
    with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
        argv = [a.decode() for a in f.read().split(b"\0") if a]
    names = {"/dev/fd/4": m["boot"]["kernel"], "/dev/fd/5": m["boot"]["initrd"]}
    argv = [names.get(a, a) for a in argv]
    v = await open_viewer(d.sock, "bench", "?from=0")
    await asyncio.wait_for(v.recv_until(MARKER), 120)
    await asyncio.sleep(1.0)
    await v.send(b"\n")
    await v.recv_until(b"# ")
    times = await keystrokes(v.send, v.recv_until)

    rate1, _ = await flood(d.sock, "bench", [v], d.pid)
    rss_before = d.rss_kib()
    many = [v] + [await open_viewer(d.sock, "bench") for _ in range(VIEWERS - 1)]
    for w in many[1:]:
        w.buf.clear()
    rate_n, lags = await flood(d.sock, "bench", many, d.pid)
    rss = d.rss_kib()
    for w in many:
        await w.ws.close()
    api.call("POST", "/v1/machines/bench/actions/kill")  # hangard leaves machines running
    return times, argv, rate1, rate_n, lags, rss_before, rss


def ms(values, p):
    return pct(values, p) * 1000


def main():
    d = Daemon(extra=["--console-viewers", str(max(VIEWERS, 1))])
    d.start()
    try:
        times, argv, rate1, rate_n, lags, rss0, rss = asyncio.run(run_hangar(d))
    finally:
        d.kill()
    bare = asyncio.run(floor(argv))
    print(f"keystroke -> echo, n={N}:")
    print(f"  through hangard's WebSocket: p50 {ms(times, 50):.2f} ms, p99 {ms(times, 99):.2f} ms")
    print(f"  straight to QEMU's socket:   p50 {ms(bare, 50):.2f} ms, p99 {ms(bare, 99):.2f} ms")
    print(f"  overhead p50 {ms(times, 50) - ms(bare, 50):.2f} ms (goal <= 0.3 ms)")
    print(f"guest output, {FLOOD} bytes:")
    print(f"  1 viewer:      {rate1 / 1024:.0f} KiB/s")
    print(f"  {VIEWERS} viewers:   {rate_n / 1024:.0f} KiB/s "
          f"({(1 - rate_n / rate1) * 100:+.1f} % cost; goal < 5 %)")
    print(f"  viewer lag behind the first at the end: p50 {ms(lags, 50):.2f} ms, "
          f"p99 {ms(lags, 99):.2f} ms")
    for n, (hangard_cpu, client_cpu, wall) in sorted(CPU.items()):
        print(f"  {n} viewer(s): {wall:.1f} s; CPU hangard {hangard_cpu:.2f} s, "
              f"the viewers' client {client_cpu:.2f} s")
    print(f"hangard RSS: {rss0} KiB with 1 viewer, {rss} KiB with {VIEWERS} "
          f"({(rss - rss0) / max(1, VIEWERS - 1):.0f} KiB per viewer)")


if __name__ == "__main__":
    main()
