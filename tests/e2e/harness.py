"""Runs hangard as a real process and talks to it with curl over its unix socket.

Environment (set by CTest): HANGARD, FAKE_QEMU, GUEST_DIR.
Every process a test starts is ended by PID at teardown; nothing else is touched.
At teardown hangard is stopped with SIGTERM, as systemd stops it, and a sanitizer build's
reports (errors at any time, leaks at exit) fail the test: hangard writes them to
STATE_DIR/sanitizer.PID, since its stderr is /dev/null once it serves.
"""
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import unittest

HANGARD = os.environ.get("HANGARD", "build/hangard")
FAKE_QEMU = os.environ.get("FAKE_QEMU", "build/tests/fake_qemu")
GUEST_DIR = os.environ.get("GUEST_DIR", "build/share/hangar/guest")
HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")
ACCEL = os.environ.get("HANGAR_TEST_ACCEL", "tcg")


def pid_alive(pid):
    """True while PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def pids_with_argument(arg):
    """PIDs of live processes whose command line holds `arg` as one argument."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if arg.encode() in f.read().split(b"\0") and pid_alive(int(d)):
                    out.append(int(d))
        except OSError:
            pass
    return out


def guest_boot():
    """The built-in guest's kernel and initramfs (hangard's own files)."""
    return {"kernel": os.path.join(GUEST_DIR, "vmlinuz"),
            "initrd": os.path.join(GUEST_DIR, "initrd.img"),
            "cmdline": "console=ttyS0 panic=-1"}


def qemu_img_info(path):
    """qemu-img info of `path` (-U: also while a QEMU holds it)."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", path],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def make_disk_image(directory, name, marker, fmt="qcow2", size="64M"):
    """A 64 MiB disk image in `directory` whose first bytes are `marker` (what the built-in
    guest prints as HANGAR-DISK), as qcow2 (grown to `size`) or raw."""
    raw = os.path.join(directory, name + ".raw")
    with open(raw, "wb") as f:
        f.write(marker.encode())
    os.truncate(raw, 64 << 20)
    if fmt == "raw":
        return raw
    out = os.path.join(directory, name + ".qcow2")
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, out],
                   check=True)
    if size != "64M":
        subprocess.run(["qemu-img", "resize", "-q", out, size], check=True)
    os.unlink(raw)
    return out


def wait_for(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Daemon:
    def __init__(self, state_dir, qemu=None, extra=()):
        self.state_dir = state_dir
        self.socket = os.path.join(state_dir, "hangar.sock")
        self.qemu = qemu
        self.extra = list(extra)
        self.pid = None

    def start(self):
        args = [HANGARD, "--state-dir", self.state_dir, "--guest-dir", GUEST_DIR,
                "--log-level", "debug", "--listen", "127.0.0.1:0"] + self.extra
        if "--accel" not in self.extra:
            # Guests run under TCG in tests: a host's /dev/kvm may open and still not boot them.
            args += ["--accel", ACCEL]
        if self.qemu:
            args += ["--qemu", self.qemu]
        env = dict(os.environ)
        report = os.path.join(self.state_dir, "sanitizer")
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
            env[var] = ":".join(filter(None, [env.get(var), f"log_path={report}"]))
        # Without --foreground, hangard returns once it serves (and has adopted its machines).
        out = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
        if out.returncode != 0:
            raise AssertionError(f"hangard failed to start: {out.stderr}")
        self.pid = int(out.stderr.split("(pid ")[1].split(")")[0])
        self.url = next((w.rstrip(",") for w in out.stderr.split()
                         if w.startswith(("https://", "http://"))), None)
        return out.stderr

    def kill(self, sig=signal.SIGKILL):
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, sig)
            wait_for(lambda: not pid_alive(self.pid), 10, "hangard to exit")
        self.pid = None

    def stop(self, timeout=30):
        """SIGTERM: hangard leaves its machines running and exits through its destructors."""
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGTERM)
            try:
                wait_for(lambda: not pid_alive(self.pid), timeout, "hangard to exit on SIGTERM")
            except AssertionError:
                self.kill()
                raise
        self.pid = None

    def sanitizer_reports(self):
        """What a sanitizer build reported (AddressSanitizer, LeakSanitizer, UBSan)."""
        out = []
        for path in sorted(glob.glob(os.path.join(self.state_dir, "sanitizer.*"))):
            with open(path, errors="replace") as f:
                out.append(f"{path}:\n{f.read()}")
        return "\n".join(out)

    def log(self):
        try:
            with open(os.path.join(self.state_dir, "hangard.log")) as f:
                return f.read()
        except OSError:
            return ""

    def request(self, method, path, body=None, raw=None, timeout=120, headers=()):
        """Returns (status, parsed JSON or text)."""
        args = ["curl", "-s", "-m", str(timeout), "--unix-socket", self.socket, "-X", method,
                "-w", "\n%{http_code}", f"http://hangar{path}"]
        for h in headers:
            args += ["-H", h]
        data = raw if raw is not None else (json.dumps(body) if body is not None else None)
        if data is not None:
            args += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        out = subprocess.run(args, input=data.encode() if isinstance(data, str) else data,
                             capture_output=True, timeout=timeout + 5)
        text = out.stdout.decode(errors="replace")
        body_text, _, code = text.rpartition("\n")
        try:
            parsed = json.loads(body_text) if body_text else None
        except ValueError:
            parsed = body_text
        return int(code or 0), parsed

    def request_as(self, uid, method, path, body=None, groups=(), timeout=60):
        """Like request, over the unix socket as another uid (setpriv): with `groups` as its
        supplementary groups, else none. The process keeps gid 0, which gives it nothing:
        hangard authorizes by uid, and opens files with the uid's groups from the user
        database, not the peer's."""
        cmd = ["setpriv", f"--reuid={uid}", "--regid=0"]
        cmd += [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
        cmd += ["curl", "-s", "-m", str(timeout), "--unix-socket", self.socket, "-X", method,
                "-w", "\n%{http_code}", f"http://h{path}"]
        if body is not None:
            cmd += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 30)
        text, _, code = out.stdout.rpartition("\n")
        return int(code), json.loads(text) if text else None

    def machine(self, name):
        status, m = self.request("GET", f"/v1/machines/{name}")
        assert status == 200, (status, m)
        return m

    def action(self, name, action, body=None, expect=200):
        status, m = self.request("POST", f"/v1/machines/{name}/actions/{action}", body)
        assert status == expect, (action, status, m)
        return m

    def wait_state(self, name, state, timeout=30):
        return wait_for(lambda: (lambda m: m if m["state"] == state else None)(self.machine(name)),
                        timeout, f"{name} to be {state}")


