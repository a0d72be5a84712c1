"""Containers with real peers: a busybox image pulled over HTTPS from the loopback image server
(imageserver.py), run by a real systemd (`systemd --user` in a mount namespace, realsystemd.py)
as hangar-NAME.service executing systemd-nspawn, registered in a real systemd-machined. Boot,
machined's listing, exec inside the running container and in the stopped root file system
(leaving no process behind, at its deadline or exit, whatever it detached), graceful stop,
kill -9 of nspawn (crashed, with the reason), machinectl terminate (machined:terminated), hangard killed and restarted (adopted, still controllable), one-shot
command containers, bad input, and the same view of containers through the API list, events,
D-Bus (org.hangar) and hangarctl as of VMs."""
import json
import os
import random
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import harness
from harness import DaemonTest, wait_for
from imageserver import ImageServer
from realsystemd import SystemdDaemonTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")


class Containers(SystemdDaemonTest, DaemonTest):
    qemu = harness.FAKE_QEMU

    def start_peers(self):
        self.server_dir = tempfile.mkdtemp(prefix="hangar-images-")
        self.server = ImageServer(self.server_dir)
        self.server.start()
        self.server.publish()

    def stop_peers(self):
        if getattr(self, "server", None):
            self.server.stop()
            subprocess.run(["rm", "-rf", self.server_dir])

    def more_extra(self):
        return ("--image-ca", self.server.ca)

    def setUp(self):
        super().setUp()
        try:
            status, body = self.daemon.request(
                "POST", "/v1/images?wait=true",
                {"name": "busybox", "source": {"type": "simplestreams",
                                               "server": self.server.url,
                                               "alias": "busybox/1.36"}})
            self.assertEqual(status, 201, body)
        except BaseException:
            self.tearDown()
            raise

    def create_container(self, name, **spec):
        return self.create(name, type="container", image="busybox", **spec)

    def start(self, name):
        m = self.daemon.action(name, "start")
        self.assertEqual(m["state"], "running", m)
        return m

    def exec(self, name, command, expect=200, **extra):
        status, body = self.daemon.request("POST", f"/v1/machines/{name}/exec",
                                           {"command": command, **extra})
        self.assertEqual(status, expect, body)
        return body

    def in_machined(self, name):
        return self.systemd.list_machines().get(name)

    @staticmethod
    def processes_with(arg):
        """The live processes (zombies aside) that have `arg` as one of their arguments."""
        return harness.pids_with_argument(arg)

    def exec_watched(self, name, script, **extra):
        """Execs `sh -c script`, where {arg} is a number unique to this call (its sleeps sleep
        that long, so that their processes can be found), while watching /proc. Returns the
        answer, its duration and how many of the processes were seen at once. A leftover is
        killed (by PID) when the test ends, if the check that none remains failed."""
        arg = str(random.randrange(10**6, 10**7))
        self.addCleanup(lambda: [os.kill(p, signal.SIGKILL) for p in self.processes_with(arg)])
        answer, seen = [], [0]
        def run():
            answer.append(self.daemon.request("POST", f"/v1/machines/{name}/exec",
                                              {"command": ["sh", "-c", script.format(arg=arg)],
                                               **extra}))
        t0 = time.monotonic()
        thread = threading.Thread(target=run)
        thread.start()
        while thread.is_alive():
            seen[0] = max(seen[0], len(self.processes_with(arg)))
            time.sleep(0.02)
        thread.join()
        return answer[0], time.monotonic() - t0, seen[0], arg

    def assert_nothing_left(self, arg, what):
        wait_for(lambda: not self.processes_with(arg), 5, f"{what}: no sleep {arg} left")

    def exec_cgroups(self, name):
        """The cgroups that execs made in the container's unit (next to nspawn's)."""
        with open(f"/proc/{self.daemon.machine(name)['pid']}/cgroup") as f:
            path = [l[3:] for l in f.read().splitlines() if l.startswith("0::")][0]
        unit = path[:path.index(f"/hangar-{name}.service") + len(f"/hangar-{name}.service")]
        mount = "/sys/fs/cgroup/unified" if os.path.ismount("/sys/fs/cgroup/unified") \
            else "/sys/fs/cgroup"
        return [d for d in os.listdir(mount + unit) if d.startswith("hangar-exec-")]

    # A background job, one in a session of its own, and a daemon (double fork, new session).
    LEFTOVERS = ["sleep {arg} & sleep {arg}", "busybox setsid sleep {arg} & sleep {arg}",
                 "(busybox setsid sleep {arg} &); sleep {arg}"]

    def check_timeouts_leave_nothing(self, name):
        for script in self.LEFTOVERS:
            (status, body), took, seen, arg = self.exec_watched(name, script, timeout_s=2)
            self.assertEqual((status, body["error"]["code"]), (504, "timeout"), (script, body))
            self.assertLess(took, 8, script)
            self.assertEqual(seen, 2, script)  # both sleeps ran
            self.assert_nothing_left(arg, script)

    def check_normal_exit_leaves_nothing(self, name):
        # The background processes end with the command (and do not hold its output open).
        (status, body), took, seen, arg = self.exec_watched(
            name, "sleep {arg} & busybox setsid sleep {arg} & (sleep {arg} &); "
                  "sleep 0.5; echo started; exit 7")
        self.assertEqual((status, body["exit_code"], body["stdout"]), (200, 7, "started\n"), body)
        self.assertEqual(seen, 3)
        self.assertLess(took, 1.9)
        self.assert_nothing_left(arg, "normal exit")

    def test_exec_leaves_nothing_behind(self):
        """An exec's processes end with it, in a running container and in a stopped one:
        at the deadline and when its command exits, whatever left its process group."""
        self.create_container("bg")
        self.start("bg")
        self.check_timeouts_leave_nothing("bg")
        self.check_normal_exit_leaves_nothing("bg")
        # The container itself is untouched, and exec still works; the execs' cgroups are gone.
        self.assertEqual(self.daemon.machine("bg")["state"], "running")
        r = self.exec("bg", ["sh", "-c", "echo alive; cat /proc/self/cgroup; sleep 1"],
                      timeout_s=5)
        self.assertEqual(r["stdout"].splitlines()[0], "alive")
        self.assertIn("/hangar-exec-", r["stdout"])  # its own cgroup, out of the container's
        wait_for(lambda: not self.exec_cgroups("bg"), 5, "the execs' cgroups to go")
        self.daemon.action("bg", "kill")
        self.assertEqual(self.exec("bg", ["true"])["in"], "rootfs")
        self.check_timeouts_leave_nothing("bg")
        self.check_normal_exit_leaves_nothing("bg")
        self.start("bg")

    def test_boot_exec_stop(self):
        m = self.create_container("box", description="busybox")
        self.assertEqual((m["type"], m["image"], m["state"]), ("container", "busybox", "stopped"))
        m = self.start("box")
        self.assertEqual(m["state_reason"], "systemd:active")
        self.assertGreater(m["pid"], 0)  # systemd-nspawn
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            self.assertIn(b"--machine=box", f.read())

        # machined has it as a container, with the machine's UUID; nspawn registered it.
        entry = wait_for(lambda: self.in_machined("box"), 10, "box in machined")
        self.assertEqual(entry[0], "container")
        ident = bytes(self.systemd.machine_property(entry[2], "Id"))
        self.assertEqual(str(uuid.UUID(bytes=ident)), m["uuid"])
        leader = self.systemd.machine_property(entry[2], "Leader")
        with open(f"/proc/{leader}/cmdline", "rb") as f:
            self.assertIn(b"init", f.read())  # busybox init is the container's PID 1

        # exec inside the running container: output, errors and exit code apart.
        r = self.exec("box", ["sh", "-c", "echo out; echo err >&2; exit 3"])
        self.assertEqual((r["exit_code"], r["stdout"], r["stderr"], r["in"]),
                         (3, "out\n", "err\n", "running"))
        r = self.exec("box", ["sh", "-c", "echo $GREETING; pwd; hostname; cat /etc/os-release"],
                      env={"GREETING": "hello"}, cwd="/tmp")
        self.assertEqual(r["stdout"].splitlines()[:3], ["hello", "/tmp", "box"])
        self.assertIn('NAME="hangar busybox"', r["stdout"])
        # Exactly the environment asked for, nothing of hangard's or the host's.
        r = self.exec("box", ["env"], env={"GREETING": "hello", "PWD": "/nowhere"})
        self.assertEqual(sorted(r["stdout"].splitlines()),
                         ["GREETING=hello", "HOME=/root", "PATH=/usr/local/sbin:/usr/local/bin:"
                          "/usr/sbin:/usr/bin:/sbin:/bin", "PWD=/nowhere", "TERM=dumb",
                          "container=hangar"])
        # It runs in the container's PID namespace: init is PID 1 there.
        r = self.exec("box", ["cat", "/proc/1/cmdline"])
        self.assertIn("init", r["stdout"])
        self.assertEqual(self.exec("box", ["no-such-program"])["exit_code"], 127)
        r = self.exec("box", ["sh", "-c", "kill -9 $$"])
        self.assertEqual(r["exit_code"], 128 + 9)
        # A working directory is resolved inside the container, whatever its symlinks say.
        self.assertEqual(self.exec("box", ["busybox", "ln", "-s", "/", "/tmp/up"])["exit_code"], 0)
        r = self.exec("box", ["pwd"], cwd="/tmp/up/../../..")
        self.assertEqual(r["stdout"], "/\n")
        self.exec("box", ["pwd"], cwd="/no/such/dir", expect=422)
        # Output is bounded; the deadline kills a command that does not finish.
        r = self.exec("box", ["sh", "-c", "i=0; while [ $i -lt 5000 ]; do "
                              "echo 0123456789012345678901234567890123456789012345678901234567890"
                              "123456789012345678901234567890123456789012345678901234567890123"
                              "45678901234567890123456789012345678901234567890123456789012345678"
                              "9012345678901234567890123456789012345678901234567890123456789012"
                              "34567890123456789012345678901234567890; i=$((i+1)); done"])
        self.assertTrue(r["stdout_truncated"])
        self.assertEqual(len(r["stdout"]), 1 << 20)
        status, body = self.daemon.request("POST", "/v1/machines/box/exec",
                                           {"command": ["sleep", "30"], "timeout_s": 1})
        self.assertEqual((status, body["error"]["code"]), (504, "timeout"), body)

        # Graceful stop: busybox init gets its power-off signal through machined.
        m = self.daemon.action("box", "stop", {"timeout_s": 20})
        self.assertEqual((m["state"], m["state_reason"], m["pid"]), ("stopped", "api:stop", 0))
        wait_for(lambda: not self.in_machined("box"), 10, "box to leave machined")

        # exec in the stopped root file system (configuration), which then boots with it.
        r = self.exec("box", ["sh", "-c", "echo configured > /etc/motd; echo $X; pwd"],
                      env={"X": "y"}, cwd="/etc")
        self.assertEqual((r["exit_code"], r["stdout"], r["in"]), (0, "y\n/etc\n", "rootfs"), r)
        self.start("box")
        self.assertEqual(self.exec("box", ["cat", "/etc/motd"])["stdout"], "configured\n")
        # The image itself was not touched: a second container does not see the change.
        self.create_container("box2")
        r = self.exec("box2", ["cat", "/etc/motd"])
        self.assertNotEqual(r["exit_code"], 0)
        # Restart: stopped and booted again (a new nspawn).
        old = self.daemon.machine("box")["pid"]
        m = self.daemon.action("box", "restart", {"timeout_s": 20})
        self.assertEqual(m["state"], "running")
        self.assertNotEqual(m["pid"], old)
        # A reboot from inside boots it again (nspawn exits 133).
        old = m["pid"]
        self.exec("box", ["busybox", "reboot"])
        m = wait_for(lambda: (lambda m: m if m["state"] == "running" and m["pid"] != old
                              else None)(self.daemon.machine("box")), 20, "box to reboot")
        self.assertEqual(m["state_reason"], "systemd:active")
        self.assertIn("box: stopped -> starting (container:reboot)", self.daemon.log())
        # Forced delete of a running container ends its unit.
        status, _ = self.daemon.request("DELETE", "/v1/machines/box?force=true")
        self.assertEqual(status, 200)
        wait_for(lambda: not self.in_machined("box"), 10, "box to leave machined")
        # Its root file system goes in the background.
        wait_for(lambda: os.listdir(os.path.join(self.state_dir, "machines")) == ["box2"], 10,
                 "box's directory to go")

    def test_exec_ends_with_a_killed_hangard(self):
        """An exec does not outlive a hangard killed meanwhile (its answer is lost): in a
        stopped container it ends with hangard; in a running one the next hangard ends it when
        it adopts the container."""
        self.create_container("orph")
        self.exec("orph", ["true"])  # its root file system is in place
        for running in (False, True):
            if running:
                self.start("orph")
            arg = str(random.randrange(10**6, 10**7))
            self.addCleanup(lambda a=arg: [os.kill(p, signal.SIGKILL)
                                           for p in self.processes_with(a)])
            def run():
                try:
                    self.daemon.request("POST", "/v1/machines/orph/exec", {
                        "command": ["sh", "-c", f"busybox setsid sleep {arg} & sleep {arg}"],
                        "timeout_s": 600})
                except OSError:
                    pass  # hangard is gone
            thread = threading.Thread(target=run, daemon=True)
            thread.start()
            wait_for(lambda: len(self.processes_with(arg)) == 2, 20, "the exec's sleeps")
            self.daemon.kill(signal.SIGKILL)
            thread.join(30)
            if running:
                time.sleep(0.5)
                self.assertEqual(len(self.processes_with(arg)), 2)  # until hangard is back
                self.daemon.start()
                self.assert_nothing_left(arg, "adopted")
                self.assertIn("(an exec of an earlier hangard)", self.daemon.log())
                wait_for(lambda: not self.exec_cgroups("orph"), 5, "the exec's cgroup to go")
                self.assertEqual(self.daemon.machine("orph")["state"], "running")
            else:
                self.assert_nothing_left(arg, "hangard killed")
                self.daemon.start()
                self.assertEqual(self.daemon.machine("orph")["state"], "stopped")

    def test_kill_of_nspawn_is_a_crash(self):
        self.create_container("victim")
        m = self.start("victim")
        os.kill(m["pid"], signal.SIGKILL)
        m = self.daemon.wait_state("victim", "crashed", timeout=10)
        self.assertIn("signal=9", m["state_reason"])
        self.assertTrue(m["state_reason"].startswith("systemd:"), m)
        # Started again from crashed.
        self.start("victim")
        m = self.daemon.action("victim", "kill")
        self.assertEqual((m["state"], m["state_reason"]), ("stopped", "api:kill"))

    def test_terminate_through_machined(self):
        """machinectl terminate (machined's TerminateMachine) is reported as machined's doing,
        as for a VM; a stop of the unit by someone else is systemd's."""
        self.create_container("term")
        self.start("term")
        out = self.systemd.terminate_machine("term")
        self.assertEqual(out.returncode, 0, out.stderr)
        m = self.daemon.wait_state("term", "stopped", timeout=20)
        self.assertEqual(m["state_reason"], "machined:terminated")
        wait_for(lambda: self.in_machined("term") is None, 10, "term to leave machined")
        self.start("term")
        out = self.systemd.stop_unit("hangar-term.service")
        self.assertEqual(out.returncode, 0, out.stderr)
        m = self.daemon.wait_state("term", "stopped", timeout=20)
        self.assertTrue(m["state_reason"].startswith("systemd:result="), m)

    def test_adopted_across_hangard_kill(self):
        self.create_container("keep")
        m = self.start("keep")
        self.daemon.kill(signal.SIGKILL)
        self.assertTrue(harness.pid_alive(m["pid"]))
        self.daemon.start()
        m2 = self.daemon.machine("keep")
        self.assertEqual((m2["state"], m2["pid"]), ("running", m["pid"]))
        self.assertEqual(self.exec("keep", ["echo", "still here"])["stdout"], "still here\n")
        # Stopped while hangard is down: the restart finds the unit gone.
        self.daemon.kill(signal.SIGKILL)
        out = self.systemd.stop_unit("hangar-keep.service")
        self.assertEqual(out.returncode, 0, out.stderr)
        wait_for(lambda: not harness.pid_alive(m["pid"]), 20, "nspawn to exit")
        self.daemon.start()
        m3 = self.daemon.wait_state("keep", "crashed", timeout=10)
        self.assertEqual(m3["state_reason"], "systemd:unit gone")
        self.start("keep")

    def test_autostart_after_host_boot(self):
        """A container with autostart is started by the first hangard after a host boot."""
        self.create_container("auto", autostart=True)
        self.create_container("manual")
        self.daemon.kill()
        subprocess.run(["sqlite3", os.path.join(self.state_dir, "hangar.db"),
                        "INSERT OR REPLACE INTO meta(key, value) "
                        "VALUES('autostart_boot_id', 'an-earlier-boot')"], check=True)
        self.daemon.start()
        m = self.daemon.wait_state("auto", "running", timeout=20)
        self.assertEqual(m["state_reason"], "systemd:active")
        self.assertEqual(self.daemon.machine("manual")["state"], "stopped")
        self.assertIn("autostart: 1 started, 0 failed", self.daemon.log())

    def test_start_as_soon_as_hangard_answers(self):
        """A start sent the moment hangard serves waits for its systemd subscription."""
        self.create_container("early")
        self.daemon.kill()
        self.daemon.start()
        self.start("early")
        self.assertNotIn("systemd is not reachable", self.daemon.log())

    def test_one_shot_command(self):
        self.create_container("job", boot={"command": ["sh", "-c", "sleep 1; echo done; exit 4"]})
        m = self.daemon.machine("job")
        self.assertEqual(m["boot"], {"command": ["sh", "-c", "sleep 1; echo done; exit 4"]})
        self.start("job")
        m = self.daemon.wait_state("job", "crashed", timeout=20)
        self.assertIn("status=4", m["state_reason"])
        status, log = self.daemon.request("GET", "/v1/machines/job/console/log")
        self.assertEqual(status, 200, log)
        self.assertIn("done", log)
        self.daemon.request("PATCH", "/v1/machines/job", {"boot": {"command": ["sh", "-c", "exit 0"]}})
        self.start("job")
        m = self.daemon.wait_state("job", "stopped", timeout=20)
        self.assertEqual(m["state_reason"], "systemd:result=success status=0")

    def test_same_view_as_vms(self):
        """Events, the list, D-Bus and hangarctl show a container as they show a VM."""
        self.create("vm1")
        self.create_container("ct1")
        env = dict(os.environ, HANGAR_SOCKET=self.daemon.socket)
        out = subprocess.run([HANGARCTL, "list"], capture_output=True, text=True, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        lines = {l.split()[0]: l.split() for l in out.stdout.splitlines()[1:]}
        self.assertEqual(lines["ct1"][1:3], ["container", "stopped"])
        out = subprocess.run([HANGARCTL, "start", "ct1"], capture_output=True, text=True, env=env)
        self.assertEqual(out.returncode, 0, out.stderr)
        out = subprocess.run([HANGARCTL, "exec", "ct1", "--", "sh", "-c", "echo hi; exit 2"],
                             capture_output=True, text=True, env=env)
        self.assertEqual((out.returncode, out.stdout), (2, "hi\n"), out.stderr)
        status, listing = self.daemon.request("GET", "/v1/machines?type=container")
        self.assertEqual([m["name"] for m in listing["machines"]], ["ct1"])
        # org.hangar on the same bus.
        path = "/org/hangar/machine/ct1"
        wait_for(lambda: self.systemd.busctl("get-property", "org.hangar", path,
                                             "org.hangar.Machine1", "State").returncode == 0,
                 10, "org.hangar")
        state = self.systemd.busctl("get-property", "org.hangar", path, "org.hangar.Machine1",
                                    "State").stdout
        self.assertEqual(state.strip(), 's "running"')
        out = self.systemd.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                                  "CreateMachine", "sa{sv}", "ct2", "3", "type", "s", "container",
                                  "image", "s", "busybox", "command", "as", "1", "sh")
        self.assertEqual(out.returncode, 0, out.stderr)
        m = self.daemon.machine("ct2")
        self.assertEqual((m["type"], m["image"], m["boot"]),
                         ("container", "busybox", {"command": ["sh"]}))
        self.created_uuids.append(m["uuid"])
        out = subprocess.run([HANGARCTL, "show", "ct2"], capture_output=True, text=True, env=env)
        self.assertIn("image:        busybox", out.stdout)
        self.assertIn('boot.command: "sh"', out.stdout)
        self.assertEqual(self.systemd.busctl("get-property", "org.hangar",
                                             "/org/hangar/machine/ct2", "org.hangar.Machine1",
                                             "Type").stdout.strip(), 's "container"')
        # Events: created, starting, running in order, as for a VM.
        tail = subprocess.Popen([HANGARCTL, "--json", "events", "--since", "0", "--machine",
                                 "ct1"], stdout=subprocess.PIPE, text=True, env=env)
        timer = threading.Timer(20, tail.kill)
        timer.start()
        try:
            events = [json.loads(tail.stdout.readline()) for _ in range(3)]
        finally:
            timer.cancel()
            tail.kill()
            tail.wait()
        self.assertEqual([(e["type"], e["data"].get("to")) for e in events],
                         [("machine.created", None), ("machine.state", "starting"),
                          ("machine.state", "running")])
        self.assertEqual(events[0]["data"]["type"], "container")

    def test_bad_input(self):
        def create(body):
            return self.daemon.request("POST", "/v1/machines", body)
        status, body = create({"name": "c1", "type": "container"})
        self.assertEqual((status, body["error"]["code"]), (422, "invalid_spec"), body)
        status, body = create({"name": "c1", "type": "container", "image": "nope"})
        self.assertEqual((status, body["error"]["code"]), (422, "invalid_spec"), body)
        status, body = create({"name": "c1", "type": "container", "image": "../x"})
        self.assertEqual(status, 400, body)
        status, body = create({"name": "c1", "type": "container", "image": "busybox",
                               "boot": {"kernel": "/boot/vmlinuz"}})
        self.assertEqual(status, 422, body)
        status, body = create({"name": "c1", "type": "container", "image": "busybox",
                               "boot": {"command": "not a list"}})
        self.assertEqual(status, 400, body)
        status, body = create({"name": "c1", "type": "container", "image": "busybox",
                               "boot": {"command": ["x"] * 300}})
        self.assertEqual(status, 422, body)
        status, body = create({"name": "v1", "image": "busybox"})
        self.assertEqual(status, 422, body)
        self.create_container("c1")
        self.create("v1")
        for name, req, code in [
                ("c1", {"command": []}, 422),
                ("c1", {"command": ["true"], "cwd": "relative"}, 422),
                ("c1", {"command": ["true"], "env": {"1BAD": "x"}}, 422),
                ("c1", {"command": ["true"], "env": {"A": 1}}, 400),
                ("c1", {"command": ["true"], "timeout_s": 0}, 422),
                ("c1", {"command": ["true"], "what": 1}, 400),
                ("c1", {"cwd": "/"}, 400),
                ("v1", {"command": ["true"]}, 422),
                ("nope", {"command": ["true"]}, 404),
                ("..x", {"command": ["true"]}, 400)]:
            status, body = self.daemon.request("POST", f"/v1/machines/{name}/exec", req)
            self.assertEqual(status, code, (name, req, body))
        status, body = self.daemon.request("POST", "/v1/machines/c1/exec", raw="{nope")
        self.assertEqual(status, 400, body)
        self.start("c1")
        for action in ("pause", "resume"):
            status, body = self.daemon.request("POST", f"/v1/machines/c1/actions/{action}")
            self.assertEqual(status, 422, body)
        status, body = self.daemon.request("POST", "/v1/machines/c1/actions/restart",
                                           {"reset": True})
        self.assertEqual(status, 422, body)
        status, body = self.daemon.request("DELETE", "/v1/machines/c1")
        self.assertEqual(status, 409, body)
        status, body = self.daemon.request("PATCH", "/v1/machines/c1", {"image": "other"})
        self.assertEqual(status, 400, body)
        self.daemon.action("c1", "kill")


if __name__ == "__main__":
    harness.main()
