"""GET /v1/machines/NAME/console: the built-in guest's serial console (its busybox shell is on
ttyS0) for many viewers at once, with replay by byte offset, read-only viewers, reboots and a
kill -9 of hangard in between, and the limits."""
import asyncio
import json
import os
import signal
import time

import websockets
import websockets.exceptions

import harness
from harness import DaemonTest, wait_for

MARKER = "HANGAR-GUEST-READY"


class Viewer:
    """One console WebSocket: bytes in order from `offset`, control notes apart."""

    def __init__(self, ws):
        self.ws = ws
        self.data = bytearray()
        self.notes = []
        self.offset = None
        self.closed = None

    @classmethod
    async def open(cls, sock, name, query=""):
        ws = await websockets.unix_connect(sock, f"ws://hangar/v1/machines/{name}/console{query}",
                                           max_size=None)
        v = cls(ws)
        hello = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert hello["type"] == "attached", hello
        v.hello = hello
        v.offset = hello["offset"]
        return v

    async def pump(self, until, timeout=30):
        """Reads until until(self) holds."""
        async def loop():
            while not until(self):
                msg = await self.ws.recv()
                if isinstance(msg, bytes):
                    self.data += msg
                else:
                    self.notes.append(json.loads(msg))
        await asyncio.wait_for(loop(), timeout)

    def text(self):
        return self.data.decode(errors="replace")

    @property
    def end(self):
        return self.offset + len(self.data)


def run(coro):
    return asyncio.run(coro)


