"""hangarctl console and exec -it: on a pty (raw mode, Ctrl-] leaves, window size at the start
and on SIGWINCH, the terminal restored on every way out), with piped input, and the server's
close reasons. Against a fake WebSocket server that records what the CLI sends, and against
the real hangard with the built-in guest (its busybox shell is on ttyS0), and exec -it in a
busybox container (skipped while the daemon has no interactive exec)."""
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import tempfile
import termios
import threading
import time
import unittest

import harness
from fake_console_server import FakeServer
from harness import DaemonTest, wait_for
from imageserver import ImageServer
from realsystemd import SystemdDaemonTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")


class PtyProcess:
    """hangarctl with stdin, stdout and stderr on a pty that is its controlling terminal."""

    def __init__(self, args, cols=100, rows=30):
        self.master, self.slave = os.openpty()
        self.set_size(cols, rows)
        self.cooked = termios.tcgetattr(self.slave)

        def controlling_tty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)

        self.proc = subprocess.Popen(args, stdin=self.slave, stdout=self.slave,
                                     stderr=self.slave, preexec_fn=controlling_tty)
        self.output = b""

    def set_size(self, cols, rows):
        fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def write(self, data):
        os.write(self.master, data)

    def read_until(self, needle, timeout=30):
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} not seen in {self.output[-2000:]!r}")
            r, _, _ = select.select([self.master], [], [], left)
            if r:
                try:
                    self.output += os.read(self.master, 65536)
                except OSError:
                    time.sleep(0.05)
        return self.output

    def raw(self):
        return not (termios.tcgetattr(self.slave)[3] & termios.ICANON)

    def wait(self, timeout=10):
        rc = self.proc.wait(timeout)
        try:
            while select.select([self.master], [], [], 0.1)[0]:
                self.output += os.read(self.master, 65536)
        except OSError:
            pass
        return rc

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        os.close(self.master)
        os.close(self.slave)