class DaemonTest(unittest.TestCase):
    """A fresh state dir and daemon per test; every QEMU it left is killed at the end."""
    qemu = None
    extra = ()

    def setUp(self):
        self.state_dir = tempfile.mkdtemp(prefix="hangar-e2e-")
        self.daemon = Daemon(self.state_dir, self.qemu, self.extra)
        self.created_uuids = []
        self.daemon.start()

    def tearDown(self):
        # Every machine this test created, known even if the daemon died.
        uuids = list(self.created_uuids)
        try:
            self.daemon.stop()
        finally:
            for u in uuids:
                for pid in pids_with_argument(u):
                    os.kill(pid, signal.SIGKILL)
        reports = self.daemon.sanitizer_reports()
        if self._outcome_failed() or reports:
            print(self.daemon.log()[-6000:])
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if reports:
            self.fail(f"hangard's sanitizer reports:\n{reports[-20000:]}")

    def _outcome_failed(self):
        result = getattr(self._outcome, "result", None)
        return bool(result and (result.failures or result.errors))

    def refused(self, answer, status, code, message=None):
        """`answer` (status, body) is the error `status` with `code` (and `message` in it)."""
        s, body = answer
        self.assertEqual((s, (body or {}).get("error", {}).get("code")), (status, code), body)
        if message:
            self.assertIn(message, body["error"]["message"])

    def console(self, name):
        """What machine `name`'s console has printed so far."""
        return self.daemon.request("GET", f"/v1/machines/{name}/console/log")[1] or ""

    def type_in(self, name, line):
        """Types `line` into machine `name`'s serial console (hangarctl console)."""
        subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "console", name],
                       input=line.encode() + b"\n", capture_output=True, timeout=60)

    def ask(self, name, command, tag):
        """Types `command` (which prints TAG:...:END) into the guest; what it printed."""
        self.type_in(name, command)
        wait_for(lambda: f"{tag}:" in self.console(name).replace(f"{tag}:$", ""), 30, tag)
        return self.console(name).replace(f"{tag}:$", "").rsplit(f"{tag}:", 1)[1].split(
            ":END", 1)[0]

    def uptime(self, name, tag):
        """The guest's uptime in seconds, as it reports it."""
        return float(self.ask(name, f"echo {tag}:$(cut -d' ' -f1 /proc/uptime):END", tag))

    def import_disk_image(self, directory, name, marker):
        """make_disk_image in `directory`, imported as image `name`."""
        path = make_disk_image(directory, name, marker)
        s, img = self.daemon.request("POST", "/v1/images?wait=true",
                                     {"name": name, "source": {"type": "file", "path": path}})
        self.assertEqual(s, 201, img)
        return img

    def create(self, name, **spec):
        status, m = self.daemon.request("POST", "/v1/machines", {"name": name, **spec})
        self.assertEqual(status, 201, m)
        self.created_uuids.append(m["uuid"])
        return m


def main():
    unittest.main(verbosity=2)
