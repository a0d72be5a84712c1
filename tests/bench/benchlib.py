"""Shared pieces of the benchmarks: a keep-alive HTTP client on hangard's unix socket and
process helpers. Run the benchmarks from the repository root after scripts/build.sh."""
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.environ.get("BUILD_DIR", os.path.join(ROOT, "build"))
HANGARD = os.path.join(BUILD, "hangard")
FAKE_QEMU = os.path.join(BUILD, "tests", "fake_qemu")
GUEST_DIR = os.path.join(BUILD, "share", "hangar", "guest")


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path):
        super().__init__("hangar", timeout=300)
        self.path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(self.path)


class Api:
    def __init__(self, sock):
        self.conn = UnixHTTP(sock)

    def call(self, method, path, body=None):
        data = json.dumps(body) if body is not None else None
        self.conn.request(method, path, body=data,
                          headers={"Content-Type": "application/json"} if data else {})
        r = self.conn.getresponse()
        raw = r.read()
        return r.status, json.loads(raw) if raw else None


class Daemon:
    def __init__(self, qemu=None, state_dir=None, extra=()):
        self.state_dir = state_dir or tempfile.mkdtemp(prefix="hangar-bench-")
        self.sock = os.path.join(self.state_dir, "hangar.sock")
        self.qemu = qemu
        self.extra = list(extra)
        self.pid = None

    def start(self):
        args = [HANGARD, "--state-dir", self.state_dir, "--guest-dir", GUEST_DIR,
                "--log-level", "warning", "--listen", "127.0.0.1:0"] + self.extra
        if "--accel" not in self.extra:
            args += ["--accel", os.environ.get("HANGAR_TEST_ACCEL", "tcg")]
        if self.qemu:
            args += ["--qemu", self.qemu]
        t0 = time.monotonic()
        out = subprocess.run(args, capture_output=True, text=True, timeout=600)
        elapsed = time.monotonic() - t0
        if out.returncode != 0:
            sys.exit(f"hangard failed: {out.stderr}")
        self.pid = int(out.stderr.split("(pid ")[1].split(")")[0])
        self.url = next((w.rstrip(",") for w in out.stderr.split()
                         if w.startswith(("https://", "http://"))), None)
        return elapsed

    def rss_kib(self):
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def kill(self, sig=signal.SIGKILL):
        if self.pid:
            os.kill(self.pid, sig)
            while os.path.exists(f"/proc/{self.pid}") and not _zombie(self.pid):
                time.sleep(0.01)
            self.pid = None


def _zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def kill_pids(pids):
    for p in pids:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