class ConsoleCliFake(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="hangar-console-cli-")
        self.sock = os.path.join(self.dir, "fake.sock")
        self.fake = FakeServer(self.sock)

    def tearDown(self):
        self.fake.close()
        os.rmdir(self.dir)

    def ctl(self, *args):
        return [HANGARCTL, "--socket", self.sock] + list(args)

    def pty(self, *args, **kw):
        p = PtyProcess(self.ctl(*args), **kw)
        self.addCleanup(p.close)
        return p

    def test_raw_mode_resize_and_escape(self):
        p = self.pty("console", "web")
        out = p.read_until(b"boot line\r\n")
        self.assertIn(b"[hangar: console of web from byte 0 (11 so far); Ctrl-] leaves]", out)
        p.read_until(b"[hangar: web: running (qmp:RESUME)]")
        self.assertTrue(p.raw())
        self.fake.wait(lambda k, v: k == "text" and v == {"type": "resize", "cols": 100,
                                                          "rows": 30})
        # Raw: every byte goes at once, Ctrl-C included (no line editing, no SIGINT).
        p.write(b"ab\x03")
        self.fake.wait(lambda k, v: k == "binary" and b"ab\x03" in v)
        self.assertIsNone(p.proc.poll())
        p.set_size(132, 43)  # the kernel sends SIGWINCH to the pty's foreground group
        self.fake.wait(lambda k, v: k == "text" and v == {"type": "resize", "cols": 132,
                                                          "rows": 43})
        p.write(b"xy\x1dnot sent")
        self.assertEqual(p.wait(), 0)
        self.fake.wait(lambda k, v: k == "close" and v == 1000)
        self.assertFalse(p.raw(), "the terminal is left in raw mode")
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)
        sent = b"".join(self.fake.items("binary"))
        self.assertEqual(sent, b"ab\x03xy")
        self.assertIn(b"[hangar: left the console of web]", p.output)

    def test_escape_while_the_server_does_not_read(self):
        p = self.pty("console", "stall")
        p.read_until(b"Ctrl-] leaves]")
        # More than the socket holds, then Ctrl-]: the terminal is still read, so it is seen.
        threading.Thread(target=p.write, args=(b"a" * 700_000 + b"\x1d",), daemon=True).start()
        self.assertEqual(p.wait(timeout=20), 0)
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)

    def test_signal_restores_the_terminal(self):
        p = self.pty("console", "web")
        p.read_until(b"boot line")
        self.assertTrue(p.raw())
        p.proc.send_signal(signal.SIGTERM)
        self.assertEqual(p.wait(), 128 + signal.SIGTERM)
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)
        self.fake.wait(lambda k, v: k == "close" and v == 1000)

    def test_close_reason_and_refusal(self):
        p = self.pty("console", "full")
        self.assertEqual(p.wait(), 1)
        self.assertIn(b"hangarctl: the console was closed: too many viewers (max 2) (code 1008)",
                      p.output)
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)
        out = subprocess.run(self.ctl("console", "nope"), capture_output=True, timeout=10,
                             stdin=subprocess.DEVNULL)
        self.assertEqual((out.returncode, out.stderr), (1, b"hangarctl: no machine named nope\n"))
        # A lost connection says where the stream stopped, for --from.
        out = subprocess.run(self.ctl("console", "drop"), capture_output=True, timeout=10,
                             stdin=subprocess.DEVNULL)
        self.assertEqual((out.returncode, out.stdout), (1, b"hello"))
        self.assertRegex(out.stderr, rb"^hangarctl: connection to hangard lost: .* "
                                     rb"\(--from 10 goes on where it stopped\)\n$")
        out = subprocess.run(self.ctl("console", "web", "--from", "-1"), capture_output=True)
        self.assertEqual(out.returncode, 2)

    def test_piped_input_and_options(self):
        t0 = time.monotonic()
        out = subprocess.run(self.ctl("console", "web", "--from", "7", "--readonly"),
                             input=b"typed\n", capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        # stdout is not a terminal: the bytes alone, no notes, no resize.
        self.assertEqual(out.stdout, b"boot line\r\n")
        self.assertEqual(out.stderr, b"")
        self.assertLess(time.monotonic() - t0, 5)
        method, target, headers, _ = self.fake.items("request")[0]
        self.assertEqual((method, target), ("GET", "/v1/machines/web/console?from=7&readonly=true"))
        self.assertEqual(self.fake.items("binary"), [])  # read-only: nothing typed is sent
        self.assertEqual(self.fake.items("text"), [])

        out = subprocess.run(self.ctl("console", "web"), input=b"echo hi\n",
                             capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout, b"boot line\r\necho hi\n")  # the fake echoes input
        # stdin from /dev/null (epoll cannot wait on it) ends at once, then drains.
        out = subprocess.run(self.ctl("console", "web"), stdin=subprocess.DEVNULL,
                             capture_output=True, timeout=20)
        self.assertEqual((out.returncode, out.stdout), (0, b"boot line\r\n"))

    def test_exec_interactive(self):
        p = self.pty("exec", "-it", "ct", "--env", "A=1", "--", "sh", "-l", cols=90, rows=20)
        p.read_until(b"$ ")
        method, target, _, body = self.fake.items("request")[0]
        self.assertEqual((method, target), ("POST", "/v1/machines/ct/exec"))
        self.assertEqual(json.loads(body), {"interactive": True, "tty": {"cols": 90, "rows": 20},
                                            "command": ["sh", "-l"], "env": {"A": "1"}})
        self.assertEqual(self.fake.items("request")[1][1], "/v1/machines/ct/exec/s1")
        self.fake.wait(lambda k, v: k == "text" and v == {"type": "resize", "cols": 90,
                                                          "rows": 20})
        self.assertTrue(p.raw())
        p.write(b"exit 3\r")
        self.assertEqual(p.wait(), 3)
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)
        # Piped input: its end does not end the session; the command's exit does.
        out = subprocess.run(self.ctl("exec", "-it", "ct", "--", "sh"), input=b"exit 5\n",
                             capture_output=True, timeout=20)
        self.assertEqual(out.returncode, 5, out.stderr)
        self.assertEqual(out.stdout, b"$ exit 5\n")


MARKER = b"HANGAR-GUEST-READY"


