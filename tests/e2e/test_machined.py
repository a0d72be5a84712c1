"""hangar's VMs in a real systemd-machined, on the bus of a real systemd (`systemd --user` in a
mount namespace, see realsystemd.py), with real QEMU: registration with class vm, QEMU as leader
and the machine's UUID; removal when the VM stops; a TerminateMachine from outside reported as
the stop's reason; a hangard killed and restarted keeps its entries and cleans stale ones;
machined restarted gets every running VM back."""
import os
import signal
import subprocess
import uuid

import harness
from harness import DaemonTest, wait_for
from realsystemd import SystemdDaemonTest


class Machined(SystemdDaemonTest, DaemonTest):

    def start_vm(self, name):
        self.create(name, memory_mib=128)
        self.daemon.action(name, "start")
        return self.daemon.wait_state(name, "running")

    def registered(self, name, pid, timeout=10):
        """Waits until machined lists `name` as hangar's VM led by `pid`; returns its path."""
        def check():
            entry = self.systemd.list_machines().get(name)
            if not entry or entry[0] != "vm" or entry[1] != "hangar":
                return None
            return entry[2] if self.systemd.machine_property(entry[2], "Leader") == pid else None
        return wait_for(check, timeout, f"{name} in machined with leader {pid}")

    def gone(self, name, timeout=10):
        wait_for(lambda: name not in self.systemd.list_machines(), timeout,
                 f"{name} to leave machined")

    def test_registered_while_running_and_removed_when_stopped(self):
        m = self.start_vm("web")
        path = self.registered("web", m["pid"])
        # machined has the machine's UUID and moved QEMU into a scope of its own.
        ident = bytes(self.systemd.machine_property(path, "Id"))
        self.assertEqual(str(uuid.UUID(bytes=ident)), m["uuid"])
        with open(f"/proc/{m['pid']}/cgroup") as f:
            self.assertIn("machine-web.scope", f.read())
        self.assertEqual(self.systemd.machine_property(path, "Class"), "vm")
        status, health = self.daemon.request("GET", "/v1/health")
        self.assertIn("machined: in step", health["checks"]["dbus"]["detail"])
        with open(f"/proc/{self.daemon.pid}/status") as f:  # both connections on the reactor
            self.assertIn("Threads:\t1\n", f.read())

        self.daemon.action("web", "kill")
        self.daemon.wait_state("web", "stopped")
        self.gone("web")
        # Started again: a new QEMU, registered again.
        self.daemon.action("web", "start")
        m = self.daemon.wait_state("web", "running")
        self.registered("web", m["pid"])
        self.daemon.request("DELETE", "/v1/machines/web?force=true")
        self.gone("web")

    def test_terminate_from_outside_is_reported(self):
        m = self.start_vm("db")
        self.registered("db", m["pid"])
        out = self.systemd.terminate_machine("db")
        self.assertEqual(out.returncode, 0, out.stderr)
        m = self.daemon.wait_state("db", "stopped", timeout=20)
        self.assertEqual(m["state_reason"], "machined:terminated")
        self.gone("db")
        # Started again after that, it is registered again.
        self.daemon.action("db", "start")
        m = self.daemon.wait_state("db", "running")
        self.registered("db", m["pid"])

    def test_daemon_restart_keeps_entries_and_cleans_stale_ones(self):
        a = self.start_vm("keep")
        b = self.start_vm("lost")
        path_a = self.registered("keep", a["pid"])
        self.registered("lost", b["pid"])
        self.daemon.kill()
        os.kill(b["pid"], signal.SIGKILL)  # dies while hangard is down
        wait_for(lambda: not harness.pid_alive(b["pid"]), 10, "QEMU of lost to die")
        # An entry of hangar's that no machine here leads, as a crashed hangard can leave
        # behind (its leader is a process of this test's).
        ghost = subprocess.Popen(["sleep", "300"])
        try:
            out = self.systemd.busctl(
                "call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                "org.freedesktop.machine1.Manager", "CreateMachine", "sayssusa(sv)", "ghost",
                "0", "hangar", "vm", str(ghost.pid), "", "0")
            self.assertEqual(out.returncode, 0, out.stderr)
            self.daemon.start()
            self.gone("ghost")
            self.gone("lost")
            wait_for(lambda: ghost.poll() is not None, 10, "machined to end the ghost's leader")
        finally:
            if ghost.poll() is None:
                ghost.kill()
            ghost.wait()
        self.assertEqual(self.daemon.machine("lost")["state"], "crashed")
        self.assertEqual(self.daemon.machine("keep")["pid"], a["pid"])
        self.assertEqual(self.registered("keep", a["pid"]), path_a)
        log = self.daemon.log().split("ready:")[-1]
        self.assertIn("terminating ghost: stale", log)
        self.assertNotIn("registered keep", log)  # it was still registered: left alone

    def test_machined_restart_gets_running_vms_back(self):
        m = self.start_vm("app")
        self.registered("app", m["pid"])
        self.systemd.kill_machined()
        self.systemd.start_machined()
        # machined may restore the entry from its state files or lose it; either way hangard
        # makes sure it is there, led by the same QEMU, which kept running throughout.
        self.registered("app", m["pid"], timeout=15)
        self.assertTrue(harness.pid_alive(m["pid"]))
        self.assertEqual(self.daemon.machine("app")["state"], "running")


if __name__ == "__main__":
    harness.main()
