"""A real Debian 12 root file system (debootstrap, built once and cached outside the clone by
scripts/build-debian-rootfs.sh) imported as an image and booted as a container with systemd as
its init, under a real systemd and systemd-machined (realsystemd.py). `running` means systemd
inside has booted (nspawn --notify-ready=yes); exec finds systemd as PID 1 and the system up,
and what it leaves in the background ends with it unless systemd inside runs it; a graceful
stop (SIGRTMIN+4 to its init through machined's KillMachine) powers it off cleanly well within
the timeout."""
import os
import random
import signal
import subprocess

import harness
from harness import DaemonTest, wait_for
from realsystemd import SystemdDaemonTest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def processes_with(arg):
    """The live processes (zombies aside) that have `arg` as one of their arguments."""
    return harness.pids_with_argument(arg)


class Debian(SystemdDaemonTest, DaemonTest):
    qemu = harness.FAKE_QEMU

    def start_peers(self):
        out = subprocess.run([os.path.join(ROOT, "scripts", "build-debian-rootfs.sh")],
                             capture_output=True, text=True, timeout=1800)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.tarball = out.stdout.strip()

    def exec(self, name, command, **extra):
        status, body = self.daemon.request("POST", f"/v1/machines/{name}/exec",
                                           {"command": command, **extra})
        self.assertEqual(status, 200, body)
        return body

    def test_boots_with_systemd_and_stops_cleanly(self):
        status, img = self.daemon.request("POST", "/v1/images?wait=true", {
            "name": "debian-12", "source": {"type": "file", "path": self.tarball}})
        self.assertEqual(status, 201, img)
        self.create("deb", type="container", image="debian-12", memory_mib=512)
        status, m = self.daemon.request("POST", "/v1/machines/deb/actions/start")
        self.assertEqual((status, m["state"], m["state_reason"]),
                         (200, "running", "systemd:active"), m)

        entry = wait_for(lambda: self.systemd.list_machines().get("deb"), 10, "deb in machined")
        self.assertEqual(entry[0], "container")
        self.assertEqual(self.exec("deb", ["cat", "/proc/1/comm"])["stdout"], "systemd\n")
        r = self.exec("deb", ["sh", "-c", ". /etc/os-release; echo $ID $VERSION_ID"])
        self.assertEqual(r["stdout"], "debian 12\n")
        # systemd inside has finished booting (READY=1 came first, so no waiting here).
        r = self.exec("deb", ["systemctl", "is-system-running"], timeout_s=60)
        failed = self.exec("deb", ["systemctl", "--failed", "--no-legend"])["stdout"]
        self.assertIn(r["stdout"].strip(), ("running", "degraded"), failed)
        # An exec's background process ends with it; a service started through systemd inside
        # (outside the exec's cgroup) keeps running.
        arg = str(random.randrange(10**6, 10**7))
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in processes_with(arg)])
        r = self.exec("deb", ["sh", "-c", f"systemd-run -q --unit=keeper sleep {arg}; "
                              f"setsid sleep {arg} & sleep 0.3; echo ok"])
        self.assertEqual((r["exit_code"], r["stdout"]), (0, "ok\n"), r)
        wait_for(lambda: len(processes_with(arg)) == 1, 5, "only the service's sleep")
        r = self.exec("deb", ["systemctl", "is-active", "keeper"])
        self.assertEqual(r["stdout"], "active\n", r)

        status, m = self.daemon.request("POST", "/v1/machines/deb/actions/stop",
                                        {"timeout_s": 90})
        self.assertEqual((status, m["state"], m["state_reason"]), (200, "stopped", "api:stop"),
                         m)
        log = self.daemon.request("GET", "/v1/machines/deb/console/log")[1]
        self.assertIn("System Power Off", log)
        wait_for(lambda: "deb" not in self.systemd.list_machines(), 10, "deb to leave machined")


if __name__ == "__main__":
    harness.main()
