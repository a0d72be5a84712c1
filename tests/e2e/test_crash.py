"""A can't-happen exception on the reactor ends hangard with one log line and status 70,
leaving its machines running; started again on the same state dir, it adopts them. The
throwing route exists only with --test-hooks."""
import os
import shutil
import signal
import subprocess
import tempfile
import unittest

import harness
from harness import Daemon, DaemonTest, pid_alive, pids_with_argument, wait_for


class ForegroundDaemon(Daemon):
    """hangard in the foreground, as systemd runs it: this test is its parent and reads its
    exit status; its log is its stderr, kept in a file."""

    def start(self):
        args = [harness.HANGARD, "--foreground", "--state-dir", self.state_dir,
                "--guest-dir", harness.GUEST_DIR, "--log-level", "debug", "--listen", "none",
                "--accel", harness.ACCEL] + self.extra
        env = dict(os.environ)
        report = os.path.join(self.state_dir, "sanitizer")
        for var in ("ASAN_OPTIONS", "UBSAN_OPTIONS"):
            env[var] = ":".join(filter(None, [env.get(var), f"log_path={report}"]))
        self.stderr_path = os.path.join(self.state_dir, "foreground.log")
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, env=env)
        self.pid = self.proc.pid
        wait_for(lambda: "ready:" in self.log() or self.proc.poll() is not None, 60,
                 "hangard to be ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"hangard exited at start:\n{self.log()}")

    def log(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()

    def exit_status(self, timeout=10):
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.pid = None

    def stop(self, timeout=30):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        self.pid = None


class CrashOnBug(unittest.TestCase):
    def setUp(self):
        self.state_dir = tempfile.mkdtemp(prefix="hangar-e2e-")
        self.daemon = ForegroundDaemon(self.state_dir, extra=["--test-hooks"])
        self.daemon.start()
        self.later = None  # the daemon started again
        self.uuids = []

    def tearDown(self):
        try:
            self.daemon.stop()
            if self.later:
                self.later.stop()
        finally:
            for u in self.uuids:
                for pid in pids_with_argument(u):
                    os.kill(pid, signal.SIGKILL)
        reports = self.daemon.sanitizer_reports()
        if reports:
            print(self.daemon.log()[-6000:])
        shutil.rmtree(self.state_dir, ignore_errors=True)
        if reports:
            self.fail(f"hangard's sanitizer reports:\n{reports[-20000:]}")

    def bug_lines(self):
        return [l for l in self.daemon.log().splitlines() if "bug: exception on the reactor" in l]

    def test_exception_in_a_handler_ends_the_daemon_and_a_restart_adopts_the_vm(self):
        d = self.daemon
        status, m = d.request("POST", "/v1/machines", {"name": "survivor"})
        self.assertEqual(status, 201, m)
        self.uuids.append(m["uuid"])
        qemu_pid = d.action("survivor", "start")["pid"]

        status, _ = d.request("POST", "/v1/test/throw", timeout=10)
        self.assertEqual(status, 0)  # no answer: the daemon is gone
        self.assertEqual(d.exit_status(), 70)
        lines = self.bug_lines()
        self.assertEqual(len(lines), 1, d.log()[-3000:])
        self.assertIn('std::logic_error "deliberate exception of the test hook" in handler of '
                      'POST /v1/test/throw', lines[0])
        self.assertIn("status 70", lines[0])
        self.assertTrue(pid_alive(qemu_pid), "QEMU died with the daemon")

        self.later = Daemon(self.state_dir)
        self.later.start()
        m = self.later.machine("survivor")
        self.assertEqual((m["state"], m["pid"]), ("running", qemu_pid))
        self.assertIn("1 running QEMU adopted", self.later.log())
        m = self.later.action("survivor", "kill")
        self.assertEqual(m["state"], "stopped")

    def test_exception_in_a_later_turn_ends_the_daemon_too(self):
        d = self.daemon
        status, body = d.request("POST", "/v1/test/throw?later=true", timeout=10)
        self.assertIn(status, (0, 202), body)  # the answer may or may not get out first
        self.assertEqual(d.exit_status(), 70)
        lines = self.bug_lines()
        self.assertEqual(len(lines), 1, d.log()[-3000:])
        self.assertIn('std::logic_error "deliberate exception of the test hook (a later turn)"',
                      lines[0])

    def test_only_admins_may_call_it(self):
        status, body = self.daemon.request_as(65534, "POST", "/v1/test/throw")
        self.assertEqual(status, 403, body)
        status, _ = self.daemon.request("GET", "/v1/health")
        self.assertEqual(status, 200)
        self.assertEqual(self.bug_lines(), [])


class NoHooksByDefault(DaemonTest):
    def test_the_throwing_route_is_not_served_without_the_flag(self):
        status, body = self.daemon.request("POST", "/v1/test/throw")
        self.assertEqual(status, 404, body)
        status, _ = self.daemon.request("GET", "/v1/health")
        self.assertEqual(status, 200)


if __name__ == "__main__":
    harness.main()
