"""A container's console and interactive exec, with real peers: the busybox image from the
loopback image server, run by a real systemd (realsystemd.py) as hangar-NAME.service executing
systemd-nspawn, and a real WebSocket client (python3-websockets) on hangard's unix socket.

The console: what the container's busybox init prints on /dev/console lands in the machine's
console log and in GET .../console; input through that WebSocket reaches the init's shell, and
does again after a kill -9 of hangard (the container kept running). Interactive exec: POST
.../exec {"interactive": true, "tty": {...}} makes a session; its WebSocket is a terminal (a
shell with job control, `stty size` as the client sent it, resize), the exit status comes last;
the session is used once, by its user only, within 30 s; closing the WebSocket hangs the
command up (SIGHUP)."""
import asyncio
import json
import os
import random
import signal
import subprocess
import tempfile
import time

import websockets

import harness
from harness import DaemonTest, wait_for
from imageserver import ImageServer
from realsystemd import SystemdDaemonTest

UPGRADE = ["-H", "Connection: Upgrade", "-H", "Upgrade: websocket", "-H",
           "Sec-WebSocket-Version: 13", "-H", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]


class Terminal:
    """One WebSocket: binary frames gathered into `out`, text frames parsed into `notes`."""

    def __init__(self, ws):
        self.ws, self.out, self.notes = ws, b"", []

    async def until(self, pred, timeout=20, what="output"):
        deadline = time.monotonic() + timeout
        while not pred(self):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.out[-2000:]!r} "
                                     f"{self.notes}")
            try:
                frame = await asyncio.wait_for(self.ws.recv(), left)
            except asyncio.TimeoutError:
                continue
            if isinstance(frame, bytes):
                self.out += frame
            else:
                self.notes.append(json.loads(frame))
        return self

    async def expect(self, needle, timeout=20):
        needle = needle.encode() if isinstance(needle, str) else needle
        return await self.until(lambda t: needle in t.out, timeout, repr(needle))

    async def send(self, data):
        await self.ws.send(data.encode() if isinstance(data, str) else data)


