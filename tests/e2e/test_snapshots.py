"""Snapshots of a VM's disks (/v1/machines/NAME/snapshots), external qcow2 overlays: taken while
the built-in guest runs (one QMP transaction; the guest keeps running) and while it is stopped,
of its root disk (a VM made from a disk image) and of attached disks together; restored (the
guest boots with what its disk held at the snapshot) and deleted (merged into the files made on
it, `qemu-img check` clean, the newest data intact); kept across a restart; a kill -9 of hangard
at many points of a create, a restore and a delete leaves no half snapshot and no stray file;
bad input refused with nothing changed."""
import os
import shutil
import subprocess
import tempfile
import threading
import time

import harness
from harness import DaemonTest, wait_for

HANGARCTL = harness.HANGARCTL


guest_boot = harness.guest_boot
info = harness.qemu_img_info


def check(path, shared=False):
    out = subprocess.run(["qemu-img", "check"] + (["-U"] if shared else []) +
                         ["-q", "-f", "qcow2", path], capture_output=True, text=True)
    return out.returncode, out.stdout + out.stderr


def write(path, pattern, offset=0):
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 64k", path],
                   check=True, capture_output=True)


def reads(path, pattern, offset=0, shared=False):
    """Whether the disk whose top is `path` holds `pattern` at `offset` (all its chain)."""
    out = subprocess.run(["qemu-io", "-r"] + (["-U"] if shared else []) + ["-f", "qcow2", "-c",
                          f"read -P {pattern} {offset} 64k", path], capture_output=True, text=True)
    return out.returncode == 0 and "Pattern verification failed" not in out.stdout


