"""Clones of a VM (POST /v1/machines/NAME/clone): a new machine on copies of the source's disks
as they are (the source stopped) or as a snapshot holds them (the source running); each copy is
one file of the clone's own, on the disk's base image only (its data identical to the source's
chain: `qemu-img compare`), so the source can go and the clone still boots what it held. A
snapshot with memory gives a warm start: the clone's first start resumes the saved guest (its
shell variables, its uptime). Refusals change nothing; a kill -9 of hangard at any point of a
clone leaves the whole clone or nothing."""
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
sha256 = harness.sha256


def same_data(a, b):
    out = subprocess.run(["qemu-img", "compare", "-U", a, b], capture_output=True, text=True)
    return out.returncode == 0, out.stdout + out.stderr


def write(path, pattern, offset=0):
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {pattern} {offset} 64k", path],
                   check=True, capture_output=True)


class Clones(DaemonTest):
    def setUp(self):
        super().setUp()
        self.files = tempfile.mkdtemp(prefix="hangar-e2e-clone-")
        os.chmod(self.files, 0o755)
        self.addCleanup(shutil.rmtree, self.files, True)

    def machines_dir(self):
        return os.path.join(self.state_dir, "machines")

    def disk(self, name):
        s, d = self.daemon.request("GET", f"/v1/disks/{name}")
        return d if s == 200 else None

    def names(self, what):
        s, body = self.daemon.request("GET", f"/v1/{what}")
        self.assertEqual(s, 200, body)
        key = "machines" if what == "machines" else what
        return sorted(x["name"] for x in body[key])

    def leftovers(self):
        """Files a clone in flight keeps: staging directories, temporary disk files."""
        pool = os.path.join(self.state_dir, "pools", "default")
        return sorted([n for n in os.listdir(self.machines_dir()) if n.startswith(".clone-")] +
                      [n for n in os.listdir(pool) if n.startswith(".new-")] +
                      [n for n in os.listdir(self.machines_dir())
                       if os.path.exists(os.path.join(self.machines_dir(), n, "clone-pending"))])

    def test_clone_of_a_stopped_vm_holds_its_disks_and_needs_nothing_of_it(self):
        self.import_disk_image(self.files, "base", "BASEIMG-C")
        base_file = os.path.join(self.state_dir, "images", "base", "disk.qcow2")
        base_sum = sha256(base_file)
        self.create("src", image="base", boot=guest_boot())
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "d1", "size_gib": 1})
        self.assertEqual(s, 201, d)
        s, _ = self.daemon.request("POST", "/v1/machines/src/disks", {"disk": "d1"})
        self.assertEqual(s, 200)
        # The guest writes its root disk and its data disk; a snapshot; then more, so each
        # disk is a chain of two files on its base.
        self.daemon.action("src", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("src"), 90, "the guest's shell")
        self.type_in("src", "echo ROOT-ONE | dd of=/dev/vda conv=fsync; "
                            "echo DATA-ONE | dd of=/dev/sda conv=fsync; echo W-$((1+1))")
        wait_for(lambda: "W-2" in self.console("src"), 30, "the first writes")
        s, _ = self.daemon.request("POST", "/v1/machines/src/snapshots", {"name": "s1"})
        self.assertEqual(s, 201)
        self.type_in("src", "echo ROOT-TWO | dd of=/dev/vda bs=1 seek=16 conv=notrunc,fsync; "
                            "echo DATA-TWO | dd of=/dev/sda bs=1 seek=16 conv=notrunc,fsync; "
                            "echo W-$((2+1))")
        wait_for(lambda: "W-3" in self.console("src"), 30, "the second writes")

        # Running, it is cloned only from a snapshot.
        self.refused(self.daemon.request("POST", "/v1/machines/src/clone", {"name": "c1"}), 409,
                     "invalid_state", "stopped")
        self.daemon.action("src", "stop")
        self.daemon.wait_state("src", "stopped", 60)
        root_top = [os.path.join(self.machines_dir(), "src", f)
                    for f in os.listdir(os.path.join(self.machines_dir(), "src"))
                    if f.startswith("root@")][0]
        t0 = time.monotonic()
        s, c1 = self.daemon.request("POST", "/v1/machines/src/clone?wait=true", {"name": "c1"})
        took = time.monotonic() - t0
        self.assertEqual(s, 201, c1)
        src = self.daemon.machine("src")
        self.assertEqual((c1["name"], c1["state"], c1["image"]), ("c1", "stopped", "base"), c1)
        self.assertNotEqual(c1["uuid"], src["uuid"])
        self.assertEqual([x.get("disk") for x in c1["disks"]], [None, "c1-d1"], c1)
        copy = self.disk("c1-d1")
        self.assertEqual((copy["source"], copy["used_by"]), ({"disk": "d1"}, ["c1"]), copy)
        # Each copy: one file, on the base image only, the same data as the source's chain.
        c1_root = os.path.join(self.machines_dir(), "c1", "root.qcow2")
        self.assertEqual(info(c1_root)["backing-filename"],
                         os.path.relpath(base_file, os.path.dirname(c1_root)))
        self.assertNotIn("backing-filename", info(copy["path"]))
        self.assertEqual(same_data(root_top, c1_root), (True, "Images are identical.\n"))
        self.assertEqual(same_data(self.disk("d1")["path"], copy["path"])[0], True)
        self.assertEqual(self.leftovers(), [])

        # The source goes, with its disk; the clone boots what the source's disks held.
        s, _ = self.daemon.request("DELETE", "/v1/machines/src")
        self.assertEqual(s, 200)
        s, _ = self.daemon.request("DELETE", "/v1/disks/d1")
        self.assertEqual(s, 200)
        self.daemon.action("c1", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("c1"), 90, "the clone's shell")
        self.assertIn("HANGAR-DISK: ROOT-ONE", self.console("c1"))
        self.assertEqual(self.ask("c1", "echo R:$(head -c 24 /dev/vda | tr -d '\\n\\0'):END",
                                  "R"), "ROOT-ONEROOT-TWO")
        self.assertEqual(self.ask("c1", "echo D:$(head -c 24 /dev/sda | tr -d '\\n\\0'):END",
                                  "D"), "DATA-ONEDATA-TWO")
        self.assertEqual(sha256(base_file), base_sum)
        print(f"clone of a stopped VM (root and one disk, chains of 2): {took * 1000:.0f} ms")

        # hangarctl: a clone of the clone.
        self.daemon.action("c1", "kill")
        self.daemon.wait_state("c1", "stopped")
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "clone", "c1", "c2"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("c2: cloned from c1 (stopped)", out.stdout)
        self.assertEqual([x.get("disk") for x in self.daemon.machine("c2")["disks"]], [None, "c2-c1-d1"])

    def test_clone_of_a_snapshot_with_memory_starts_warm(self):
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "m1", "size_gib": 1})
        self.assertEqual(s, 201, d)
        self.create("warm")
        s, _ = self.daemon.request("POST", "/v1/machines/warm/disks", {"disk": "m1"})
        self.assertEqual(s, 200)
        self.daemon.action("warm", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("warm"), 90, "the guest's shell")
        self.type_in("warm", "X=saved-in-s1; echo DISK-ONE | dd of=/dev/sda conv=fsync")
        before = self.uptime("warm", "UP1")
        s, s1 = self.daemon.request("POST", "/v1/machines/warm/snapshots?wait=true",
                                    {"name": "s1", "memory": True})
        self.assertEqual(s, 201, s1)
        self.type_in("warm", "X=after-s1; echo DISK-TWO | dd of=/dev/sda conv=fsync")

        # Cloned while the source runs: an operation (202), the source keeps running.
        s, acc = self.daemon.request("POST", "/v1/machines/warm/clone",
                                     {"name": "w2", "snapshot": "s1"})
        self.assertEqual(s, 202, acc)
        wait_for(lambda: self.daemon.request("GET", f"/v1/operations/{acc['operation']}")[1]
                 .get("status") != "running", 60, "the clone's operation")
        s, op = self.daemon.request("GET", f"/v1/operations/{acc['operation']}")
        self.assertEqual((op["status"], op["action"]), ("succeeded", "clone"), op)
        self.assertEqual(op["progress"]["phase"], "copying the saved guest", op)
        self.assertEqual(self.daemon.machine("warm")["state"], "running")
        w2_dir = os.path.join(self.machines_dir(), "w2")
        self.assertTrue(os.path.exists(os.path.join(w2_dir, "warm-start.mem")))
        self.daemon.action("warm", "kill")
        self.daemon.wait_state("warm", "stopped")

        # Its first start resumes the saved guest.
        t0 = time.monotonic()
        self.daemon.action("w2", "start")
        self.daemon.wait_state("w2", "running", 30)
        warm_took = time.monotonic() - t0
        self.assertEqual(self.ask("w2", "echo VAR:$X:END", "VAR"), "saved-in-s1")
        resumed = self.uptime("w2", "UP2")
        self.assertGreaterEqual(resumed, before)
        self.assertNotIn("HANGAR-GUEST-READY", self.console("w2"))
        self.assertEqual(self.ask("w2", "echo 3 > /proc/sys/vm/drop_caches; "
                                        "echo SDA:$(head -c 8 /dev/sda):END", "SDA"), "DISK-ONE")
        self.assertFalse(os.path.exists(os.path.join(w2_dir, "warm-start.mem")))
        # Later starts boot.
        self.daemon.action("w2", "kill")
        self.daemon.wait_state("w2", "stopped")
        self.daemon.action("w2", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("w2"), 90, "a cold boot")
        print(f"warm start of a clone: request to running {warm_took * 1000:.0f} ms")

    def test_bad_clones_change_nothing(self):
        s, _ = self.daemon.request("POST", "/v1/disks", {"name": "b1", "size_gib": 1})
        self.assertEqual(s, 201)
        self.create("bsrc")
        s, _ = self.daemon.request("POST", "/v1/machines/bsrc/disks", {"disk": "b1"})
        self.assertEqual(s, 200)
        self.create("taken")
        s, _ = self.daemon.request("POST", "/v1/disks", {"name": "clash-b1", "size_gib": 1})
        self.assertEqual(s, 201)
        machines, disks = self.names("machines"), self.names("disks")
        for body, status, code, message in [
                ({"name": "taken"}, 409, "conflict", "already exists"),
                ({"name": "clash"}, 409, "conflict", "clash-b1"),
                ({"name": "../x"}, 400, "invalid_name", None),
                ({"name": "has space"}, 400, "invalid_name", None),
                ({"name": "x" * 300}, 400, "invalid_name", None),
                ({"name": "a" * 61}, 400, "invalid_name", "copy of disk b1"),
                ({}, 400, "bad_request", "name"),
                ({"name": "ok", "extra": 1}, 400, "bad_request", "extra"),
                ({"name": 7}, 400, "bad_request", None),
                ({"name": "ok", "snapshot": "nope"}, 404, "not_found", None),
                ({"name": "ok", "snapshot": "../s"}, 400, "invalid_name", None)]:
            self.refused(self.daemon.request("POST", "/v1/machines/bsrc/clone?wait=true", body),
                         status, code, message)
        self.refused(self.daemon.request("POST", "/v1/machines/bsrc/clone",
                                         raw=b"{\"name\": "), 400,
                     "invalid_json")
        self.refused(self.daemon.request("POST", "/v1/machines/nosuch/clone", {"name": "ok"}),
                     404, "not_found")
        self.refused(self.daemon.request("POST", "/v1/machines/bsrc/clone?wait=maybe",
                                         {"name": "ok"}), 400, "bad_request")
        self.assertEqual((self.names("machines"), self.names("disks")), (machines, disks))
        self.assertEqual(self.leftovers(), [])

    def test_kill_9_during_a_clone_leaves_all_or_nothing(self):
        s, d = self.daemon.request("POST", "/v1/disks", {"name": "k1", "size_gib": 4})
        self.assertEqual(s, 201, d)
        self.create("ksrc")
        s, _ = self.daemon.request("POST", "/v1/machines/ksrc/disks", {"disk": "k1"})
        self.assertEqual(s, 200)
        # 256 MiB of data under a snapshot, more above it: the copy takes a while.
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 256M", d["path"]],
                       check=True, capture_output=True)
        s, _ = self.daemon.request("POST", "/v1/machines/ksrc/snapshots", {"name": "s1"})
        self.assertEqual(s, 201)
        top = self.disk("k1")["path"]
        write(top, "0x62", 1 << 20)
        outcomes = set()
        for i, delay in enumerate([0.0, 0.01, 0.03, 0.08, 0.15, 0.3, 0.6, 1.0, 2.0]):
            name = f"kc{i}"
            t = threading.Thread(target=lambda: self.daemon.request(
                "POST", "/v1/machines/ksrc/clone?wait=true", {"name": name}, timeout=60))
            t.start()
            time.sleep(delay)
            self.daemon.kill()
            t.join()
            self.daemon.start()
            wait_for(lambda: self.leftovers() == [], 20, "the clone's leftovers removed")
            m = self.daemon.request("GET", f"/v1/machines/{name}")
            made = m[0] == 200
            outcomes.add(made)
            if made:
                self.assertEqual([x["disk"] for x in m[1]["disks"]], [f"{name}-k1"], m)
                self.assertEqual(same_data(top, self.disk(f"{name}-k1")["path"])[0], True)
            else:
                self.assertIsNone(self.disk(f"{name}-k1"))
            self.assertEqual(self.daemon.machine("ksrc")["state"], "stopped")
        # The source is free again: snapshots and clones go on.
        s, c = self.daemon.request("POST", "/v1/machines/ksrc/clone?wait=true",
                                   {"name": "after", "snapshot": "s1"})
        self.assertEqual(s, 201, c)
        print("clone outcomes across the kill points:", outcomes)


if __name__ == "__main__":
    harness.main()
