"""hangard under a service manager: sd_notify readiness, status, watchdog pings from the
reactor and STOPPING=1 through a NOTIFY_SOCKET the test owns; socket activation through
systemd-socket-activate (LISTEN_FDS) for the unix socket and the HTTPS port; and the units in
units/ pass systemd-analyze verify."""
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import unittest

import harness
from harness import HANGARD, GUEST_DIR, FAKE_QEMU, pid_alive, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def curl_unix(sock, method, path, body=None, timeout=30):
    """Returns (status, parsed JSON answer)."""
    args = ["curl", "-s", "-m", str(timeout), "--unix-socket", sock, "-X", method,
            "-w", "\n%{http_code}", f"http://h{path}"]
    if body is not None:
        args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    out = subprocess.run(args, capture_output=True, text=True, timeout=timeout + 5)
    text, _, code = out.stdout.rpartition("\n")
    return int(code or 0), json.loads(text) if text else None


class Systemd(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="hangar-systemd-")
        self.state = os.path.join(self.dir, "state")
        self.procs = []
        self.qemu_pids = []

    def tearDown(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for pid in self.qemu_pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.dir, ignore_errors=True)

    def notify_socket(self, timeout):
        """A NOTIFY_SOCKET of the test's own: returns (path, socket)."""
        path = os.path.join(self.dir, "notify")
        ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        ns.bind(path)
        self.addCleanup(ns.close)
        ns.settimeout(timeout)
        return path, ns

    def test_notify_ready_watchdog_and_stopping(self):
        notify_path, ns = self.notify_socket(30)
        env = dict(os.environ, NOTIFY_SOCKET=notify_path, WATCHDOG_USEC="300000")
        p = subprocess.Popen([HANGARD, "--foreground", "--state-dir", self.state, "--listen",
                              "none", "--guest-dir", GUEST_DIR, "--qemu", FAKE_QEMU,
                              "--accel", harness.ACCEL],
                             env=env, stderr=subprocess.DEVNULL)
        self.procs.append(p)
        messages = []
        t0 = time.monotonic()
        while not any("READY=1" in m for m in messages):
            messages.append(ns.recv(4096).decode())
        ready = next(m for m in messages if "READY=1" in m)
        self.assertIn("STATUS=0 machines", ready)
        # Serving when it says so.
        sock = os.path.join(self.state, "hangar.sock")
        self.assertEqual(curl_unix(sock, "GET", "/v1/health")[0], 200)
        self.assertEqual(curl_unix(sock, "POST", "/v1/machines", {"name": "keep"})[0], 201)
        status, m = curl_unix(sock, "POST", "/v1/machines/keep/actions/start")
        self.assertEqual((status, m["state"]), (200, "running"))
        self.qemu_pids.append(m["pid"])
        # Watchdog pings every 150 ms (half of WATCHDOG_USEC), from the reactor.
        t1 = time.monotonic()
        pings = 0
        while time.monotonic() - t1 < 1.5:
            if ns.recv(4096).decode() == "WATCHDOG=1":
                pings += 1
        self.assertGreaterEqual(pings, 7)
        self.assertLessEqual(pings, 12)
        # SIGTERM: STOPPING=1, exit 0, the machine keeps running.
        p.send_signal(signal.SIGTERM)
        rest = []
        while not any("STOPPING=1" in m for m in rest):
            rest.append(ns.recv(4096).decode())
        self.assertEqual(p.wait(timeout=30), 0)
        self.assertTrue(pid_alive(self.qemu_pids[0]))
        self.assertLess(time.monotonic() - t0, 30)

    def test_no_watchdog_without_systemd_asking(self):
        notify_path, ns = self.notify_socket(1.0)
        p = subprocess.Popen([HANGARD, "--foreground", "--state-dir", self.state, "--listen",
                              "none", "--guest-dir", GUEST_DIR, "--accel", harness.ACCEL],
                             env=dict(os.environ, NOTIFY_SOCKET=notify_path),
                             stderr=subprocess.DEVNULL)
        self.procs.append(p)
        got = []
        try:
            while True:
                got.append(ns.recv(4096).decode())
        except socket.timeout:
            pass
        self.assertTrue(any("READY=1" in m for m in got), got)
        self.assertFalse(any("WATCHDOG=1" in m for m in got), got)

    def test_socket_activation(self):
        os.makedirs(self.state)
        sock = os.path.join(self.state, "hangar.sock")
        port = free_port()
        # systemd-socket-activate binds both, waits for the first connection, then execs
        # hangard with LISTEN_FDS=2 in its own PID.
        p = subprocess.Popen(["systemd-socket-activate", "-l", sock, "-l", f"127.0.0.1:{port}",
                              HANGARD, "--foreground", "--state-dir", self.state,
                              "--guest-dir", GUEST_DIR, "--listen", "none",
                              "--accel", harness.ACCEL],
                             stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        wait_for(lambda: os.path.exists(sock), 10, "the activator's socket")
        inode = os.stat(sock).st_ino
        status, body = curl_unix(sock, "GET", "/v1/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(os.stat(sock).st_ino, inode)  # hangard served it, did not rebind
        status, created = curl_unix(sock, "POST", "/v1/tokens", {"name": "act"})
        self.assertEqual(status, 201, created)
        token = created["token"]
        # The activated TCP socket serves HTTPS (--listen none only concerns binding).
        out = subprocess.run(["curl", "-sk", "-H", f"Authorization: Bearer {token}",
                              f"https://127.0.0.1:{port}/v1/machines"], capture_output=True,
                             text=True, timeout=30)
        self.assertIn('"machines":[]', out.stdout)
        p.terminate()
        _, err = p.communicate(timeout=30)  # --foreground logs to stderr
        self.assertIn("socket activation: 1 unix and 1 TCP listening sockets", err)

    def test_units_verify(self):
        units = os.path.join(self.dir, "units")
        os.makedirs(units)
        for name in ("hangard.service", "hangard.socket"):
            with open(os.path.join(ROOT, "units", name)) as f:
                text = f.read().replace("/usr/local/bin/hangard", HANGARD)
            with open(os.path.join(units, name), "w") as f:
                f.write(text)
        out = subprocess.run(["systemd-analyze", "verify", "hangard.service", "hangard.socket"],
                             cwd=units, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stderr.strip(), "", "warnings from systemd-analyze")
        with open(os.path.join(ROOT, "units", "hangard.service")) as f:
            service = f.read()
        for line in ("Type=notify", "WatchdogSec=", "KillMode=process", "--foreground"):
            self.assertIn(line, service)


if __name__ == "__main__":
    harness.main()
