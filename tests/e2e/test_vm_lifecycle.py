"""Real QEMU under TCG running the built-in guest, driven through hangard's unix socket."""
import os
import signal
import time

import harness
from harness import DaemonTest, pid_alive, wait_for

MARKER = b"HANGAR-GUEST-READY"


class VmLifecycle(DaemonTest):
    def console(self, name):
        status, text = self.daemon.request("GET", f"/v1/machines/{name}/console/log")
        self.assertEqual(status, 200)
        return text if isinstance(text, str) else str(text)

    def test_full_lifecycle(self):
        d = self.daemon
        m = self.create("web1")
        self.assertEqual(m["state"], "stopped")
        self.assertTrue(m["boot"]["kernel"].endswith("/vmlinuz"), m)
        mdir = os.path.join(self.state_dir, "machines", "web1")
        self.assertTrue(os.path.isdir(mdir))

        m = d.action("web1", "start")
        self.assertEqual(m["state"], "running")
        self.assertEqual(m["state_reason"], "qmp:RESUME")
        pid = m["pid"]
        self.assertTrue(pid_alive(pid))
        # QEMU runs in its own session, not in the daemon's.
        self.assertEqual(os.getsid(pid), pid)
        wait_for(lambda: MARKER.decode() in self.console("web1"), 60, "the guest's marker")
        status, tail = d.request("GET", "/v1/machines/web1/console/log?tail=40")
        self.assertLessEqual(len(tail.encode()), 40)

        d.action("web1", "start", expect=409)  # already running: invalid_state
        m = d.action("web1", "pause")
        self.assertEqual((m["state"], m["state_reason"]), ("paused", "qmp:STOP"))
        m = d.action("web1", "resume")
        self.assertEqual((m["state"], m["state_reason"]), ("running", "qmp:RESUME"))

        # Graceful stop: the guest sees the ACPI power button and powers itself off.
        m = d.action("web1", "stop", {"timeout_s": 60})
        self.assertEqual(m["state"], "stopped")
        self.assertIn("qmp:SHUTDOWN guest=true", m["state_reason"])
        self.assertFalse(pid_alive(pid))
        self.assertIn("HANGAR-GUEST-POWEROFF", self.console("web1"))

        m = d.action("web1", "start")
        m = d.action("web1", "kill")
        self.assertEqual((m["state"], m["state_reason"]), ("stopped", "api:kill"))

        # kill -9 from outside: seen through the pidfd at once, with the signal in the reason.
        m = d.action("web1", "start")
        os.kill(m["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        m = d.wait_state("web1", "crashed", timeout=5)
        self.assertLess(time.monotonic() - t0, 1.0)
        self.assertIn("signal=9", m["state_reason"])

        status, _ = d.request("DELETE", "/v1/machines/web1")
        self.assertEqual(status, 200)
        self.assertFalse(os.path.exists(mdir))
        status, body = d.request("GET", "/v1/machines/web1")
        self.assertEqual(status, 404)
        self.assertEqual(body["error"]["code"], "not_found")

    def test_restart_and_stop_timeout(self):
        d = self.daemon
        self.create("web2")
        first = d.action("web2", "start")["pid"]
        # Reset restart keeps the process.
        m = d.action("web2", "restart", {"reset": True})
        self.assertEqual((m["state"], m["pid"]), ("running", first))
        # A paused guest cannot see the power button: the timeout forces quit.
        d.action("web2", "pause")
        t0 = time.monotonic()
        m = d.action("web2", "stop", {"timeout_s": 1})
        self.assertEqual(m["state"], "stopped")
        self.assertIn("did not power off within 1 s", m["state_reason"])
        self.assertLess(time.monotonic() - t0, 8)
        # A full restart is stop + start: a new process.
        d.action("web2", "start")
        wait_for(lambda: MARKER.decode() in self.console("web2"), 60, "the guest's marker")
        old = d.machine("web2")["pid"]
        m = d.action("web2", "restart", {"timeout_s": 60})
        self.assertEqual(m["state"], "running")
        self.assertNotEqual(m["pid"], old)
        self.assertFalse(pid_alive(old))


if __name__ == "__main__":
    harness.main()
