"""org.hangar on a private dbus-daemon started by the test: busctl introspect/tree/call/
get-property, PropertiesChanged and MachineStateChanged seen by busctl monitor, errors named
org.hangar.Error.*, callers checked by uid, reconnection after the bus daemon is restarted,
and one thread in hangard with D-Bus active."""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import harness
from harness import DaemonTest, wait_for

BUS_CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={path}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


class PrivateBus:
    def __init__(self, directory):
        self.path = os.path.join(directory, "bus")
        self.conf = os.path.join(directory, "bus.conf")
        with open(self.conf, "w") as f:
            f.write(BUS_CONF.format(path=self.path))
        self.address = f"unix:path={self.path}"
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["dbus-daemon", "--nofork", "--config-file", self.conf])
        wait_for(lambda: os.path.exists(self.path), 10, "the bus socket")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if os.path.exists(self.path):
            os.unlink(self.path)


class BusTest(DaemonTest):
    """hangard with org.hangar on a private dbus-daemon of the test's own."""
    qemu = harness.FAKE_QEMU

    def setUp(self):
        self.bus_dir = tempfile.mkdtemp(prefix="hangar-bus-")
        os.chmod(self.bus_dir, 0o755)
        self.bus = PrivateBus(self.bus_dir)
        self.bus.start()
        self.extra = ("--dbus", self.bus.address)
        super().setUp()
        wait_for(lambda: self.busctl("status", "org.hangar", check=False).returncode == 0, 10,
                 "org.hangar on the bus")

    def tearDown(self):
        super().tearDown()
        self.bus.stop()
        shutil.rmtree(self.bus_dir, ignore_errors=True)

    def busctl(self, *args, check=True):
        cmd = ["busctl", f"--address={self.bus.address}"] + list(args)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        if check:
            self.assertEqual(out.returncode, 0, out.stderr)
        return out