class ConsoleCliReal(DaemonTest):
    """The real hangard and QEMU with the built-in guest: busybox's shell is on ttyS0."""

    def ctl(self, *args, input=b"", timeout=60, expect=0):
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket] + list(args),
                             input=input, capture_output=True, timeout=timeout)
        self.assertEqual(out.returncode, expect, (args, out.stdout[-2000:], out.stderr))
        return out.stdout

    def log(self, name):
        return self.ctl("console-log", name)

    def boot(self, name):
        self.create(name)
        self.daemon.action(name, "start")
        wait_for(lambda: MARKER in self.log(name), 120, "the guest's marker")

    def test_console_of_the_guest(self):
        self.boot("web")
        # Piped input: the shell answers, hangarctl leaves once the console is quiet.
        out = self.ctl("console", "web", input=b"echo $((6*7))\n")
        self.assertRegex(out, rb"(^|\n)42\r?\n", out[-500:])
        # --from 0: the whole recorded stream, boot first, byte for byte the console log.
        before = self.log("web")
        out = self.ctl("console", "web", "--from", "0", "--readonly")
        self.assertTrue(out.startswith(before), (len(out), len(before)))
        self.assertIn(b"Linux version", out[:4096])
        # --readonly: what is typed never reaches the guest.
        out = self.ctl("console", "web", "--readonly", input=b"echo RO$((3+4))X\n")
        self.ctl("console", "web", input=b"echo RW$((3+4))X\n")
        wait_for(lambda: b"RW7X" in self.log("web"), 30, "the writable viewer's echo")
        self.assertNotIn(b"RO7X", self.log("web"))
        self.assertNotIn(b"RO7X", out)
        # Errors of the route come back as the API's message.
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "console", "nope"],
                             capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
        self.assertEqual(out.returncode, 1)
        self.assertIn(b"nope", out.stderr)
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "console", "web",
                              "--from", str(10 ** 12)], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=30)
        self.assertEqual(out.returncode, 1, out)

        # On a terminal: raw mode, the shell's echo, Ctrl-] leaves, the terminal restored.
        p = PtyProcess([HANGARCTL, "--socket", self.daemon.socket, "console", "web"])
        self.addCleanup(p.close)
        p.read_until(b"Ctrl-] leaves]")
        self.assertTrue(p.raw())
        p.write(b"echo PTY$((6*7))\r")
        p.read_until(b"\nPTY42\r\n")
        self.assertIsNone(p.proc.poll())  # the server took the window size
        # Notes on stderr, one line each, while the viewer stays attached.
        self.daemon.action("web", "pause")
        p.read_until(b"[hangar: web: running -> paused (qmp:STOP)]\r\n")
        self.daemon.action("web", "resume")
        p.read_until(b"[hangar: web: paused -> running (qmp:RESUME)]\r\n")
        self.daemon.action("web", "restart", {"reset": True})
        p.read_until(b"[hangar: web: the guest was reset")
        p.read_until(MARKER)  # the new boot's output on the same connection
        p.set_size(120, 40)
        p.write(b"\x1d")
        self.assertEqual(p.wait(), 0)
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)

    def test_reconnect_after_hangard_is_killed(self):
        self.boot("web")
        d = self.daemon
        viewer = subprocess.Popen([HANGARCTL, "--socket", d.socket, "console", "web", "--from",
                                   "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        wait_for(lambda: d.machine("web")["console"]["viewers"], 30, "the viewer")
        d.kill()
        first, err = viewer.communicate(timeout=30)
        self.assertEqual(viewer.returncode, 1, err)
        resume = int(err.split(b"--from ")[1].split()[0])
        self.assertEqual(resume, len(first))
        d.start()  # adopts the running QEMU
        second = self.ctl("console", "web", "--from", str(resume), "--readonly")
        log = self.log("web")
        self.assertEqual(first + second, log[:len(first) + len(second)])

    def test_console_over_https(self):
        self.boot("tls")
        status, t = self.daemon.request("POST", "/v1/tokens", {"name": "ci"})
        self.assertEqual(status, 201, t)
        out = subprocess.run([HANGARCTL, "--url", self.daemon.url, "--token", t["token"],
                              "--insecure", "console", "tls"], input=b"echo $((6*7))\n",
                             capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stdout, rb"(^|\n)42\r?\n")


class ExecItReal(SystemdDaemonTest, DaemonTest):
    """exec -it in a busybox container run by a real systemd and nspawn."""
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

    def test_exec_interactive_in_a_container(self):
        d = self.daemon
        status, body = d.request("POST", "/v1/images?wait=true", {
            "name": "busybox", "source": {"type": "simplestreams", "server": self.server.url,
                                          "alias": "busybox/1.36"}})
        self.assertEqual(status, 201, body)
        self.create("ct", type="container", image="busybox")
        self.assertEqual(d.action("ct", "start")["state"], "running")
        status, body = d.request("POST", "/v1/machines/ct/exec",
                                 {"command": ["true"], "interactive": True})
        if status != 201:
            self.skipTest(f"this hangard has no interactive exec: {body}")
        ctl = [HANGARCTL, "--socket", d.socket]
        p = PtyProcess(ctl + ["exec", "-it", "ct", "--", "sh"], cols=91, rows=27)
        self.addCleanup(p.close)
        p.read_until(b"# ")
        self.assertTrue(p.raw())
        p.write(b"stty size; tty\r")
        p.read_until(b"27 91")
        p.set_size(133, 41)  # SIGWINCH: the new size reaches the pty

        def resized():  # asks again until the resize frame has arrived
            p.write(b"stty size\r")
            try:
                p.read_until(b"41 133", timeout=1)
                return True
            except AssertionError:
                return False
        wait_for(resized, 30, "the new window size inside the container")
        p.write(b"exit 7\r")
        self.assertEqual(p.wait(), 7)
        self.assertEqual(termios.tcgetattr(p.slave), p.cooked)
        # Piped input: the end of stdin ends the input, the shell's exit ends the session.
        out = subprocess.run(ctl + ["exec", "-it", "ct", "--", "sh"],
                             input=b"echo $((6*7)); exit 4\n", capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 4, out)
        self.assertIn(b"42", out.stdout)
        # A stopped container has no pty to give: the API's message, status 1.
        d.action("ct", "kill")
        out = subprocess.run(ctl + ["exec", "-it", "ct", "--", "sh"], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=60)
        self.assertEqual(out.returncode, 1, out)
        self.assertTrue(out.stderr.startswith(b"hangarctl: "), out.stderr)


if __name__ == "__main__":
    harness.main()
