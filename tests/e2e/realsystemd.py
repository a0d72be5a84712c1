"""A real systemd (`systemd --user` in a private mount namespace, so it gives a real
org.freedesktop.systemd1) and a real systemd-machined on its bus, for tests on a machine whose
PID 1 is not systemd. machined runs in the same mount namespace, so its state files stay in that
namespace's /run/systemd. Everything started here is ended here, by PID."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

INNER = """
set -e
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system
echo $$ > {unified}/cgroup.procs
echo $$ > {named}/cgroup.procs
export XDG_RUNTIME_DIR={runtime} HOME={runtime}
exec /lib/systemd/systemd --user --log-target=console --log-level=warning
"""


class RealSystemd:
    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="hangar-systemd-")
        self.runtime = os.path.join(self.dir, "run")
        os.makedirs(self.runtime, mode=0o700)
        tag = f"hangartest{os.getpid()}"
        self.cgroups = []
        for root in ("/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
            sl = os.path.join(root, f"{tag}.slice")
            # A slice, not a scope: machined names a machine's unit after the first
            # non-slice part of its cgroup path, which must be the machine's own unit.
            mgr = os.path.join(sl, f"{tag}-mgr.slice")
            os.makedirs(mgr, exist_ok=True)
            self.cgroups += [mgr, sl]
        self.bus_path = os.path.join(self.runtime, "bus")
        self.address = f"unix:path={self.bus_path}"
        self.manager = None
        self.machined = None

    def start(self):
        script = INNER.format(unified=self.cgroups[0], named=self.cgroups[2],
                              runtime=self.runtime)
        self.manager = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh",
                                         "-c", script], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while not os.path.exists(self.bus_path):
            if time.monotonic() > deadline or self.manager.poll() is not None:
                raise RuntimeError("systemd --user did not come up")
            time.sleep(0.05)
        self.start_machined()
        return self

    def start_machined(self):
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=self.address)
        self.machined = subprocess.Popen(
            ["nsenter", f"--mount=/proc/{self.manager.pid}/ns/mnt",
             "/lib/systemd/systemd-machined"], env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while self.busctl("status", "org.freedesktop.machine1").returncode != 0:
            if time.monotonic() > deadline or self.machined.poll() is not None:
                raise RuntimeError("systemd-machined did not come up")
            time.sleep(0.05)

    def kill_machined(self):
        self.machined.send_signal(signal.SIGKILL)
        self.machined.wait()

    def list_machines(self):
        """machined's ListMachines: {name: (class, service, object path)}."""
        out = self.busctl("--json=short", "call", "org.freedesktop.machine1",
                          "/org/freedesktop/machine1", "org.freedesktop.machine1.Manager",
                          "ListMachines")
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return {m[0]: tuple(m[1:]) for m in json.loads(out.stdout)["data"][0]}

    def machine_property(self, path, prop):
        out = self.busctl("--json=short", "get-property", "org.freedesktop.machine1", path,
                          "org.freedesktop.machine1.Machine", prop)
        if out.returncode != 0:
            raise RuntimeError(out.stderr)
        return json.loads(out.stdout)["data"]

    def busctl(self, *args):
        return subprocess.run(["busctl", f"--address={self.address}"] + list(args),
                              capture_output=True, text=True, timeout=30)

    def terminate_machine(self, name):
        """machined's TerminateMachine, as `machinectl terminate NAME` calls it."""
        return self.busctl("call", "org.freedesktop.machine1", "/org/freedesktop/machine1",
                           "org.freedesktop.machine1.Manager", "TerminateMachine", "s", name)

    def stop_unit(self, unit):
        """systemd's StopUnit(UNIT, "replace"), as `systemctl stop UNIT` calls it."""
        return self.busctl("call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                           "org.freedesktop.systemd1.Manager", "StopUnit", "ss", unit, "replace")

    def stop(self):
        for p in (self.machined, self.manager):
            if p and p.poll() is None:
                p.send_signal(signal.SIGKILL)
                p.wait()
        # Processes the manager left in its cgroups (scopes it made) are ours to end.
        slices = [os.path.dirname(self.cgroups[0]), os.path.dirname(self.cgroups[2])]
        for top in slices:
            for cur, _, _ in os.walk(top, topdown=False):
                try:
                    with open(os.path.join(cur, "cgroup.procs")) as f:
                        for pid in f.read().split():
                            os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        for top in slices:
            for cur, _, _ in os.walk(top, topdown=False):
                for _ in range(40):
                    try:
                        os.rmdir(cur)
                        break
                    except OSError:
                        time.sleep(0.05)
        shutil.rmtree(self.dir, ignore_errors=True)


class SystemdDaemonTest:
    """Mixin for a harness.DaemonTest whose hangard talks to a RealSystemd's bus (`--dbus`):
    the manager and machined start before the daemon and end after it. `more_extra()` adds
    daemon arguments; `start_peers()` / `stop_peers()` add peers of a test's own."""

    def start_peers(self):
        pass

    def stop_peers(self):
        pass

    def more_extra(self):
        return ()

    def setUp(self):
        self.systemd = RealSystemd()
        try:
            self.start_peers()
            self.systemd.start()
            self.extra = ("--dbus", self.systemd.address) + tuple(self.more_extra())
            super().setUp()
        except BaseException:
            self._end_peers()
            raise

    def tearDown(self):
        super().tearDown()
        self._end_peers()

    def _end_peers(self):
        self.systemd.stop()  # ends every unit it ran
        self.stop_peers()