class Console(DaemonTest):
    def boot(self, name):
        self.create(name)
        self.daemon.action(name, "start")
        log = os.path.join(self.state_dir, "machines", name, "console.log")
        def booted():
            if not os.path.exists(log):
                return False
            with open(log, "rb") as f:
                return MARKER.encode() in f.read()
        wait_for(booted, 60, "the guest's marker")
        return log

    def test_viewers_input_replay_readonly_reboot(self):
        d = self.daemon
        log = self.boot("con1")

        async def scenario():
            a = await Viewer.open(d.socket, "con1")
            b = await Viewer.open(d.socket, "con1")
            ro = await Viewer.open(d.socket, "con1", "?readonly=true")
            self.assertTrue(ro.hello["readonly"])
            # The machine JSON lists who is attached.
            m = d.machine("con1")
            self.assertEqual(len(m["console"]["viewers"]), 3, m["console"])

            # The read-only viewer's input goes nowhere.
            await ro.ws.send(b"echo $((1000+337))\n")
            await a.ws.send(b"echo $((6*7))\n")
            for v in (a, b, ro):
                await v.pump(lambda v: "\n42" in v.text())
            self.assertNotIn("1337", a.text())
            self.assertTrue(any(n["type"] == "input_refused" for n in ro.notes), ro.notes)

            # A late viewer from offset 0 gets the boot first, then the echo: the same bytes
            # as the file.
            late = await Viewer.open(d.socket, "con1", "?from=0")
            await late.pump(lambda v: "\n42" in v.text())
            self.assertIn(MARKER, late.text())
            with open(log, "rb") as f:
                self.assertEqual(bytes(late.data), f.read()[:len(late.data)])

            # Reconnect with from=: exactly the missing bytes, no gap, no duplicate.
            cut = b.end
            await b.ws.close()
            await a.ws.send(b"echo after-$((2*21))\n")
            await a.pump(lambda v: "after-42" in v.text())
            again = await Viewer.open(d.socket, "con1", f"?from={cut}")
            self.assertEqual(again.offset, cut)
            await again.pump(lambda v: "after-42" in v.text())
            with open(log, "rb") as f:
                whole = f.read()
            self.assertEqual(bytes(b.data) + bytes(again.data), whole[b.offset:again.end])

            # A guest reboot: everyone stays attached and sees the new boot.
            before = a.end
            await a.ws.send(b"reboot\n")
            await a.pump(lambda v: MARKER in v.data[before - v.offset:].decode(errors="replace"),
                         timeout=90)
            await ro.pump(lambda v: MARKER in v.data[before - v.offset:].decode(errors="replace"),
                          timeout=30)
            self.assertTrue(any(n["type"] == "reset" for n in a.notes), a.notes)
            for v in (a, ro, late, again):
                await v.ws.close()

        run(scenario())
        wait_for(lambda: d.machine("con1")["console"]["viewers"] == [], 10, "viewers gone")

        async def events():
            seen = []
            async with websockets.unix_connect(
                    d.socket, "ws://hangar/v1/events?since=0&machine=con1"
                    "&types=console.attached,console.detached") as ws:
                while len(seen) < 10:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 10)))
            return seen
        seen = run(events())
        attached = [e for e in seen if e["type"] == "console.attached"]
        detached = [e for e in seen if e["type"] == "console.detached"]
        self.assertEqual(len(attached), 5)
        self.assertEqual(len(detached), 5)
        self.assertEqual({e["data"]["viewer"] for e in attached},
                         {e["data"]["viewer"] for e in detached})
        self.assertTrue(any(e["data"]["readonly"] for e in attached))

    def test_kill9_daemon_viewer_reconnects_without_loss(self):
        d = self.daemon
        log = self.boot("con2")

        async def first():
            v = await Viewer.open(d.socket, "con2")
            await v.ws.send(b"i=0; while [ $i -lt 100000 ]; do echo tick-$i; i=$((i+1)); "
                            b"sleep 0.1; done\n")
            try:
                await v.pump(lambda v: "tick-5\r\n" in v.text())
            except asyncio.TimeoutError:
                self.fail(f"no ticks: {v.text()!r}")
            return v

        v = run(first())
        cut = v.end
        d.kill(signal.SIGKILL)
        time.sleep(1.5)  # the guest goes on printing while nobody reads
        d.start()

        async def second():
            w = await Viewer.open(d.socket, "con2", f"?from={cut}")
            self.assertEqual(w.offset, cut)
            await w.pump(lambda w: w.end > os.path.getsize(log) - 64 and "tick-30\r\n" in w.text(),
                         timeout=30)
            snapshot = bytes(w.data)
            # Input reaches the guest again through the adopted QEMU's console socket.
            await w.ws.send(b"\x03")
            await w.ws.send(b"echo adopted-$((3*3))\n")
            await w.pump(lambda w: "\nadopted-9" in w.text(), timeout=30)
            await w.ws.close()
            w.data = bytearray(snapshot)
            return w

        w = run(second())
        with open(log, "rb") as f:
            whole = f.read()
        self.assertEqual(bytes(w.data), whole[cut:w.end])
        text = (bytes(v.data[:cut - v.offset]) + bytes(w.data)).decode(errors="replace")
        ticks = [int(line[5:]) for line in text.splitlines() if line.startswith("tick-")
                 and line[5:].isdigit()]
        # Every tick once, in order, also those printed while hangard was down.
        self.assertEqual(ticks, list(range(ticks[0], ticks[0] + len(ticks))))
        self.assertGreater(len(ticks), 25)

    def test_slow_viewer_is_closed_and_others_lose_nothing(self):
        d = self.daemon
        log = self.boot("con4")

        async def scenario():
            fast = await Viewer.open(d.socket, "con4")
            slow = await Viewer.open(d.socket, "con4")
            await slow.pump(lambda v: True)  # live: caught up once
            start = fast.offset
            # Over a ring's worth (1 MiB) of output while `slow` reads nothing.
            await fast.ws.send(b"yes hangar-flood-line | head -c 1500000; echo flood-$((2*500))\n")
            try:
                await fast.pump(lambda v: b"flood-1000\r\n" in v.data[-200:], timeout=240)
            except asyncio.TimeoutError:
                self.fail(f"{len(fast.data)} bytes, {os.path.getsize(log)} in the file: "
                          f"{bytes(fast.data[-300:])!r}")
            # A viewer that reads nothing cannot read the close frame either: it is cut 2 s
            # later. The reason is in its console.detached event.
            with self.assertRaises(websockets.exceptions.ConnectionClosed):
                await slow.pump(lambda v: False, timeout=30)
            async with websockets.unix_connect(
                    d.socket, "ws://hangar/v1/events?since=0&machine=con4"
                    "&types=console.detached") as ws:
                ev = json.loads(await asyncio.wait_for(ws.recv(), 10))
            self.assertEqual(ev["data"]["viewer"], slow.hello["viewer"])
            self.assertIn("viewer too slow", ev["data"]["reason"])
            self.assertIn("from=", ev["data"]["reason"])
            with open(log, "rb") as f:
                whole = f.read()
            self.assertEqual(bytes(fast.data), whole[start:fast.end])
            self.assertGreater(len(fast.data), 1500000)
            await fast.ws.close()

        run(scenario())
        status, text = d.request("GET", "/v1/metrics")
        self.assertIn("hangar_console_viewers_closed_slow_total 1", text)

    def test_bad_requests(self):
        d = self.daemon
        self.create("con3")
        for query, what in (("?from=-1", "from must be"), ("?from=abc", "from must be"),
                            ("?from=999999999", "beyond the end"),
                            ("?readonly=maybe", "readonly must be")):
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
                run(Viewer.open(d.socket, "con3", query))
            self.assertEqual(cm.exception.status_code, 400, query)
        with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
            run(Viewer.open(d.socket, "nope"))
        self.assertEqual(cm.exception.status_code, 404)
        # Another user's machine is not found either.
        status, body = d.request_as(4242, "GET", "/v1/machines/con3/console")
        self.assertEqual(status, 404, body)
        status, body = d.request("GET", "/v1/machines/con3/console")
        self.assertEqual(status, 400)
        self.assertIn("WebSocket", body["error"]["message"])

        async def abuse():
            v = await Viewer.open(d.socket, "con3", "?from=0")
            await v.ws.send("{not json")
            with self.assertRaises(websockets.exceptions.ConnectionClosed) as cm:
                await v.pump(lambda v: False, timeout=5)
            self.assertEqual(cm.exception.code, 1008)
            self.assertIn("bad control message", cm.exception.reason)
            v = await Viewer.open(d.socket, "con3", "?from=0")
            await v.ws.send(b"x" * (65 * 1024))
            with self.assertRaises(websockets.exceptions.ConnectionClosed) as cm:
                await v.pump(lambda v: False, timeout=5)
            self.assertEqual(cm.exception.code, 1009)
            # The cap on viewers: the 65th is refused with a reason; the others stay.
            many = [await Viewer.open(d.socket, "con3") for _ in range(64)]
            with self.assertRaises(websockets.exceptions.InvalidStatusCode) as cm:
                await Viewer.open(d.socket, "con3")
            self.assertEqual(cm.exception.status_code, 503)
            await many[0].ws.send(json.dumps({"type": "resize", "cols": 100, "rows": 30}))
            for v in many:
                await v.ws.close()

        run(abuse())
        self.assertEqual(d.request("GET", "/v1/machines/con3")[0], 200)


if __name__ == "__main__":
    harness.main()