class DBus(BusTest):
    def send(self, method, *args, uid=None):
        """dbus-send, which prints the D-Bus error name; returns (ok, output)."""
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"] if uid else []
        cmd += ["dbus-send", f"--bus={self.bus.address}", "--print-reply", "--dest=org.hangar",
                "/org/hangar", f"org.hangar.Manager1.{method}"] + list(args)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return out.returncode == 0, out.stdout + out.stderr

    def test_objects_methods_properties_and_signals(self):
        intro = self.busctl("introspect", "org.hangar", "/org/hangar").stdout
        for member in ("ListMachines", "CreateMachine", "MachineStateChanged", "MachineNew"):
            self.assertIn(member, intro)
        monitor = subprocess.Popen(["busctl", f"--address={self.bus.address}", "monitor",
                                    "org.hangar", "--json=short"], stdout=subprocess.PIPE,
                                   text=True)
        try:
            time.sleep(0.5)
            self.create("web-1")
            tree = self.busctl("tree", "org.hangar").stdout
            self.assertIn("/org/hangar/machine/web_2d1", tree)
            path = "/org/hangar/machine/web_2d1"
            out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                              "GetMachine", "s", "web-1").stdout
            self.assertEqual(out.strip(), f'o "{path}"')
            self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1", "Start", "s",
                        "web-1")
            state = self.busctl("get-property", "org.hangar", path, "org.hangar.Machine1",
                                "State").stdout
            self.assertEqual(state.strip(), 's "running"')
            pid = int(self.busctl("get-property", "org.hangar", path, "org.hangar.Machine1",
                                  "Pid").stdout.split()[1])
            self.assertEqual(pid, self.daemon.machine("web-1")["pid"])
            # A change made over HTTP is a PropertiesChanged and a MachineStateChanged.
            self.daemon.action("web-1", "pause")
            # The machine's own object: Pause/Resume.
            self.busctl("call", "org.hangar", path, "org.hangar.Machine1", "Resume")
            self.assertEqual(self.daemon.machine("web-1")["state"], "running")
            out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                              "ListMachines").stdout
            self.assertIn('"web-1" "vm" "running" 0 "/org/hangar/machine/web_2d1"', out)
            # Create and delete over D-Bus.
            out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                              "CreateMachine", "sa{sv}", "db1", "2", "cpus", "u", "2",
                              "memory_mib", "u", "256").stdout
            self.assertEqual(out.strip(), 'o "/org/hangar/machine/db1"')
            m = self.daemon.machine("db1")
            self.created_uuids.append(m["uuid"])
            self.assertEqual((m["cpus"], m["memory_mib"]), (2, 256))
            self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                        "DeleteMachine", "sb", "db1", "false")
            self.assertEqual(self.daemon.request("GET", "/v1/machines/db1")[0], 404)
            time.sleep(0.5)
        finally:
            monitor.send_signal(signal.SIGINT)
            text = monitor.communicate(timeout=10)[0]
        signals = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        signals = [s for s in signals if s.get("type") == "signal"]
        members = [(s["member"], s.get("path")) for s in signals]
        self.assertIn(("MachineNew", "/org/hangar"), members)
        self.assertIn(("MachineRemoved", "/org/hangar"), members)
        changed = [s["payload"]["data"] for s in signals if s["member"] == "MachineStateChanged"]
        transitions = [(d[0], d[1], d[2]) for d in changed if d[0] == "web-1"]
        self.assertEqual(transitions, [("web-1", "stopped", "starting"),
                                       ("web-1", "starting", "running"),
                                       ("web-1", "running", "paused"),
                                       ("web-1", "paused", "running")])
        seqs = [d[4] for d in changed if d[0] == "web-1"]
        self.assertEqual(seqs, sorted(seqs))
        props = [s["payload"]["data"] for s in signals if s["member"] == "PropertiesChanged"
                 and s["path"] == "/org/hangar/machine/web_2d1"]
        states = [p[1]["State"]["data"] for p in props if "State" in p[1]]
        self.assertEqual(states, ["starting", "running", "paused", "running"])
        # Each PropertiesChanged comes right before the MachineStateChanged of the same change.
        order = [s["member"] for s in signals
                 if s["member"] in ("PropertiesChanged", "MachineStateChanged")
                 and (s["path"] == "/org/hangar/machine/web_2d1"
                      or s["payload"]["data"][0] == "web-1")]
        self.assertEqual(order, ["PropertiesChanged", "MachineStateChanged"] * 4)

    def test_disks_property_follows_attach_and_detach(self):
        self.create("dk")
        path = "/org/hangar/machine/dk"
        disks = lambda: self.busctl("get-property", "org.hangar", path, "org.hangar.Machine1",
                                    "Disks").stdout.strip()
        self.assertEqual(disks(), "as 0")
        monitor = subprocess.Popen(["busctl", f"--address={self.bus.address}", "monitor",
                                    "org.hangar", "--json=short"], stdout=subprocess.PIPE,
                                   text=True)
        try:
            time.sleep(0.5)
            for name in ("dd2", "dd1"):
                s, d = self.daemon.request("POST", "/v1/disks", {"name": name, "size_gib": 1})
                self.assertEqual(s, 201, d)
                s, _ = self.daemon.request("POST", "/v1/machines/dk/disks", {"disk": name})
                self.assertEqual(s, 200)
            self.assertEqual(disks(), 'as 2 "dd1" "dd2"')
            s, _ = self.daemon.request("DELETE", "/v1/machines/dk/disks/dd1")
            self.assertEqual(s, 200)
            self.assertEqual(disks(), 'as 1 "dd2"')
            time.sleep(0.5)
        finally:
            monitor.send_signal(signal.SIGINT)
            text = monitor.communicate(timeout=10)[0]
        signals = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        seen = [s["payload"]["data"][1]["Disks"]["data"] for s in signals
                if s.get("type") == "signal" and s["member"] == "PropertiesChanged"
                and s["path"] == path and "Disks" in s["payload"]["data"][1]]
        self.assertEqual(seen, [["dd2"], ["dd1", "dd2"], ["dd2"]])

    def test_errors_and_callers(self):
        self.create("own")
        ok, out = self.send("Start", "string:../x")
        self.assertFalse(ok)
        self.assertIn("org.hangar.Error.InvalidName", out)
        ok, out = self.send("Start", "string:nothere")
        self.assertIn("org.hangar.Error.NotFound", out)
        ok, out = self.send("Resume", "string:own")
        self.assertIn("org.hangar.Error.InvalidState", out)
        # (dbus-send cannot build a{sv}: busctl, which prints the message.)
        out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                          "CreateMachine", "sa{sv}", "bad", "1", "cpus", "s", "two", check=False)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn('spec key "cpus" has the wrong type (s)', out.stderr)
        out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                          "CreateMachine", "sa{sv}", "own", "0", check=False)
        self.assertIn("already exists", out.stderr)
        out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                          "CreateMachine", "sa{sv}", "big", "1", "cpus", "u", "999", check=False)
        self.assertIn("cpus must be between", out.stderr)
        # A uid that is neither root nor in the admin group (one with a passwd entry:
        # dbus-daemon refuses uids it cannot look up).
        ok, out = self.send("ListMachines", uid=65534)
        self.assertFalse(ok)
        self.assertIn("org.hangar.Error.Forbidden", out)
        # Nothing changed.
        status, lst = self.daemon.request("GET", "/v1/machines")
        self.assertEqual([m["name"] for m in lst["machines"]], ["own"])

    def test_create_machine_takes_the_json_spec_keys_with_boot_nested(self):
        kernel = os.path.abspath(os.path.join(harness.GUEST_DIR, "vmlinuz"))
        initrd = os.path.abspath(os.path.join(harness.GUEST_DIR, "initrd.img"))
        out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                          "CreateMachine", "sa{sv}", "viabus", "6",
                          "name", "s", "viabus", "cpus", "u", "2", "memory_mib", "u", "192",
                          "description", "s", "made over D-Bus", "autostart", "b", "false",
                          "boot", "a{sv}", "3", "kernel", "s", kernel, "initrd", "s", initrd,
                          "cmdline", "s", "console=ttyS0 quiet")
        self.assertEqual(out.stdout.strip(), 'o "/org/hangar/machine/viabus"')
        bus = self.daemon.machine("viabus")
        self.created_uuids.append(bus["uuid"])
        # The same spec as JSON over HTTP makes the same machine.
        spec = {"name": "viahttp", "cpus": 2, "memory_mib": 192, "description": "made over D-Bus",
                "autostart": False,
                "boot": {"kernel": kernel, "initrd": initrd, "cmdline": "console=ttyS0 quiet"}}
        status, http = self.daemon.request("POST", "/v1/machines", spec)
        self.assertEqual(status, 201, http)
        self.created_uuids.append(http["uuid"])
        fields = ("type", "cpus", "memory_mib", "description", "autostart", "boot")
        self.assertEqual({k: bus[k] for k in fields}, {k: http[k] for k in fields})
        self.assertEqual(bus["boot"]["cmdline"], "console=ttyS0 quiet")
        # It boots.
        self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1", "Start", "s",
                    "viabus")
        self.assertEqual(self.daemon.machine("viabus")["state"], "running")

    def test_create_machine_refuses_what_the_json_spec_refuses(self):
        def refused(*spec):
            out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                              "CreateMachine", "sa{sv}", "nope", *spec, check=False)
            self.assertNotEqual(out.returncode, 0, spec)
            return out.stderr
        self.assertIn("unknown field 'bogus'", refused("1", "bogus", "u", "1"))
        self.assertIn("unknown field 'boot.bogus'",
                      refused("1", "boot", "a{sv}", "1", "bogus", "s", "x"))
        self.assertIn('spec key "boot.kernel" has the wrong type (u): it must be s, a string',
                      refused("1", "boot", "a{sv}", "1", "kernel", "u", "1"))
        self.assertIn('spec key "boot" has the wrong type (s): it must be a{sv}, an object',
                      refused("1", "boot", "s", "/k"))
        self.assertIn('spec key "name" differs from the name argument',
                      refused("1", "name", "s", "other"))
        self.assertIn('"kernel" is the old spelling of "boot.kernel"',
                      refused("2", "kernel", "s", "/k", "boot", "a{sv}", "0"))
        self.assertEqual(self.daemon.request("GET", "/v1/machines/nope")[0], 404)

    def test_reconnects_after_the_bus_restarts_and_stays_single_threaded(self):
        self.create("keep")
        with open(f"/proc/{self.daemon.pid}/status") as f:
            threads = next(line for line in f if line.startswith("Threads:"))
        self.assertEqual(threads.split()[1], "1")
        self.bus.stop()
        wait_for(lambda: not self.daemon.request("GET", "/v1/health")[1]["checks"]["dbus"]["ok"],
                 10, "health to see the bus gone")
        self.assertEqual(self.daemon.request("GET", "/v1/machines/keep")[0], 200)  # REST goes on
        self.bus.start()
        wait_for(lambda: self.daemon.request("GET", "/v1/health")[1]["checks"]["dbus"]["ok"],
                 20, "hangard to reconnect")
        tree = self.busctl("tree", "org.hangar").stdout
        self.assertIn("/org/hangar/machine/keep", tree)
        self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1", "Start", "s",
                    "keep")
        self.assertEqual(self.daemon.machine("keep")["state"], "running")
        self.assertIn("dbus: lost", self.daemon.log())


