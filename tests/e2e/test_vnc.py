"""A VM's display through hangard: noVNC (npm @novnc/novnc) in Debian's chromium, driven by
npm playwright-core, connects to GET /v1/machines/NAME/vnc over HTTPS with a ticket, shows the
built-in guest's text screen, types into its shell on tty1 (the guest writes what it ran to
the serial console, where the test reads it), while a second viewer watches the same screen;
a reused ticket and a page of a foreign origin are refused. Then the RFB handshake straight
through the WebSocket, the screenshot (a PNG of the size the VNC server reports), and the
refusals: another user's machine, a stopped one, a plain GET, a wrong Origin."""
import asyncio
import functools
import http.server
import json
import os
import shutil
import ssl
import struct
import subprocess
import tempfile
import threading
import zlib

import websockets

import harness
from harness import DaemonTest, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BROWSER_DIR = os.path.join(ROOT, "tests", "e2e", "browser")
CHROMIUM = os.environ.get("HANGAR_CHROMIUM", "/usr/bin/chromium")


def node_modules():
    out = subprocess.run([os.path.join(ROOT, "scripts", "fetch-browser-deps.sh")],
                         capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise AssertionError(f"fetch-browser-deps.sh failed: {out.stderr}")
    return out.stdout.strip()


class PageServer:
    """The test viewer page and noVNC's modules over plain HTTP on loopback (a thread)."""

    def __init__(self, root):
        handler = functools.partial(_QuietHandler, directory=root)
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.origin = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".js": "text/javascript", ".mjs": "text/javascript"}

    def log_message(self, *args):
        pass


def png_size(data):
    """(width, height) from a PNG's IHDR, after checking the signature and the chunk's CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13, (kind, length)
    body = data[16:16 + length]
    (crc,) = struct.unpack(">I", data[16 + length:20 + length])
    assert zlib.crc32(kind + body) == crc, "IHDR CRC"
    assert data.endswith(b"IEND\xaeB`\x82"), "no IEND chunk"
    return struct.unpack(">II", body[:8])


async def rfb_handshake(ws):
    """RFB 3.8 with security type None, shared: the ServerInit's (width, height, name)."""
    buf = b""

    async def need(n):
        nonlocal buf
        while len(buf) < n:
            frame = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(frame, bytes), f"a text frame: {frame!r}"
            buf += frame
        out, buf = buf[:n], buf[n:]
        return out

    version = await need(12)
    assert version.startswith(b"RFB 003."), version
    await ws.send(b"RFB 003.008\n")
    (count,) = await need(1)
    types = await need(count)
    assert 1 in types, types  # None: hangard's route is the access check
    await ws.send(bytes([1]))
    assert await need(4) == b"\0\0\0\0"
    await ws.send(bytes([1]))  # shared
    init = await need(24)
    width, height = struct.unpack(">HH", init[:4])
    (name_len,) = struct.unpack(">I", init[20:24])
    return width, height, (await need(name_len)).decode()


