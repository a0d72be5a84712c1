"""hangard killed with SIGKILL and started again: running VMs are adopted, never restarted;
autostart machines are started once per host boot."""
import os
import signal
import subprocess
import time

import harness
from harness import DaemonTest, pid_alive, wait_for


class DaemonRestart(DaemonTest):
    def test_kill9_and_adopt_three_vms(self):
        d = self.daemon
        names = ["vm-a", "vm-b", "vm-c", "vm-d"]
        for n in names:
            self.create(n)
        pids = {n: d.action(n, "start")["pid"] for n in names}
        status, before = d.request("GET", "/v1/machines")
        revision = before["revision"]

        d.kill(signal.SIGKILL)
        for n in names:
            self.assertTrue(pid_alive(pids[n]), f"{n} died with the daemon")
        # One VM dies while the daemon is down.
        os.kill(pids["vm-d"], signal.SIGKILL)
        wait_for(lambda: not pid_alive(pids["vm-d"]), 5, "vm-d to die")

        d.start()
        status, after = d.request("GET", "/v1/machines")
        by_name = {m["name"]: m for m in after["machines"]}
        for n in ["vm-a", "vm-b", "vm-c"]:
            self.assertEqual(by_name[n]["state"], "running", by_name[n])
            self.assertEqual(by_name[n]["pid"], pids[n])
            self.assertNotIn("operation", by_name[n])
        self.assertEqual(by_name["vm-d"]["state"], "crashed")
        self.assertIn("exited while hangard was down", by_name["vm-d"]["state_reason"])
        # Only the difference became an event; the sequence kept growing.
        self.assertEqual(after["revision"], revision + 1)

        # Still controllable.
        m = d.action("vm-a", "pause")
        self.assertEqual(m["state"], "paused")
        m = d.action("vm-b", "kill")
        self.assertEqual(m["state"], "stopped")
        self.assertFalse(pid_alive(pids["vm-b"]))
        # The adopted QEMU is not our child: its exit is still seen through the pidfd.
        os.kill(pids["vm-c"], signal.SIGKILL)
        m = d.wait_state("vm-c", "crashed", timeout=3)
        self.assertIn("pidfd:exit", m["state_reason"])
        m = d.action("vm-d", "start")
        self.assertEqual(m["state"], "running")

    def test_sigterm_leaves_vms_running_and_paused_state_survives(self):
        d = self.daemon
        self.create("keep")
        pid = d.action("keep", "start")["pid"]
        d.action("keep", "pause")
        d.kill(signal.SIGTERM)
        self.assertTrue(pid_alive(pid))
        self.assertIn("leaving machines running", d.log())
        d.start()
        m = d.machine("keep")
        self.assertEqual((m["state"], m["pid"]), ("paused", pid))
        m = d.action("keep", "resume")
        self.assertEqual(m["state"], "running")

    def test_guest_shutdown_while_daemon_down_is_a_clean_stop(self):
        d = self.daemon
        self.create("quiet")
        pid = d.action("quiet", "start")["pid"]
        console = os.path.join(self.state_dir, "machines", "quiet", "console.log")
        def marker():
            with open(console, "rb") as f:
                return b"HANGAR-GUEST-READY" in f.read()

        wait_for(marker, 60, "the guest's marker")
        d.kill(signal.SIGKILL)
        # Press the power button behind hangard's back, through QMP, while it is down.
        import socket
        s = socket.socket(socket.AF_UNIX)
        s.connect(os.path.join(self.state_dir, "machines", "quiet", "qmp.sock"))
        s.settimeout(1)
        s.sendall(b'{"execute":"qmp_capabilities"}\n')
        # The guest prints its marker just before its acpid starts: a press that comes too
        # early is lost, so press again each second until QEMU reports the shutdown.
        seen = b""
        deadline = time.monotonic() + 60
        while b'"SHUTDOWN"' not in seen and time.monotonic() < deadline:
            s.sendall(b'{"execute":"system_powerdown"}\n')
            try:
                while b'"SHUTDOWN"' not in seen:
                    chunk = s.recv(65536)
                    self.assertTrue(chunk, "QEMU closed its QMP socket")
                    seen += chunk
            except socket.timeout:
                pass
        self.assertIn(b'"SHUTDOWN"', seen, "the guest did not power off")
        s.close()
        self.assertTrue(pid_alive(pid))  # -no-shutdown: QEMU waits for hangard
        d.start()
        m = d.wait_state("quiet", "stopped", timeout=10)
        self.assertIn("SHUTDOWN", m["state_reason"])
        wait_for(lambda: not pid_alive(pid), 5, "QEMU to quit")

    def test_sighup_reopens_the_log(self):
        log = os.path.join(self.state_dir, "hangard.log")
        os.rename(log, log + ".1")  # as logrotate does
        os.kill(self.daemon.pid, signal.SIGHUP)
        wait_for(lambda: os.path.exists(log) and "log reopened" in open(log).read(), 5,
                 "a new log file after SIGHUP")
        status, _ = self.daemon.request("GET", "/v1/health")
        self.assertEqual(status, 200)

    def test_second_daemon_on_same_state_dir_is_refused(self):
        other = harness.Daemon(self.state_dir)
        with self.assertRaises(AssertionError) as ctx:
            other.start()
        self.assertIn("another hangard", str(ctx.exception))