class Snapshots(DaemonTest):
    def setUp(self):
        super().setUp()
        self.files = tempfile.mkdtemp(prefix="hangar-e2e-snap-")
        os.chmod(self.files, 0o755)
        self.addCleanup(shutil.rmtree, self.files, True)

    def snap(self, machine, name, expect=201):
        s, body = self.daemon.request("POST", f"/v1/machines/{machine}/snapshots", {"name": name})
        self.assertEqual(s, expect, body)
        return body

    def snaps(self, machine):
        s, body = self.daemon.request("GET", f"/v1/machines/{machine}/snapshots")
        self.assertEqual(s, 200, body)
        return [x["name"] for x in body["snapshots"]]

    def top(self, disk):
        return self.daemon.request("GET", f"/v1/disks/{disk}")[1]["path"]

    def pool_files(self):
        d = os.path.join(self.state_dir, "pools", "default")
        return sorted(os.path.join(d, n) for n in os.listdir(d))

    def referenced(self, machine, disk):
        """The files of `disk` the records name: its top and the snapshots' layers."""
        s, body = self.daemon.request("GET", f"/v1/machines/{machine}/snapshots")
        files = {self.top(disk)}
        for x in body["snapshots"]:
            files |= {d["file"] for d in x["disks"] if d.get("disk") == disk}
        return sorted(files)

    def test_stopped_snapshots_restore_and_delete_of_an_attached_disk(self):
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "data1", "size_gib": 1})
        self.assertEqual(s, 201, d)
        original = d["path"]
        self.create("web")
        s, _ = self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data1"})
        self.assertEqual(s, 200)
        write(original, "0x41")

        s1 = self.snap("web", "s1")
        self.assertEqual((s1["name"], s1["machine"], s1["parent"], s1["current"], s1["memory"],
                          s1["running"]), ("s1", "web", "", True, False, False))
        self.assertEqual(s1["disks"], [{"disk": "data1", "file": original}])
        top1 = self.top("data1")
        self.assertNotEqual(top1, original)
        self.assertEqual(info(top1)["backing-filename"], os.path.basename(original))
        write(top1, "0x42")
        s2 = self.snap("web", "s2")
        self.assertEqual((s2["parent"], s2["disks"][0]["file"]), ("s1", top1))
        top2 = self.top("data1")
        write(top2, "0x43")
        self.assertEqual(self.snaps("web"), ["s1", "s2"])
        self.assertFalse(self.daemon.request("GET", "/v1/machines/web/snapshots/s1")[1]["current"])

        # Restore s1: the disk reads what it held then; s2 stays and can be restored too.
        s, m = self.daemon.request("POST", "/v1/machines/web/snapshots/s1/restore")
        self.assertEqual((s, m.get("name")), (200, "web"), m)
        self.assertTrue(reads(self.top("data1"), "0x41"))
        self.assertFalse(os.path.exists(top2))  # what was written since went
        self.assertTrue(self.daemon.request("GET", "/v1/machines/web/snapshots/s1")[1]["current"])
        s, _ = self.daemon.request("POST", "/v1/machines/web/snapshots/s2/restore")
        self.assertEqual(s, 200)
        self.assertTrue(reads(self.top("data1"), "0x42"))
        write(self.top("data1"), "0x44", 1 << 20)

        # The records and the files agree; kept across a kill -9.
        self.assertEqual(self.referenced("web", "data1"), self.pool_files())
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(self.snaps("web"), ["s1", "s2"])

        # Delete s1 (under s2): merged into s2's layer, its file gone, the newest data intact.
        s, _ = self.daemon.request("DELETE", "/v1/machines/web/snapshots/s1")
        self.assertEqual(s, 200)
        self.assertEqual(self.snaps("web"), ["s2"])
        self.assertFalse(os.path.exists(original))
        self.assertEqual(self.daemon.request("GET", "/v1/machines/web/snapshots/s2")[1]["parent"],
                         "")
        top = self.top("data1")
        self.assertTrue(reads(top, "0x42") and reads(top, "0x44", 1 << 20))
        for f in self.pool_files():
            self.assertEqual(check(f)[0], 0, check(f))
        self.assertEqual(self.referenced("web", "data1"), self.pool_files())
        # While a snapshot holds the disk's layers, detaching it is refused.
        self.refused(self.daemon.request("DELETE", "/v1/machines/web/disks/data1"), 409,
                     "invalid_state", "snapshots s2 of web")
        s, _ = self.daemon.request("DELETE", "/v1/machines/web/snapshots/s2")
        self.assertEqual(s, 200)
        self.assertEqual(self.pool_files(), [self.top("data1")])
        self.assertTrue(reads(self.top("data1"), "0x42"))
        self.assertNotIn("backing-filename", info(self.top("data1")))

        # The VM boots on its disk's top, and a deleted machine's disk goes with its layers.
        self.snap("web", "s3")
        m = self.daemon.action("web", "start")
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            self.assertIn(self.top("data1").encode(), f.read())
        s, _ = self.daemon.request("DELETE", "/v1/machines/web?force=true")
        self.assertEqual(s, 200)
        s, _ = self.daemon.request("DELETE", "/v1/disks/data1")
        self.assertEqual(s, 200)
        self.assertEqual(self.pool_files(), [])

    def test_running_guest_root_disk_snapshot_restores_what_it_wrote(self):
        self.import_disk_image(self.files, "base", "BASEIMG-1")
        self.create("web", image="base", boot=guest_boot())
        s, _ = self.daemon.request("POST", "/v1/disks", {"name": "data2", "size_gib": 1})
        self.assertEqual(s, 201)
        s, _ = self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data2"})
        self.assertEqual(s, 200)
        self.daemon.action("web", "start")
        wait_for(lambda: "HANGAR-DISK: BASEIMG-1" in self.console("web"), 90, "the guest's boot")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("web"), 90, "the guest's shell")

        self.type_in("web", "echo SNAP-ONE | dd of=/dev/vda conv=fsync && echo WROTE-$((1+1))")
        wait_for(lambda: "WROTE-2" in self.console("web"), 30, "the first write")
        t0 = time.monotonic()
        s1 = self.snap("web", "s1")
        took = time.monotonic() - t0
        self.assertTrue(s1["running"])
        self.assertEqual([("root" if d.get("root") else d["disk"]) for d in s1["disks"]],
                         ["root", "data2"])
        self.assertEqual(self.daemon.machine("web")["state"], "running")
        # The guest goes on, now writing the new tops.
        self.type_in("web", "echo SNAP-TWO | dd of=/dev/vda conv=fsync && echo WROTE-$((2+1))")
        wait_for(lambda: "WROTE-3" in self.console("web"), 30, "the second write")
        root_top = [f for f in os.listdir(os.path.join(self.state_dir, "machines", "web"))
                    if f.startswith("root@")]
        self.assertEqual(len(root_top), 1, root_top)
        # QEMU holds the new top's lock, and the old one is its backing file.
        top_path = os.path.join(self.state_dir, "machines", "web", root_top[0])
        held = subprocess.run(["qemu-img", "info", top_path], capture_output=True, text=True)
        self.assertIn("lock", held.stderr)
        self.assertEqual(info(top_path)["backing-filename"], "root.qcow2")
        # Grown live after the snapshot: block_resize reaches the new top.
        s, g = self.daemon.request("PATCH", "/v1/disks/data2", {"size_gib": 2})
        self.assertEqual(s, 200, g)
        self.assertEqual(info(self.top("data2"))["virtual-size"], 2 << 30)

        # Restored while it runs: the VM is killed, its disks go back, and it boots again with
        # what s1 held.
        s, m = self.daemon.request("POST", "/v1/machines/web/snapshots/s1/restore")
        self.assertEqual((s, m.get("state")), (200, "running"), m)
        self.assertFalse(os.path.exists(top_path))
        wait_for(lambda: self.console("web").count("HANGAR-DISK:") >= 2, 90, "the second boot")
        last = self.console("web").rsplit("HANGAR-DISK:", 1)[1].splitlines()[0]
        self.assertIn("SNAP-ONE", last)
        print(f"live snapshot of 2 disks: {took * 1000:.0f} ms through the API")

    def test_chain_of_three_delete_the_middle_one_live(self):
        """s1, s2, s3 taken while the guest writes a marker between each; s2 deleted while the
        guest runs (QEMU's block-stream merges its layer into s3's): every file passes
        `qemu-img check`, the guest reads all its markers, and s3 restores with s2's data."""
        self.import_disk_image(self.files, "base", "BASEIMG-3")
        self.create("web", image="base", boot=guest_boot())
        s, _ = self.daemon.request("POST", "/v1/disks", {"name": "data3", "size_gib": 1})
        self.assertEqual(s, 201)
        s, _ = self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data3"})
        self.assertEqual(s, 200)
        self.daemon.action("web", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("web"), 90, "the guest's shell")

        def put(n, marker):
            self.type_in("web", f"echo {marker} | dd of=/dev/vda bs=1M seek={n} conv=fsync && "
                                f"echo {marker} | dd of=/dev/sda bs=1M seek={n} conv=fsync && "
                                f"echo PUT-$(({n}+100))")
            wait_for(lambda: f"PUT-{n + 100}" in self.console("web"), 30, f"write {marker}")

        reads_done = [0]

        def got(dev, n):
            reads_done[0] += 1
            tag = f"GOT{reads_done[0]}{dev}{n}"
            self.type_in("web", "echo 3 > /proc/sys/vm/drop_caches; "
                                f"echo {tag}:$(dd if=/dev/{dev} bs=1M skip={n} count=1 "
                                "2>/dev/null | head -c 11):END")
            wait_for(lambda: f"{tag}:" in self.console("web").replace(f"{tag}:$(", ""), 30,
                     f"read {dev} {n}")
            out = self.console("web").replace(f"{tag}:$(", "")
            return out.rsplit(f"{tag}:", 1)[1].split(":END", 1)[0]

        markers = ["LAYER-ONE", "LAYER-TWO", "LAYER-THR", "LAYER-NOW"]
        for i, marker in enumerate(markers):
            put(i, marker)
            if i < 3:
                self.snap("web", f"s{i + 1}")
        s, body = self.daemon.request("GET", "/v1/machines/web/snapshots/s2")
        s2_files = [d["file"] for d in body["disks"]]
        s, body = self.daemon.request("GET", "/v1/machines/web/snapshots/s3")
        s3_files = [d["file"] for d in body["disks"]]
        s, body = self.daemon.request("GET", "/v1/machines/web/snapshots/s1")
        s1_files = [d["file"] for d in body["disks"]]
        for f in s3_files:
            self.assertEqual(info(f)["full-backing-filename"].rsplit("/", 1)[-1],
                             s2_files[s3_files.index(f)].rsplit("/", 1)[-1])

        t0 = time.monotonic()
        s, gone = self.daemon.request("DELETE", "/v1/machines/web/snapshots/s2")
        took = time.monotonic() - t0
        self.assertEqual(s, 200, gone)
        self.assertEqual(self.daemon.machine("web")["state"], "running")
        self.assertEqual(self.snaps("web"), ["s1", "s3"])
        for f in s2_files:
            self.assertFalse(os.path.exists(f), f)
        # s3's layers now read from s1's, and hold what s2's held.
        for f, below in zip(s3_files, s1_files):
            self.assertEqual(os.path.realpath(info(f)["full-backing-filename"]),
                             os.path.realpath(below))
            rc, out = check(f)
            self.assertEqual(rc, 0, out)
        for f in self.referenced("web", "data3"):
            subprocess.run(["qemu-img", "check", "-U", "-q", f], check=True)
        # The guest, still running, reads every marker from its chain.
        for i, marker in enumerate(markers):
            self.assertEqual(got("vda", i), marker)
            self.assertEqual(got("sda", i), marker)

        # Stopped, s3 comes back with s2's data merged in it, and without what came after.
        self.daemon.action("web", "kill")
        self.daemon.wait_state("web", "stopped")
        s, _ = self.daemon.request("POST", "/v1/machines/web/snapshots/s3/restore")
        self.assertEqual(s, 200)
        for f in self.referenced("web", "data3"):
            rc, out = check(f)
            self.assertEqual(rc, 0, out)
        self.daemon.action("web", "start")
        wait_for(lambda: self.console("web").count("HANGAR-GUEST-READY") >= 2, 90,
                 "the second boot")
        for dev in ("vda", "sda"):
            self.assertEqual([got(dev, i) for i in range(3)], markers[:3])
            self.assertNotIn("LAYER", got(dev, 3))
        print(f"live delete of the middle of 3 snapshots (2 disks): {took * 1000:.0f} ms")

    def test_memory_snapshot_resumes_the_guest_where_it_was(self):
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "m1", "size_gib": 1})
        self.assertEqual(s, 201, d)
        self.create("mem")
        s, _ = self.daemon.request("POST", "/v1/machines/mem/disks", {"disk": "m1"})
        self.assertEqual(s, 200)
        self.refused(self.daemon.request("POST", "/v1/machines/mem/snapshots",
                                         {"name": "s1", "memory": True}), 409, "invalid_state",
                     "running")
        self.daemon.action("mem", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("mem"), 90, "the guest's shell")
        # State only the guest's memory holds (a shell variable), and a disk write.
        self.type_in("mem", "X=before-snap; echo DISK-ONE | dd of=/dev/sda conv=fsync")
        before = self.uptime("mem", "UP1")
        t0 = time.monotonic()
        s, s1 = self.daemon.request("POST", "/v1/machines/mem/snapshots?wait=true",
                                    {"name": "s1", "memory": True})
        took = time.monotonic() - t0
        self.assertEqual(s, 201, s1)
        self.assertTrue(s1["memory"], s1)
        self.assertGreater(s1["memory_bytes"], 0)
        self.assertEqual(self.daemon.machine("mem")["state"], "running")
        mem_files = [f for f in os.listdir(os.path.join(self.state_dir, "machines", "mem"))
                     if f.startswith("memory@")]
        self.assertEqual(len(mem_files), 1, mem_files)
        # The guest goes on: it changes the variable and the disk, time passes.
        self.type_in("mem", "X=after-snap; echo DISK-TWO | dd of=/dev/sda conv=fsync")
        time.sleep(3)
        later = self.uptime("mem", "UP2")
        self.assertGreater(later, before + 2.5)

        # Restored while the guest is paused (or runs): what runs is dropped, and the guest
        # resumes where s1 was.
        self.daemon.action("mem", "pause")
        s, m = self.daemon.request("POST", "/v1/machines/mem/snapshots/s1/restore")
        self.assertEqual((s, m.get("state")), (200, "running"), m)
        self.assertEqual(self.ask("mem", "echo VAR0:$X:END", "VAR0"), "before-snap")
        # And from a stopped VM, timed.
        self.daemon.action("mem", "kill")
        self.daemon.wait_state("mem", "stopped")
        t0 = time.monotonic()
        s, m = self.daemon.request("POST", "/v1/machines/mem/snapshots/s1/restore")
        restore_took = time.monotonic() - t0
        self.assertEqual(s, 200, m)
        self.assertEqual(m["state"], "running", m)
        self.assertEqual(self.ask("mem", "echo VAR:$X:END", "VAR"), "before-snap")
        resumed = self.uptime("mem", "UP3")
        self.assertGreaterEqual(resumed, before)
        self.assertLess(resumed, later)
        self.assertEqual(self.ask("mem", "echo 3 > /proc/sys/vm/drop_caches; "
                                         "echo SDA:$(head -c 8 /dev/sda):END", "SDA"), "DISK-ONE")

        # Without ?wait, an operation: 202 at once, then operation.done.
        s, acc = self.daemon.request("POST", "/v1/machines/mem/snapshots",
                                     {"name": "s3", "memory": True})
        self.assertEqual(s, 202, acc)
        wait_for(lambda: self.daemon.request("GET", f"/v1/operations/{acc['operation']}")[1]
                 .get("status") != "running", 30, "the operation")
        s, op = self.daemon.request("GET", f"/v1/operations/{acc['operation']}")
        self.assertEqual((op["status"], op["action"], op["machine"]), ("succeeded", "snapshot",
                                                                      "mem"), op)
        self.assertTrue(self.daemon.request("GET", "/v1/machines/mem/snapshots/s3")[1]["memory"])
        # Refusals come at once, not as an operation.
        self.refused(self.daemon.request("POST", "/v1/machines/mem/snapshots",
                                         {"name": "s3", "memory": True}), 409, "conflict")

        # Through hangarctl: another one with memory, listed as such.
        def ctl(*args):
            out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "snapshot", *args],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, 0, out.stderr)
            return out.stdout
        self.assertIn("snapshot s2 taken", ctl("create", "mem", "s2", "--memory"))
        rows = {parts[0]: parts for parts in
                (line.replace("*", " ").split() for line in ctl("list", "mem").splitlines()[1:])}
        self.assertEqual(rows["s2"][-2:], ["yes", "running"], rows)

        # Restored again and again, the saved guest always runs (whenever hangard's cont
        # arrives during the load).
        for i in range(3):
            self.daemon.action("mem", "kill")
            self.daemon.wait_state("mem", "stopped")
            s, m = self.daemon.request("POST", "/v1/machines/mem/snapshots/s2/restore")
            self.assertEqual((s, m.get("state")), (200, "running"), m)
            self.assertEqual(self.ask("mem", f"echo AGAIN{i}:$((40+{i})):END", f"AGAIN{i}"),
                             str(40 + i))

        # Its disks only: the VM stays stopped and boots.
        self.daemon.action("mem", "kill")
        self.daemon.wait_state("mem", "stopped")
        self.assertIn("back at snapshot s1 (stopped)", ctl("restore", "mem", "s1", "--disks-only"))
        m = self.daemon.machine("mem")
        self.assertEqual(m["state"], "stopped", m)
        # Other hardware than the saved guest had: refused, nothing changed.
        s, _ = self.daemon.request("PATCH", "/v1/machines/mem", {"memory_mib": 192})
        self.assertEqual(s, 200)
        self.refused(self.daemon.request("POST", "/v1/machines/mem/snapshots/s1/restore"), 409,
                     "invalid_state", "memory_mib=128")
        self.assertEqual(self.daemon.machine("mem")["state"], "stopped")
        self.refused(self.daemon.request("POST", "/v1/machines/mem/snapshots/s1/restore",
                                         {"memory": "no"}), 400, "bad_request")
        s, _ = self.daemon.request("DELETE", "/v1/machines/mem/snapshots/s1")
        self.assertEqual(s, 200)
        self.assertFalse(os.path.exists(
            os.path.join(self.state_dir, "machines", "mem", mem_files[0])))
        print(f"memory snapshot: {took * 1000:.0f} ms, {s1['memory_bytes'] >> 20} MiB; "
              f"restore to running: {restore_took * 1000:.0f} ms")

    def test_kill_9_during_a_memory_snapshot_leaves_the_guest_running(self):
        self.create("mk")
        self.daemon.action("mk", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("mk"), 90, "the guest's shell")
        outcomes = set()
        mdir = os.path.join(self.state_dir, "machines", "mk")
        for i, delay in enumerate([0.0, 0.01, 0.03, 0.06, 0.1, 0.2, 0.4]):
            name = f"k{i}"
            t = threading.Thread(target=lambda: self.daemon.request(
                "POST", "/v1/machines/mk/snapshots", {"name": name, "memory": True}, timeout=20))
            t.start()
            time.sleep(delay)
            self.daemon.kill()
            t.join()
            self.daemon.start()
            wait_for(lambda: self.daemon.request("GET", "/v1/machines/mk/snapshots")[0] == 200,
                     20, "the daemon")
            # The guest runs again (never left paused by a cut-off save) and answers.
            wait_for(lambda: self.daemon.machine("mk")["state"] == "running", 20,
                     f"mk running after {delay}")
            self.assertEqual(self.ask("mk", f"echo ALIVE{i}:$((6*7)):END", f"ALIVE{i}"), "42")
            s, body = self.daemon.request("GET", f"/v1/machines/mk/snapshots/{name}")
            state = "none" if s == 404 else ("memory" if body["memory"] else "disks")
            outcomes.add(state)
            # Recovery settles: a memory file for each snapshot with memory, no other.
            def settled():
                files = [f for f in os.listdir(mdir) if f.startswith("memory@")]
                s, body = self.daemon.request("GET", "/v1/machines/mk/snapshots")
                return s == 200 and len(files) == len([x for x in body["snapshots"]
                                                       if x["memory"]])
            wait_for(settled, 20, f"memory files after {delay}")
        # After all that, one more save completes.
        s, body = self.daemon.request("POST", "/v1/machines/mk/snapshots?wait=true",
                                      {"name": "last", "memory": True})
        self.assertEqual(s, 201, body)
        self.assertTrue(body["memory"])
        self.assertNotIn("disks", outcomes)  # no disks: without its memory it is nothing
        print("memory-save outcomes across the kill points:", outcomes)

    def test_bad_input_changes_nothing(self):
        self.create("bare")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots", {"name": "s1"}),
                     409, "invalid_state", "no disks to snapshot")
        s, _ = self.daemon.request("POST", "/v1/disks", {"name": "d1", "size_gib": 1})
        self.assertEqual(s, 201)
        s, _ = self.daemon.request("POST", "/v1/machines/bare/disks", {"disk": "d1"})
        self.assertEqual(s, 200)
        before = self.pool_files()
        for bad in ["../x", "has space", "A", "x" * 300, ""]:
            s, body = self.daemon.request("POST", "/v1/machines/bare/snapshots", {"name": bad})
            self.assertIn(s, (400,), (bad, body))
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots",
                                         raw='{"name": "s1"'), 400, "invalid_json")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots",
                                         {"name": "s1", "bogus": 1}), 400, "bad_request")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots",
                                         {"name": "s1", "memory": "yes"}), 400, "bad_request")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots",
                                         {"name": "s1", "memory": True}), 409, "invalid_state",
                     "needs bare running")
        self.refused(self.daemon.request("POST", "/v1/machines/nope/snapshots", {"name": "s1"}),
                     404, "not_found")
        self.refused(self.daemon.request("GET", "/v1/machines/bare/snapshots/nope"), 404,
                     "not_found")
        self.refused(self.daemon.request("GET", "/v1/machines/bare/snapshots/..%2Fx"), 400,
                     "invalid_name")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots/nope/restore"), 404,
                     "not_found")
        self.refused(self.daemon.request("DELETE", "/v1/machines/bare/snapshots/nope"), 404,
                     "not_found")
        self.assertEqual(self.pool_files(), before)
        self.assertEqual(self.snaps("bare"), [])
        self.snap("bare", "s1")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots", {"name": "s1"}),
                     409, "conflict", "already")
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots/s1/restore",
                                         {"x": 1}), 400, "bad_request")
        # Another user sees neither the machine nor its snapshots.
        s, _ = self.daemon.request_as(1001, "GET", "/v1/machines/bare/snapshots")
        self.assertEqual(s, 404)
        # A raw disk cannot take a snapshot.
        raw = os.path.join(self.files, "r.raw")
        with open(raw, "wb") as f:
            f.truncate(1 << 20)
        os.chmod(raw, 0o644)
        s, body = self.daemon.request("POST", "/v1/disks",
                                      {"name": "r1", "source": {"file": raw}})
        self.assertEqual((s, body.get("format")), (201, "raw"), body)
        s, _ = self.daemon.request("POST", "/v1/machines/bare/disks", {"disk": "r1"})
        self.assertEqual(s, 200)
        self.refused(self.daemon.request("POST", "/v1/machines/bare/snapshots", {"name": "s2"}),
                     422, "invalid_spec", "raw")
        self.assertEqual(self.snaps("bare"), ["s1"])

    def test_kill_9_at_any_step_converges(self):
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "k1", "size_gib": 1})
        self.assertEqual(s, 201, d)
        self.create("vm")
        s, _ = self.daemon.request("POST", "/v1/machines/vm/disks", {"disk": "k1"})
        self.assertEqual(s, 200)
        write(d["path"], "0x51")
        self.snap("vm", "base")
        write(self.top("k1"), "0x52")

        def consistent(what):
            files = self.pool_files()
            self.assertEqual(self.referenced("vm", "k1"), files, what)
            for f in files:
                self.assertEqual(check(f)[0], 0, (what, f, check(f)))
            self.assertTrue(reads(self.top("k1"), "0x52") or reads(self.top("k1"), "0x51"), what)

        def interrupted(method, path, body, delay):
            t = threading.Thread(target=lambda: self.daemon.request(method, path, body,
                                                                    timeout=20))
            t.start()
            time.sleep(delay)
            self.daemon.kill()
            t.join()
            self.daemon.start()
            # Once recovered, the machine's snapshots can be changed again.
            wait_for(lambda: self.daemon.request("POST", "/v1/machines/vm/snapshots",
                                                 {"name": "probe"})[0] == 201, 20, "recovery")
            self.assertEqual(self.daemon.request("DELETE",
                                                 "/v1/machines/vm/snapshots/probe")[0], 200)

        outcomes = {"create": set(), "restore": set(), "delete": set()}
        for i, delay in enumerate([0.0, 0.003, 0.006, 0.01, 0.015, 0.02, 0.03, 0.05, 0.08, 0.12]):
            name = f"k{i}"
            interrupted("POST", "/v1/machines/vm/snapshots", {"name": name}, delay)
            consistent(f"create {delay}")
            made = name in self.snaps("vm")
            outcomes["create"].add(made)
            if not made:
                self.snap("vm", name)
            interrupted("POST", "/v1/machines/vm/snapshots/base/restore", None, delay)
            consistent(f"restore {delay}")
            outcomes["restore"].add(reads(self.top("k1"), "0x51"))
            s, _ = self.daemon.request("POST", "/v1/machines/vm/snapshots/base/restore")
            self.assertEqual(s, 200)
            self.assertTrue(reads(self.top("k1"), "0x51"))
            write(self.top("k1"), "0x52")
            interrupted("DELETE", f"/v1/machines/vm/snapshots/{name}", None, delay)
            consistent(f"delete {delay}")
            outcomes["delete"].add(name in self.snaps("vm"))
            if name in self.snaps("vm"):
                self.assertEqual(
                    self.daemon.request("DELETE", f"/v1/machines/vm/snapshots/{name}")[0], 200)
            consistent(f"after {delay}")
        self.assertEqual(self.snaps("vm"), ["base"])
        print("outcomes across the kill points:", outcomes)

    def test_kill_9_during_live_create_and_delete_converges(self):
        """The same while the guest runs: QEMU goes on (adopted), writes the top the records
        name, and every file passes `qemu-img check -U`."""
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "k2", "size_gib": 1})
        self.assertEqual(s, 201, d)
        self.create("lv")
        s, _ = self.daemon.request("POST", "/v1/machines/lv/disks", {"disk": "k2"})
        self.assertEqual(s, 200)
        write(d["path"], "0x61")
        self.daemon.action("lv", "start")
        self.snap("lv", "base")

        def consistent(what):
            self.assertEqual(self.daemon.machine("lv")["state"], "running", what)
            files = self.pool_files()
            self.assertEqual(self.referenced("lv", "k2"), files, what)
            for f in files:
                self.assertEqual(check(f, shared=True)[0], 0, (what, f, check(f, True)))
            # QEMU writes the recorded top: its lock is held.
            held = subprocess.run(["qemu-img", "info", self.top("k2")], capture_output=True,
                                  text=True)
            self.assertIn("lock", held.stderr, what)
            self.assertTrue(reads(self.top("k2"), "0x61", shared=True), what)

        def interrupted(method, path, body, delay):
            t = threading.Thread(target=lambda: self.daemon.request(method, path, body,
                                                                    timeout=20))
            t.start()
            time.sleep(delay)
            self.daemon.kill()
            t.join()
            self.daemon.start()
            wait_for(lambda: self.daemon.request("POST", "/v1/machines/lv/snapshots",
                                                 {"name": "probe"})[0] == 201, 20, "recovery")
            self.assertEqual(self.daemon.request("DELETE",
                                                 "/v1/machines/lv/snapshots/probe")[0], 200)

        outcomes = {"create": set(), "delete": set()}
        for i, delay in enumerate([0.0, 0.005, 0.01, 0.02, 0.04, 0.08]):
            name = f"l{i}"
            interrupted("POST", "/v1/machines/lv/snapshots", {"name": name}, delay)
            consistent(f"create {delay}")
            outcomes["create"].add(name in self.snaps("lv"))
            if name not in self.snaps("lv"):
                self.snap("lv", name)
            interrupted("DELETE", f"/v1/machines/lv/snapshots/{name}", None, delay)
            consistent(f"delete {delay}")
            outcomes["delete"].add(name in self.snaps("lv"))
            if name in self.snaps("lv"):
                s, body = self.daemon.request("DELETE", f"/v1/machines/lv/snapshots/{name}")
                self.assertEqual(s, 200, body)
            consistent(f"after {delay}")
        self.assertEqual(self.snaps("lv"), ["base"])
        print("live outcomes across the kill points:", outcomes)


if __name__ == "__main__":
    harness.main()