class Vnc(DaemonTest):
    @classmethod
    def setUpClass(cls):
        cls.modules = node_modules()
        if not os.access(CHROMIUM, os.X_OK):
            raise AssertionError(f"{CHROMIUM} is missing (scripts/setup.sh installs chromium)")
        cls.www = tempfile.mkdtemp(prefix="hangar-vnc-www-")
        shutil.copy(os.path.join(BROWSER_DIR, "vnc.html"), cls.www)
        os.symlink(os.path.join(cls.modules, "@novnc", "novnc"), os.path.join(cls.www, "novnc"))
        cls.page = PageServer(cls.www)      # an origin hangard is told to allow
        cls.foreign = PageServer(cls.www)   # one it is not
        cls.extra = ("--allowed-origin", cls.page.origin)

    @classmethod
    def tearDownClass(cls):
        cls.page.close()
        cls.foreign.close()
        shutil.rmtree(cls.www, ignore_errors=True)

    def start_guest(self, name):
        self.create(name)
        self.daemon.action(name, "start")
        log = os.path.join(self.state_dir, "machines", name, "console.log")
        # The shells on ttyS0 and tty1 start together, once the init's rc is done.
        wait_for(lambda: b"built-in shell" in open(log, "rb").read(), 120, "the guest's shell")
        return log

    def ticket(self, name):
        status, t = self.daemon.request("POST", f"/v1/machines/{name}/console/ticket")
        self.assertEqual(status, 200, t)
        self.assertEqual(t["expires_in_s"], 30)
        return t["ticket"]

    def wss(self, name, ticket):
        return (self.daemon.url.replace("https://", "wss://") +
                f"/v1/machines/{name}/vnc?ticket={ticket}")

    def screenshot(self, name, uid=None):
        """(status, content type, body) of GET .../screenshot over the unix socket, as `uid`."""
        out = os.path.join(self.state_dir, "shot.png")
        cmd = ["curl", "-s", "-m", "60", "--unix-socket", self.daemon.socket, "-o", out,
               "-w", "%{http_code} %{content_type}", f"http://h/v1/machines/{name}/screenshot"]
        if uid is not None:
            cmd = ["setpriv", f"--reuid={uid}", "--regid=0", "--clear-groups"] + cmd
            cmd[cmd.index("-o") + 1] = "/dev/null"
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=90)
        code, _, ctype = res.stdout.partition(" ")
        data = open(out, "rb").read() if uid is None else b""
        return int(code), ctype, data

    def test_novnc_in_chromium_two_viewers_keys_and_refusals(self):
        log = self.start_guest("web")
        cfg = {
            "modules": self.modules,
            "chromium": CHROMIUM,
            "hangard": self.daemon.url,
            "page": self.page.origin + "/vnc.html",
            "foreign_page": self.foreign.origin + "/vnc.html",
            "viewers": [self.wss("web", self.ticket("web")), self.wss("web", self.ticket("web"))],
            "foreign": self.wss("web", self.ticket("web")),
            "text": "echo vnc-$((6*7))-typed >/dev/console\n",
        }
        cfg["reused"] = cfg["viewers"][0]
        run = subprocess.run(["node", os.path.join(BROWSER_DIR, "vnc_viewers.mjs"),
                              json.dumps(cfg)], capture_output=True, text=True, timeout=300)
        self.assertEqual(run.returncode, 0, run.stderr[-4000:])
        seen = json.loads(run.stdout.strip().splitlines()[-1])

        self.assertTrue(seen["a"]["connected"], seen)
        self.assertTrue(seen["b"]["connected"], seen)
        # The guest's text screen: 80x25 characters of 9x16 pixels.
        for s in (seen["a_screen"], seen["b_screen"]):
            self.assertEqual((s["width"], s["height"]), (720, 400), s)
            self.assertGreater(s["lit"], 500, s)
        # Both at once: the first viewer was not dropped when the second came.
        self.assertEqual(seen["a_after_b"], {"connected": True, "events": ["connect"]})
        self.assertTrue(seen["b_changed"], "the second viewer did not see the keys typed")
        # The keys reached the guest's shell on tty1, which ran the command.
        wait_for(lambda: b"vnc-42-typed" in open(log, "rb").read(), 30,
                 "the command typed through noVNC to run in the guest")
        # A used ticket, and a page of an origin hangard does not allow, get no display.
        self.assertEqual(seen["reused"], {"connected": False, "events": ["disconnect"]})
        self.assertEqual(seen["foreign"], {"connected": False, "events": ["disconnect"]})

        # The same refusals with their status codes, from a client that shows them.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        async def status_of(url, origin=None):
            try:
                async with websockets.connect(url, ssl=ctx, origin=origin,
                                              subprotocols=["binary"]) as ws:
                    self.assertEqual(ws.subprotocol, "binary")
                    return 101, await rfb_handshake(ws)
            except websockets.exceptions.InvalidStatusCode as e:
                return e.status_code, None

        used = cfg["viewers"][1]
        self.assertEqual(asyncio.run(status_of(used))[0], 401)
        self.assertEqual(asyncio.run(status_of(self.wss("web", self.ticket("web")),
                                               "https://evil.example"))[0], 403)
        self.assertEqual(asyncio.run(status_of(self.wss("web", "hgt_made-up")))[0], 401)
        code, init = asyncio.run(status_of(self.wss("web", self.ticket("web")),
                                           self.page.origin))
        self.assertEqual((code, init[:2]), (101, (720, 400)))
        # The same kind of ticket opens the machine's serial console.

        async def console_note(url):
            async with websockets.connect(url, ssl=ctx) as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 10))

        note = asyncio.run(console_note(self.daemon.url.replace("https://", "wss://") +
                                        f"/v1/machines/web/console?ticket={self.ticket('web')}"))
        self.assertEqual(note["type"], "attached", note)
        # A ticket is for its machine only.
        self.create("other")
        self.assertEqual(asyncio.run(status_of(
            self.daemon.url.replace("https://", "wss://") +
            f"/v1/machines/other/vnc?ticket={self.ticket('web')}"))[0], 401)
        self.assertEqual(self.daemon.machine("web")["state"], "running")

    def test_screenshot_rfb_and_refusals(self):
        self.start_guest("shot")

        async def init_over_unix():
            async with websockets.unix_connect(self.daemon.socket, "ws://h/v1/machines/shot/vnc",
                                               subprotocols=["binary"]) as ws:
                return await rfb_handshake(ws)

        width, height, name = asyncio.run(init_over_unix())
        self.assertEqual((width, height), (720, 400))
        self.assertIn("shot", name)

        code, ctype, data = self.screenshot("shot")
        self.assertEqual((code, ctype), (200, "image/png"), data[:300])
        self.assertEqual(png_size(data), (width, height))
        # No file is left behind in the machine's directory.
        self.assertEqual([f for f in os.listdir(os.path.join(self.state_dir, "machines", "shot"))
                          if f.startswith("screenshot")], [])

        status, body = self.daemon.request("GET", "/v1/machines/shot/vnc")
        self.assertEqual(status, 400, body)
        self.assertIn("WebSocket", body["error"]["message"])
        # Another user's machine does not exist for them.
        self.assertEqual(self.screenshot("shot", uid=1001)[0], 404)
        status, body = self.daemon.request_as(1001, "POST", "/v1/machines/shot/console/ticket")
        self.assertEqual(status, 404, body)
        status, body = self.daemon.request_as(1001, "GET", "/v1/machines/shot/vnc")
        self.assertEqual(status, 404, body)
        self.assertEqual(self.screenshot("nope")[0], 404)

        self.daemon.action("shot", "kill")
        code, _, data = self.screenshot("shot")
        self.assertEqual(code, 409, data)
        self.assertEqual(json.loads(data)["error"]["code"], "invalid_state")
        status, body = self.daemon.request("GET", "/v1/machines/shot/vnc")
        self.assertEqual(status, 409, body)

        async def upgrade_status():
            try:
                async with websockets.unix_connect(self.daemon.socket,
                                                   "ws://h/v1/machines/shot/vnc"):
                    return 101
            except websockets.exceptions.InvalidStatusCode as e:
                return e.status_code

        self.assertEqual(asyncio.run(upgrade_status()), 409)


if __name__ == "__main__":
    harness.main()