class AccelVerdict(DaemonTest):
    """--accel auto: the trial (a vCPU, then the built-in guest booting under KVM) runs once
    per host boot and QEMU binary; a restart reuses its verdict."""
    qemu = harness.FAKE_QEMU
    extra = ("--accel", "auto")

    def test_the_trial_runs_once_per_boot(self):
        def verdict():
            lines = [l for l in self.daemon.log().splitlines() if "accelerator " in l and
                     "ready:" not in l]
            return lines[-1].split("accelerator ", 1)[1]
        first = verdict()
        self.assertRegex(first, r"^(kvm|tcg): ")
        self.assertNotIn("earlier start", first)
        self.daemon.stop()
        self.daemon.start()
        again = verdict()
        self.assertEqual(again, first + " (found at an earlier start since this host booted)")


class Autostart(DaemonTest):
    qemu = harness.FAKE_QEMU

    def set_boot_id(self, value):
        db = os.path.join(self.state_dir, "hangar.db")
        subprocess.run(["sqlite3", db, "INSERT OR REPLACE INTO meta(key, value) "
                        f"VALUES('autostart_boot_id', '{value}')"], check=True)

    def states(self):
        return {m["name"]: (m["state"], m["state_reason"])
                for m in self.daemon.request("GET", "/v1/machines")[1]["machines"]}

    def test_started_once_per_host_boot_in_name_order(self):
        d = self.daemon
        self.create("b-web", autostart=True)
        self.create("a-db", autostart=True)
        self.create("c-manual")
        self.create("d-app", autostart=True)
        # The daemon started after this boot already: creating does not start anything.
        self.assertEqual({n: s for n, (s, _) in self.states().items()},
                         dict.fromkeys(["a-db", "b-web", "c-manual", "d-app"], "stopped"))
        d.kill()
        d.start()  # same boot: nothing is started
        time.sleep(0.5)
        self.assertEqual(self.states()["a-db"][0], "stopped")
        self.assertIn("autostart: already done since this host booted", d.log())

        d.kill()
        self.set_boot_id("an-earlier-boot")  # as after a reboot
        d.start()
        wait_for(lambda: self.states()["b-web"][0] == "running", 20, "b-web to autostart")
        wait_for(lambda: self.states()["d-app"][0] == "running", 20, "d-app to autostart")
        self.assertEqual(self.states()["c-manual"][0], "stopped")
        log = d.log().split("ready:")[-1]
        for n in ("a-db", "b-web", "d-app"):
            self.assertIn(f"{n}: stopped -> starting (autostart)", log)
        # One after another, in name order.
        self.assertLess(log.index("a-db: starting -> running"), log.index("b-web: stopped -> starting"))
        self.assertIn("autostart: 3 started, 0 failed", log)

        # A user stops one; a restart of hangard in the same boot leaves it stopped, and the
        # running ones are adopted, not restarted.
        pid = d.machine("b-web")["pid"]
        d.action("a-db", "kill")
        d.kill()
        d.start()
        time.sleep(0.5)
        self.assertEqual(self.states()["a-db"][0], "stopped")
        self.assertEqual(d.machine("b-web")["pid"], pid)

        # The next boot starts it again.
        d.kill()
        self.set_boot_id("another-boot")
        d.start()
        wait_for(lambda: self.states()["a-db"][0] == "running", 20, "a-db to autostart again")
        self.assertEqual(d.machine("b-web")["pid"], pid)


if __name__ == "__main__":
    harness.main()