class DBusAsync(BusTest):
    """StartAsync/StopAsync/RestartAsync answer an operation object at once; its end is an
    OperationDone signal and a PropertiesChanged of the object."""

    def ended(self, path, status, timeout):
        """Waits through the REST API (polling the object would flood the bus monitor)."""
        op_id = path.rsplit("/", 1)[1].replace("_2d", "-")
        wait_for(lambda: self.daemon.request("GET", f"/v1/operations/{op_id}")[1]["status"]
                 != "running", timeout, f"operation {op_id} to end")
        self.assertEqual(self.prop(path, "Status"), status)

    def prop(self, path, name):
        out = self.busctl("get-property", "org.hangar", path, "org.hangar.Operation1", name)
        return json.loads(out.stdout.split(" ", 1)[1])

    def test_async_start_returns_an_operation_and_signals_its_end(self):
        self.create("async-1")
        self.create("nogreet-1")  # fake QEMU that never greets: its start fails after 10 s
        # Line-buffered: busctl loses what it has buffered when it is interrupted.
        monitor = subprocess.Popen(["stdbuf", "-oL", "busctl", f"--address={self.bus.address}",
                                    "monitor",
                                    "org.hangar", "--json=short"], stdout=subprocess.PIPE,
                                   text=True)
        try:
            time.sleep(0.5)
            out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                              "StartAsync", "s", "async-1").stdout
            self.assertTrue(out.startswith('o "/org/hangar/operation/op_2d'), out)
            path = out.split('"')[1]
            op_id = path.rsplit("/", 1)[1].replace("_2d", "-")
            self.assertEqual(self.prop(path, "Id"), op_id)
            self.assertEqual(self.prop(path, "Machine"), "async-1")
            self.ended(path, "succeeded", 15)
            self.assertEqual(self.prop(path, "State"), "running")
            self.assertEqual(self.daemon.machine("async-1")["state"], "running")
            # The same operation through the REST API.
            status, op = self.daemon.request("GET", f"/v1/operations/{op_id}")
            self.assertEqual((status, op["status"], op["action"]), (200, "succeeded", "start"))
            # A start that takes long answers at once all the same.
            t0 = time.monotonic()
            out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                              "StartAsync", "s", "nogreet-1").stdout
            self.assertLess(time.monotonic() - t0, 3)
            slow = out.split('"')[1]
            self.assertEqual(self.prop(slow, "Status"), "running")
            self.assertEqual(self.daemon.machine("nogreet-1")["state"], "starting")
            self.ended(slow, "failed", 30)
            self.assertEqual(self.prop(slow, "ErrorCode"), "timeout")
            # The machine's own object; a refusal is an error at once, with no operation.
            machine = "/org/hangar/machine/async_2d1"
            out = self.busctl("call", "org.hangar", machine, "org.hangar.Machine1",
                              "StopAsync").stdout
            stop = out.split('"')[1]
            self.ended(stop, "succeeded", 15)
            self.assertEqual(self.daemon.machine("async-1")["state"], "stopped")
            out = self.busctl("call", "org.hangar", machine, "org.hangar.Machine1",
                              "StopAsync", check=False)
            self.assertNotEqual(out.returncode, 0)
            self.assertIn("stopped", out.stderr)
            time.sleep(0.5)
        finally:
            monitor.send_signal(signal.SIGINT)
            text = monitor.communicate(timeout=10)[0]
        messages = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        done = [(i, m["payload"]["data"]) for i, m in enumerate(messages)
                if m.get("type") == "signal" and m.get("member") == "OperationDone"]
        by_path = {d[1]: (i, d) for i, d in done}
        self.assertEqual(by_path[path][1], [op_id, path, "succeeded", "", ""])
        self.assertEqual(by_path[slow][1][2:4], ["failed", "timeout"])
        self.assertEqual(by_path[stop][1][2], "succeeded")
        # Each answer came before its operation's end.
        for p in (path, slow, stop):
            reply = next(i for i, m in enumerate(messages) if m.get("type") == "method_return"
                         and m.get("payload", {}).get("data") == [p])
            self.assertLess(reply, by_path[p][0], p)
        changed = [m for m in messages if m.get("member") == "PropertiesChanged"
                   and m.get("path") == path]
        self.assertEqual(changed[-1]["payload"]["data"][1]["Status"]["data"], "succeeded")


if __name__ == "__main__":
    harness.main()
