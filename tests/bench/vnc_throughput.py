#!/usr/bin/python3
"""VNC through hangard's WebSocket (GET /v1/machines/NAME/vnc, HTTPS) next to Debian's
websockify (0.10, TLS with the same certificate) on the same QEMU VNC socket, with the same
client: an RFB client that asks for the next incremental update as soon as one has arrived
(as noVNC does), Raw encoding, while the built-in guest scrolls its text console as fast as it
can (a loop typed into its tty1 shell through VNC). Prints frame updates/s and bytes/s for
each, alternating, ROUNDS times SECONDS each.

usage: tests/bench/vnc_throughput.py [SECONDS] [ROUNDS]"""
import asyncio
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import time

import websockets

from benchlib import Api, Daemon

SECONDS = float(sys.argv[1]) if len(sys.argv) > 1 else 10
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 2
SHIFTED = {"$": 0x34, "(": 0x39, ")": 0x30, "*": 0x38, ">": 0x2e, "|": 0x5c}


class Rfb:
    def __init__(self, ws):
        self.ws, self.buf = ws, b""

    async def need(self, n):
        while len(self.buf) < n:
            self.buf += await self.ws.recv()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    async def handshake(self):
        await self.need(12)
        await self.ws.send(b"RFB 003.008\n")
        (count,) = await self.need(1)
        await self.need(count)
        await self.ws.send(bytes([1]))
        await self.need(4)
        await self.ws.send(bytes([1]))
        init = await self.need(24)
        self.width, self.height = struct.unpack(">HH", init[:4])
        self.bpp = init[4] // 8
        (name_len,) = struct.unpack(">I", init[20:24])
        await self.need(name_len)
        await self.ws.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw

    async def request(self, incremental):
        await self.ws.send(struct.pack(">BBHHHH", 3, incremental, 0, 0, self.width, self.height))

    async def update(self):
        """Reads server messages up to the end of one FramebufferUpdate; its bytes."""
        while True:
            kind = (await self.need(1))[0]
            if kind == 0:
                (rects,) = struct.unpack(">xH", await self.need(3))
                size = 4
                for _ in range(rects):
                    x, y, w, h, enc = struct.unpack(">HHHHi", await self.need(12))
                    assert enc == 0, enc
                    await self.need(w * h * self.bpp)
                    size += 12 + w * h * self.bpp
                return size
            if kind == 2:  # bell
                continue
            if kind == 3:  # cut text
                (n,) = struct.unpack(">3xI", await self.need(7))
                await self.need(n)
                continue
            raise AssertionError(f"RFB message {kind}")

    async def key(self, keysym):
        for down in (1, 0):
            await self.ws.send(struct.pack(">BBxxI", 4, down, keysym))

    async def type(self, text):
        for ch in text:
            if ch == "\n":
                await self.key(0xff0d)
            elif ch in SHIFTED:
                await self.ws.send(struct.pack(">BBxxI", 4, 1, 0xffe1))
                await self.key(ord(ch))
                await self.ws.send(struct.pack(">BBxxI", 4, 0, 0xffe1))
            else:
                await self.key(ord(ch))


def tls_client():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def measure(url):
    async with websockets.connect(url, ssl=tls_client(), subprotocols=["binary"],
                                  max_size=None, compression=None) as ws:
        rfb = Rfb(ws)
        await rfb.handshake()
        await rfb.request(0)
        await rfb.update()
        frames = total = 0
        t0 = time.monotonic()
        while time.monotonic() - t0 < SECONDS:
            await rfb.request(1)
            total += await rfb.update()
            frames += 1
        elapsed = time.monotonic() - t0
        return frames / elapsed, total / elapsed


async def start_scrolling(url):
    async with websockets.connect(url, ssl=tls_client(), subprotocols=["binary"],
                                  max_size=None) as ws:
        rfb = Rfb(ws)
        await rfb.handshake()
        await rfb.type("while true; do echo $RANDOM $RANDOM $RANDOM $RANDOM; done\n")
        await asyncio.sleep(0.5)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def main():
    if not shutil.which("websockify"):
        sys.exit("websockify is missing (apt install websockify)")
    d = Daemon()
    d.start()
    api = Api(d.sock)
    api.call("POST", "/v1/machines", {"name": "vnc"})
    status, m = api.call("POST", "/v1/machines/vnc/actions/start")
    assert status == 200, m
    mdir = os.path.join(d.state_dir, "machines", "vnc")
    deadline = time.monotonic() + 120
    while b"built-in shell" not in open(os.path.join(mdir, "console.log"), "rb").read():
        assert time.monotonic() < deadline, "the guest did not boot"
        time.sleep(0.1)
    status, tok = api.call("POST", "/v1/tokens", {"name": "bench"})
    port = free_port()
    ws_proc = subprocess.Popen(
        ["websockify", f"--unix-target={mdir}/vnc.sock",
         f"--cert={d.state_dir}/tls/cert.pem", f"--key={d.state_dir}/tls/key.pem",
         f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)  # websockify has no readiness signal; it binds within milliseconds

        def hangar_url():
            status, t = api.call("POST", "/v1/machines/vnc/console/ticket")
            return d.url.replace("https://", "wss://") + f"/v1/machines/vnc/vnc?ticket={t['ticket']}"

        asyncio.run(start_scrolling(hangar_url()))
        results = {"hangard": [], "websockify": []}
        for _ in range(ROUNDS):
            results["hangard"].append(asyncio.run(measure(hangar_url())))
            results["websockify"].append(asyncio.run(measure(f"wss://127.0.0.1:{port}/")))
        for name, runs in results.items():
            fps = [r[0] for r in runs]
            mbs = [r[1] / 1e6 for r in runs]
            print(f"{name:10s} updates/s {' '.join(f'{v:6.1f}' for v in fps)}   "
                  f"MB/s {' '.join(f'{v:6.2f}' for v in mbs)}  ({SECONDS:.0f} s each)")
    finally:
        ws_proc.kill()
        ws_proc.wait()
        api.call("POST", "/v1/machines/vnc/actions/kill")
        d.kill()


if __name__ == "__main__":
    main()