class ContainerConsole(SystemdDaemonTest, DaemonTest):
    qemu = harness.FAKE_QEMU

    def start_peers(self):
        self.server_dir = tempfile.mkdtemp(prefix="hangar-images-")
        self.server = ImageServer(self.server_dir)
        self.server.start()
        self.server.publish()

    def stop_peers(self):
        if getattr(self, "server", None):
            self.server.stop()
            subprocess.run(["rm", "-rf", self.server_dir])

    def more_extra(self):
        return ("--image-ca", self.server.ca)

    def setUp(self):
        super().setUp()
        try:
            status, body = self.daemon.request(
                "POST", "/v1/images?wait=true",
                {"name": "busybox", "source": {"type": "simplestreams",
                                               "server": self.server.url,
                                               "alias": "busybox/1.36"}})
            self.assertEqual(status, 201, body)
        except BaseException:
            self.tearDown()
            raise

    def running_container(self, name):
        self.create(name, type="container", image="busybox")
        m = self.daemon.action(name, "start")
        self.assertEqual(m["state"], "running", m)
        return m

    def session(self, name, command, expect=201, **extra):
        status, body = self.daemon.request("POST", f"/v1/machines/{name}/exec",
                                           {"command": command, "interactive": True, **extra})
        self.assertEqual(status, expect, body)
        return body

    def connect(self, path):
        return websockets.unix_connect(self.daemon.socket, f"ws://hangar{path}",
                                       max_size=None, open_timeout=20, close_timeout=5)

    def upgrade_as(self, uid, path):
        """A WebSocket handshake as another uid (curl under setpriv): the HTTP status."""
        out = subprocess.run(["setpriv", f"--reuid={uid}", "--regid=0", "--clear-groups",
                              "curl", "-s", "-o", "/dev/null", "-m", "10", "-w", "%{http_code}",
                              "--unix-socket", self.daemon.socket, *UPGRADE, f"http://h{path}"],
                             capture_output=True, text=True, timeout=30)
        return int(out.stdout or 0)

    def upgrade_status(self, path):
        out = subprocess.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}", "--unix-socket",
                              self.daemon.socket, *UPGRADE, f"http://h{path}"],
                             capture_output=True, text=True, timeout=30)
        body, _, code = out.stdout.rpartition("\n")
        return int(code or 0), body

    def test_exec_interactive(self):
        self.running_container("tty")
        s = self.session("tty", ["sh"], tty={"cols": 123, "rows": 45})
        self.assertEqual(s["url"], f"/v1/machines/tty/exec/{s['session']}")
        # Only its user: another uid's upgrade is a 404, and does not use it up.
        self.assertEqual(self.upgrade_as(1001, s["url"]), 404)

        async def shell():
            async with self.connect(s["url"]) as ws:
                t = Terminal(ws)
                await t.send("busybox stty size; [ -t 0 ] && echo tty-$((2+3))\n")
                await t.expect("45 123")
                await t.expect("tty-5")
                # The size the client sends next; the shell's foreground job sees it.
                await ws.send(json.dumps({"type": "resize", "cols": 91, "rows": 17}))
                await t.send("busybox stty size\n")
                await t.expect("17 91")
                # A terminal's line discipline: ^C interrupts the foreground job, not the shell.
                await t.send("sleep 30; echo after-$((1+1))-sleep\n")
                await asyncio.sleep(0.5)
                await t.send(b"\x03")
                await t.send("echo still-$((6*7))\n")
                await t.expect("still-42", timeout=10)
                await t.send("exit 7\n")
                await t.until(lambda t: t.notes, what="the exit note")
                await asyncio.wait_for(ws.wait_closed(), 10)
                return t, ws.close_code
        t, code = asyncio.run(shell())
        self.assertEqual(t.notes, [{"type": "exit", "exit_code": 7}])
        self.assertEqual(code, 1000)
        # A shell with its controlling terminal: job control on.
        self.assertNotIn(b"job control turned off", t.out)
        self.assertNotIn(b"after-2-sleep", t.out)
        # Used once: a second upgrade with the same id is refused.
        status, body = self.upgrade_status(s["url"])
        self.assertEqual(status, 404, body)
        self.assertIn("used once", body)

        # A command's status, its output all there before it; a signal's 128+N.
        s = self.session("tty", ["sh", "-c", "i=0; while [ $i -lt 2000 ]; do echo line-$i; "
                                 "i=$((i+1)); done; exit 3"])
        async def output():
            async with self.connect(s["url"]) as ws:
                t = Terminal(ws)
                await t.until(lambda t: t.notes, what="the exit note")
                return t
        t = asyncio.run(output())
        self.assertEqual(t.notes, [{"type": "exit", "exit_code": 3}])
        self.assertEqual(t.out.count(b"line-"), 2000)
        self.assertTrue(t.out.rstrip().endswith(b"line-1999"), t.out[-100:])
        s = self.session("tty", ["sh", "-c", "kill -9 $$"])
        t = asyncio.run(output())
        self.assertEqual(t.notes, [{"type": "exit", "exit_code": 137}])

        # hangard stopping (SIGTERM) ends its interactive execs, waiting or attached, and exits
        # through its destructors.
        arg = str(random.randrange(10**6, 10**7))
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL)
                                 for p in harness.pids_with_argument(arg)])
        self.session("tty", ["sleep", arg])
        s = self.session("tty", ["sh", "-c", f"echo ready; sleep {arg}"])
        async def attached_while_stopping():
            try:
                async with self.connect(s["url"]) as ws:
                    await Terminal(ws).expect("ready")
                    # nsenter and sleep of the waiting one, the attached one's sleep
                    wait_for(lambda: len(harness.pids_with_argument(arg)) == 3, 10, "the sleeps")
                    self.daemon.stop()
            except websockets.exceptions.ConnectionClosed:
                pass  # hangard is gone
        asyncio.run(attached_while_stopping())
        self.assertTrue(self.daemon.log().rstrip().endswith("stopped"), self.daemon.log()[-500:])
        wait_for(lambda: not harness.pids_with_argument(arg), 10, "the execs to end")

    def test_hangup_and_unused_sessions(self):
        self.running_container("hup")
        # Closing the WebSocket hangs the pty up: the command gets SIGHUP.
        s = self.session("hup", ["sh", "-c", "trap 'echo got-hup > /tmp/hup; exit 0' HUP; "
                                 "echo ready; while :; do sleep 1; done"])
        async def close_early():
            async with self.connect(s["url"]) as ws:
                await Terminal(ws).expect("ready")
        asyncio.run(close_early())
        def hup_seen():
            status, r = self.daemon.request("POST", "/v1/machines/hup/exec",
                                            {"command": ["cat", "/tmp/hup"]})
            return r["stdout"] == "got-hup\n"
        wait_for(hup_seen, 10, "the command's SIGHUP")
        # A session nobody connects to ends after 30 s, its command killed.
        arg = str(random.randrange(10**6, 10**7))
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL)
                                 for p in harness.pids_with_argument(arg)])
        s = self.session("hup", ["sleep", arg])
        wait_for(lambda: harness.pids_with_argument(arg), 10, "the session's command")
        time.sleep(25)
        self.assertTrue(harness.pids_with_argument(arg))
        wait_for(lambda: not harness.pids_with_argument(arg), 15, "the unused session to end")
        status, body = self.upgrade_status(s["url"])
        self.assertEqual(status, 404, body)
        self.assertIn("unused for 30 s", self.daemon.log())
        # A deadline, when given, holds an interactive command too.
        s = self.session("hup", ["sleep", "60"], timeout_s=1)
        async def exit_note():
            async with self.connect(s["url"]) as ws:
                return (await Terminal(ws).until(lambda t: t.notes, what="exit")).notes
        self.assertEqual(asyncio.run(exit_note()), [{"type": "exit", "exit_code": 137}])

    def test_bad_input(self):
        self.create("vm1")
        self.create("ct1", type="container", image="busybox")
        for name, extra, code, error in [
                ("ct1", {}, 409, "invalid_state"),  # stopped
                ("vm1", {}, 422, "invalid_spec"),   # exec is for containers
                ("nope", {}, 404, "not_found"),
                ("ct1", {"tty": {"cols": 0, "rows": 24}}, 422, "invalid_spec"),
                ("ct1", {"tty": {"cols": 80, "rows": 24, "x": 1}}, 400, "bad_request"),
                ("ct1", {"tty": [80, 24]}, 400, "bad_request"),
                ("ct1", {"interactive": "yes"}, 400, "bad_request")]:
            status, body = self.daemon.request("POST", f"/v1/machines/{name}/exec",
                                               {"command": ["sh"], "interactive": True, **extra})
            self.assertEqual((status, body["error"]["code"]), (code, error), (name, extra, body))
        status, body = self.daemon.request("POST", "/v1/machines/ct1/exec",
                                           {"command": ["sh"], "tty": {"cols": 80, "rows": 24}})
        self.assertEqual(status, 400, body)
        status, body = self.daemon.request("POST", "/v1/machines/ct1/exec",
                                           {"command": ["sh"], "interactive": True})
        self.assertIn("running", body["error"]["message"])
        self.daemon.action("ct1", "start")
        # Unknown sessions, malformed control messages.
        status, body = self.upgrade_status("/v1/machines/ct1/exec/0123456789abcdef")
        self.assertEqual(status, 404, body)
        s = self.session("ct1", ["sh"])
        async def malformed():
            async with self.connect(s["url"]) as ws:
                await ws.send("{nope")
                await asyncio.wait_for(ws.wait_closed(), 10)
                return ws.close_code, ws.close_reason
        code, reason = asyncio.run(malformed())
        self.assertEqual(code, 1008)
        self.assertIn("malformed", reason)
        self.assertEqual(self.daemon.machine("ct1")["state"], "running")

    def test_console(self):
        """The init's console: its output in the log and the console WebSocket, its input
        from the WebSocket, also after hangard was killed and started again."""
        self.running_container("con")
        path = os.path.join(self.state_dir, "machines", "con", "console.log")
        def log():
            with open(path, "rb") as f:
                return f.read()
        wait_for(lambda: b"Please press Enter" in log(), 20,
                 "busybox init's prompt in the console log")

        async def type_on_console(text, expect):
            async with self.connect("/v1/machines/con/console?from=0") as ws:
                t = Terminal(ws)
                await t.until(lambda t: t.notes, what="the attached note")
                self.assertEqual(t.notes[0]["type"], "attached")
                await t.expect("Please press Enter")  # the init's output, from the start
                await t.send(text)
                await t.expect(expect)
                return t
        # Enter activates busybox init's shell on /dev/console.
        asyncio.run(type_on_console("\n", "/ # "))
        t = asyncio.run(type_on_console("echo console-$((6*7))\n", "console-42"))
        self.assertIn(b"console-42", log())

        async def resize():
            async with self.connect("/v1/machines/con/console") as ws:
                t = Terminal(ws)
                await ws.send(json.dumps({"type": "resize", "cols": 132, "rows": 43}))
                await t.send("busybox stty size\n")
                await t.expect("43 132")
        asyncio.run(resize())

        # kill -9 of hangard: the container runs on; the next hangard takes the input again.
        pid = self.daemon.machine("con")["pid"]
        self.daemon.kill(signal.SIGKILL)
        self.assertTrue(harness.pid_alive(pid))
        self.daemon.start()
        self.assertEqual(self.daemon.machine("con")["pid"], pid)
        asyncio.run(type_on_console("echo back-$((7*8))\n", "back-56"))


if __name__ == "__main__":
    harness.main()
