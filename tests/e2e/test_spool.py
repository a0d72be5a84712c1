"""wirt's file spool (--spool-dir): non-root users drive their machines by writing files in a
tree they own, as unix-socket callers of their uid; hostile trees (symbolic and hard links,
FIFOs, devices, huge files, others' files, bad names, floods) are refused, each with a line in
the user's log, and nothing outside the tree is read (a secret file's marker shows up nowhere)
or written."""
import json
import os
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time

import harness
from harness import DaemonTest, pid_alive, wait_for

A, B, C, D = 1001, 1002, 1003, 1004  # no passwd entries needed: hangard goes by uid


class SpoolTest(DaemonTest):
    users = (A, B)

    def setUp(self):
        self.spool = tempfile.mkdtemp(prefix="hangar-spool-")
        os.chmod(self.spool, 0o755)
        for uid in self.users:
            tree = self.tree(uid)
            os.mkdir(tree, 0o700)
            os.chown(tree, uid, uid)
        self.extra = ("--spool-dir", self.spool)
        super().setUp()

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            shutil.rmtree(self.spool, ignore_errors=True)

    def tree(self, uid):
        return os.path.join(self.spool, str(uid))

    def path(self, uid, rel):
        return os.path.join(self.tree(uid), rel)

    def run_as(self, uid, *cmd, data=None):
        out = subprocess.run(["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                              *cmd], input=data, capture_output=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out

    def mkdir(self, uid, rel):
        self.run_as(uid, "mkdir", "-p", self.path(uid, rel))

    def write(self, uid, rel, text):
        self.run_as(uid, "sh", "-c", 'cat > "$1"', "sh", self.path(uid, rel), data=text.encode())

    def command(self, uid, name, cmd):
        self.mkdir(uid, f"service/vm/{name}")
        self.run_as(uid, "touch", self.path(uid, f"service/vm/{name}/{cmd}"))

    def log_lines(self, uid, name=None):
        rel = f"logs/vm/{name}.log" if name else "logs/spool.log"
        try:
            with open(self.path(uid, rel)) as f:
                return [json.loads(line) for line in f if line.strip()]
        except FileNotFoundError:
            return []

    def wait_line(self, uid, name, pred, what, timeout=20):
        return wait_for(lambda: next((l for l in self.log_lines(uid, name) if pred(l)), None),
                        timeout, what)

    def refusal(self, uid, name, file=None, timeout=20):
        return self.wait_line(uid, name, lambda l: l["type"] == "spool.refused" and
                              (file is None or l["file"].endswith(file)),
                              f"a refusal in uid {uid}'s log {name or 'spool'}", timeout)

    def status(self, uid, name):
        try:
            with open(self.path(uid, f"info/vm/{name}/status.json")) as f:
                return json.load(f)
        except (FileNotFoundError, ValueError):
            return None

    def wait_status(self, uid, name, state, timeout=30):
        return wait_for(lambda: (lambda s: s if s and s["state"] == state else None)(
            self.status(uid, name)), timeout, f"status.json of {name} to say {state}")


class SpoolLifecycle(SpoolTest):
    """Real QEMU under TCG running the built-in guest, driven through files only."""

    def test_user_drives_a_vm_through_files(self):
        d = self.daemon
        self.mkdir(A, "service/vm/web")
        self.write(A, "service/vm/web/config", json.dumps({"memory_mib": 128,
                                                           "description": "from a file"}))
        st = self.wait_status(A, "web", "stopped")
        self.assertEqual((st["owner"], st["description"]), (A, "from a file"))
        self.created_uuids.append(st["uuid"])
        info = os.stat(self.path(A, "info/vm/web/status.json"))
        self.assertEqual((info.st_uid, stat.S_ISREG(info.st_mode)), (A, True))
        self.assertFalse(os.path.exists(self.path(A, "service/vm/web/config")))  # taken

        self.command(A, "web", "start")
        st = self.wait_status(A, "web", "running", timeout=60)
        self.assertEqual(st["state_reason"], "qmp:RESUME")
        self.assertTrue(pid_alive(st["pid"]))
        self.assertFalse(os.path.exists(self.path(A, "service/vm/web/start")))
        m = d.machine("web")
        self.assertEqual((m["owner"], m["state"]), (A, "running"))
        wait_for(lambda: "HANGAR-GUEST-READY" in str(d.request(
            "GET", "/v1/machines/web/console/log")[1]), 90, "the guest's marker")

        # User B cannot touch A's machine: it does not exist for them.
        self.command(B, "web", "stop")
        line = self.refusal(B, "web", "stop")
        self.assertEqual(line["error"]["code"], "not_found", line)
        self.mkdir(B, "service/vm/web")
        self.write(B, "service/vm/web/config", '{"cpus": 2}')
        line = self.refusal(B, "web", "config")
        self.assertEqual(line["error"]["code"], "conflict", line)  # names are global
        self.command(B, "web", "destroy")
        self.wait_line(B, "web", lambda l: l["type"] == "spool.refused" and
                       l["file"].endswith("destroy") and l["error"]["code"] == "not_found",
                       "B's destroy refused")
        self.assertEqual(d.machine("web")["state"], "running")
        self.assertEqual(self.status(B, "web"), None)

        # A refusal from the core is A's too (cpus only while stopped).
        self.write(A, "service/vm/web/config", '{"cpus": 2}')
        line = self.refusal(A, "web", "config")
        self.assertEqual(line["error"]["code"], "invalid_state", line)

        self.command(A, "web", "stop")  # the ACPI power button
        st = self.wait_status(A, "web", "stopped", timeout=90)
        self.assertIn("qmp:SHUTDOWN guest=true", st["state_reason"])
        self.write(A, "service/vm/web/config", '{"cpus": 2}')  # a PATCH
        wait_for(lambda: (self.status(A, "web") or {}).get("cpus") == 2, 20, "cpus 2")
        self.assertEqual(self.status(A, "web")["description"], "from a file")

        types = [l["type"] for l in self.log_lines(A, "web")]
        for t in ("machine.created", "machine.state", "machine.updated", "spool.taken",
                  "spool.done"):
            self.assertIn(t, types)
        self.command(A, "web", "destroy")
        wait_for(lambda: not os.path.exists(self.path(A, "info/vm/web")), 20, "status removed")
        self.assertEqual(d.request("GET", "/v1/machines/web")[0], 404)
        self.wait_line(A, "web", lambda l: l["type"] == "machine.deleted", "machine.deleted")


class SpoolHostile(SpoolTest):
    qemu = harness.FAKE_QEMU
    users = (A, B, C, D)

    def setUp(self):
        super().setUp()
        self.marker = "HANGAR-SECRET-" + secrets.token_hex(8)
        self.outside = tempfile.mkdtemp(prefix="hangar-outside-")
        os.chmod(self.outside, 0o755)
        self.secret = os.path.join(self.outside, "secret.json")  # root's, 0600
        with open(self.secret, "w") as f:
            json.dump({"description": self.marker, "memory_mib": 64}, f)
        os.chmod(self.secret, 0o600)
        self.victim = os.path.join(self.outside, "victim")  # root's, must stay as it is
        with open(self.victim, "w") as f:
            f.write("VICTIM\n")
        os.mkdir(os.path.join(self.outside, "victimdir"), 0o755)

    def tearDown(self):
        try:
            super().tearDown()
        finally:
            shutil.rmtree(self.outside, ignore_errors=True)

    def names_of(self, uid):
        s, body = self.daemon.request_as(uid, "GET", "/v1/machines")
        self.assertEqual(s, 200, body)
        return sorted(m["name"] for m in body["machines"])

    def healthy(self):
        self.assertTrue(pid_alive(self.daemon.pid))
        t0 = time.monotonic()
        s, _ = self.daemon.request("GET", "/v1/health", timeout=5)
        self.assertEqual(s, 200)
        self.assertLess(time.monotonic() - t0, 2)

    def test_hostile_trees_are_refused(self):
        d = self.daemon
        sp = lambda rel: self.path(A, rel)
        # Symbolic links: to the secret, to /etc/shadow, a machine dir into B's tree, and
        # C's whole service/ into B's.
        self.mkdir(B, "service/vm/bm")
        self.write(B, "service/vm/bm/keep", json.dumps({"description": self.marker}))
        for name, target in [("sym1", self.secret), ("sym2", "/etc/shadow")]:
            self.mkdir(A, f"service/vm/{name}")
            self.run_as(A, "ln", "-s", target, sp(f"service/vm/{name}/config"))
            self.assertIn("symbolic link", self.refusal(A, name, "config")["error"]["message"])
        self.mkdir(A, "service/vm")
        self.run_as(A, "ln", "-s", self.path(B, "service/vm/bm"), sp("service/vm/sym3"))
        self.assertIn("symbolic link", self.refusal(A, None, "service/vm/sym3")["error"]["message"])
        self.run_as(C, "ln", "-s", self.path(B, "service"), self.path(C, "service"))
        self.assertIn("symbolic link", self.refusal(C, None, "service")["error"]["message"])

        # Hard links: root's secret linked in (as with fs.protected_hardlinks=0), and a user's
        # own file with a second name.
        self.mkdir(A, "service/vm/hl1")
        os.link(self.secret, sp("service/vm/hl1/config"))
        self.assertEqual(self.refusal(A, "hl1", "config")["error"]["code"], "forbidden")
        self.write(A, "mine.json", json.dumps({"description": self.marker}))
        self.mkdir(A, "service/vm/hl2")
        self.run_as(A, "ln", sp("mine.json"), sp("service/vm/hl2/config"))
        self.assertIn("hard links", self.refusal(A, "hl2", "config")["error"]["message"])

        # FIFOs never block the daemon; a device is never opened.
        for name, file in [("fifo1", "config"), ("fifo2", "start")]:
            self.mkdir(A, f"service/vm/{name}")
            self.run_as(A, "mkfifo", sp(f"service/vm/{name}/{file}"))
            self.assertIn("FIFO", self.refusal(A, name, file)["error"]["message"])
        self.healthy()
        self.mkdir(A, "service/vm/dev1")
        os.mknod(sp("service/vm/dev1/config"), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        self.assertIn("device", self.refusal(A, "dev1", "config")["error"]["message"])

        # Too big, not empty, someone else's.
        self.mkdir(A, "service/vm/big1")
        self.write(A, "service/vm/big1/config", json.dumps({"description": "x" * 100000}))
        self.assertEqual(self.refusal(A, "big1", "config")["error"]["code"], "too_large")
        self.mkdir(A, "service/vm/full1")
        self.write(A, "service/vm/full1/start", "please")
        self.assertIn("must be empty", self.refusal(A, "full1", "start")["error"]["message"])
        self.mkdir(A, "service/vm/oth1")
        os.chmod(sp("service/vm/oth1"), 0o777)
        os.chmod(self.tree(A), 0o711)
        for p in ("service", "service/vm"):
            os.chmod(sp(p), 0o755)
        self.write(B, os.path.join("..", str(A), "service/vm/oth1/config"),
                   json.dumps({"description": self.marker}))
        self.assertIn("owned by uid 1002", self.refusal(A, "oth1", "config")["error"]["message"])

        # Names that are not machine names.
        for bad in ["Bad Name", "..x", "a" * 255, "UPPER"]:
            self.mkdir(A, f"service/vm/{bad}")
            self.write(A, f"service/vm/{bad}/config", "{}")
        wait_for(lambda: len([l for l in self.log_lines(A) if l["type"] == "spool.refused" and
                              l["error"]["code"] == "invalid_name"]) >= 4, 20,
                 "four invalid names refused")

        # Planted links where hangard writes: status.json and the log are replaced, not
        # followed; a whole info/ that is a link is not written through.
        self.mkdir(A, "info/vm/st1")
        self.mkdir(A, "logs/vm")
        self.run_as(A, "ln", "-s", self.victim, sp("info/vm/st1/status.json"))
        self.run_as(A, "ln", "-s", self.victim, sp("logs/vm/st1.log"))
        self.run_as(D, "ln", "-s", os.path.join(self.outside, "victimdir"), self.path(D, "info"))
        for uid in (A, D):
            self.mkdir(uid, "service/vm/st1" if uid == A else "service/vm/st4")
        self.write(A, "service/vm/st1/config", "{}")
        self.write(D, "service/vm/st4/config", "{}")
        st = self.wait_status(A, "st1", "stopped")
        self.created_uuids.append(st["uuid"])
        self.wait_line(A, "st1", lambda l: l["type"] == "machine.created", "st1's log")
        for rel in ("info/vm/st1/status.json", "logs/vm/st1.log"):
            info = os.lstat(sp(rel))
            self.assertTrue(stat.S_ISREG(info.st_mode), rel)
            self.assertEqual(info.st_uid, A, rel)
        self.wait_line(D, "st4", lambda l: l["type"] == "machine.created", "st4's log")
        self.assertIn("symbolic link", self.refusal(D, None, "status.json")["error"]["message"])
        self.assertEqual(os.listdir(os.path.join(self.outside, "victimdir")), [])

        # A flood: junk files and bad directories; the tree keeps working after it.
        flood = ("import os, sys\n"
                 "base = sys.argv[1]\n"
                 "os.makedirs(base + '/service/vm/flood', exist_ok=True)\n"
                 "for i in range(3000):\n"
                 "    open(f'{base}/service/vm/flood/junk{i}', 'w').close()\n"
                 "for i in range(300):\n"
                 "    os.mkdir(f'{base}/service/vm/Bad{i}')\n"
                 "for i in range(100):\n"
                 "    open(f'{base}/service/vm/flood/start', 'w').close()\n")
        self.run_as(A, "/usr/bin/python3", "-c", flood, self.tree(A))
        self.healthy()
        self.mkdir(A, "service/vm/after")
        self.write(A, "service/vm/after/config", "{}")
        self.command(A, "after", "start")
        st = self.wait_status(A, "after", "running")
        self.created_uuids.append(st["uuid"])

        # None of it created a machine, read the secret or wrote outside the tree.
        self.assertEqual(self.names_of(A), ["after", "st1"])
        self.assertEqual(self.names_of(B), [])
        self.assertEqual(self.names_of(D), ["st4"])
        s, everything = d.request("GET", "/v1/machines")
        self.assertNotIn(self.marker, json.dumps(everything))
        for root, dirs, files in os.walk(self.spool):
            for f in files:
                p = os.path.join(root, f)
                if stat.S_ISREG(os.lstat(p).st_mode) and f not in ("keep", "mine.json"):
                    with open(p, errors="replace") as fh:
                        self.assertNotIn(self.marker, fh.read(), p)
        self.assertNotIn(self.marker, d.log())
        with open(self.victim) as f:
            self.assertEqual(f.read(), "VICTIM\n")
        self.healthy()

    def test_lost_events_are_found_by_a_rescan(self):
        # hangard stopped while more events come than inotify queues (16384 by default): the
        # overflow makes it rescan, and what was written meanwhile is taken in order.
        self.command(A, "ovf", "stop")  # refused (no such machine): the directory is watched
        self.refusal(A, "ovf", "stop")
        os.kill(self.daemon.pid, signal.SIGSTOP)
        try:
            flood = ("import sys\n"
                     "for i in range(17000):\n"
                     "    open(f'{sys.argv[1]}/junk{i}', 'w').close()\n")
            self.run_as(A, "/usr/bin/python3", "-c", flood, self.path(A, "service/vm/ovf"))
            self.write(A, "service/vm/ovf/config", "{}")
            self.command(A, "ovf", "start")
        finally:
            os.kill(self.daemon.pid, signal.SIGCONT)
        st = self.wait_status(A, "ovf", "running")
        self.created_uuids.append(st["uuid"])
        self.assertIn("inotify queue overflowed", self.daemon.log())
        self.healthy()

    def test_files_are_taken_oldest_first(self):
        # Prepared outside service/ and moved in at once: taken by age, not by name.
        self.mkdir(A, "staging/ord1")
        now = time.time()
        for i, f in enumerate(["config", "start", "stop", "destroy"]):
            self.write(A, f"staging/ord1/{f}", "{}" if f == "config" else "")
            os.utime(self.path(A, f"staging/ord1/{f}"), (now + i, now + i))
        self.mkdir(A, "service/vm")
        self.run_as(A, "mv", self.path(A, "staging/ord1"), self.path(A, "service/vm/ord1"))
        self.wait_line(A, "ord1", lambda l: l["type"] == "machine.deleted", "ord1 deleted")
        lines = [(l["type"], l.get("file", "").rsplit("/", 1)[-1])
                 for l in self.log_lines(A, "ord1") if l["type"].startswith("spool.")]
        self.assertEqual(lines, [(t, f) for f in ("config", "start", "stop", "destroy")
                                 for t in ("spool.taken", "spool.done")], lines)
        # New trees are picked up while hangard runs.
        os.mkdir(self.tree(1005), 0o700)
        os.chown(self.tree(1005), 1005, 1005)
        self.mkdir(1005, "service/vm/late")
        self.write(1005, "service/vm/late/config", "{}")
        st = self.wait_status(1005, "late", "stopped")
        self.assertEqual(st["owner"], 1005)


if __name__ == "__main__":
    harness.main()
