"""Disks in storage pools (/v1/disks) and attaching them to VMs: made empty, as overlays on a
disk image, as copies of a disk or of a user's file; hot-plugged into the running built-in guest
(which reports block devices as they come and go), grown live, detached on DEVICE_DELETED;
cold-attached to a stopped VM; kept across a restart; bad input refused with nothing changed."""
import json
import os
import shutil
import subprocess
import tempfile

import harness
from harness import DaemonTest, wait_for

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")
USER = 1001
GIB = 1 << 30


def info(path, unlocked=True):
    cmd = ["qemu-img", "info", "--output=json"] + (["-U"] if unlocked else []) + [path]
    out = subprocess.run(cmd, capture_output=True, text=True)
    return json.loads(out.stdout) if out.returncode == 0 else out.stderr


class Disks(DaemonTest):
    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)
        self.files = tempfile.mkdtemp(prefix="hangar-e2e-disks-")
        os.chmod(self.files, 0o755)
        self.addCleanup(shutil.rmtree, self.files, True)

    def disk(self, name, **body):
        s, d = self.daemon.request("POST", "/v1/disks", {"name": name, **body})
        self.assertEqual(s, 201, d)
        return d

    def test_hotplug_grow_and_detach_in_a_running_guest(self):
        d = self.disk("data1", size_gib=1)
        self.assertEqual((d["format"], d["size_bytes"], d["pool"], d["used_by"], d["source"]),
                         ("qcow2", GIB, "default", [], {}))
        self.assertEqual(d["path"], os.path.join(self.state_dir, "pools", "default",
                                                 "data1.qcow2"))
        self.assertEqual(info(d["path"])["virtual-size"], GIB)
        self.create("web")
        self.daemon.action("web", "start")
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("web"), 90, "the guest's boot")

        # Hot-plugged: the guest sees the disk appear.
        s, m = self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data1"})
        self.assertEqual(s, 200, m)
        self.assertEqual([x["name"] for x in m["disks"]], ["data1"])
        wait_for(lambda: "HANGAR-BLOCK: add sda 2097152" in self.console("web"), 30,
                 "the guest to see the hot-plugged disk")
        self.assertEqual(self.daemon.request("GET", "/v1/disks/data1")[1]["used_by"], ["web"])
        self.refused(self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data1"}),
                     409, "conflict", "attached to web already")
        self.refused(self.daemon.request("DELETE", "/v1/disks/data1"), 409, "invalid_state",
                     "detach it first")
        self.assertIn("write", str(info(d["path"], unlocked=False)))  # QEMU holds its lock

        # Grown live: QEMU grows it (block_resize), the guest sees the new size.
        s, g = self.daemon.request("PATCH", "/v1/disks/data1", {"size_gib": 2})
        self.assertEqual((s, g.get("size_bytes")), (200, 2 * GIB), g)
        self.assertEqual(info(d["path"])["virtual-size"], 2 * GIB)
        self.type_in("web", "echo 1 > /sys/class/block/sda/device/rescan; "
                            "echo SIZE-$(cat /sys/class/block/sda/size)-END")
        wait_for(lambda: "SIZE-4194304-END" in self.console("web"), 30, "the guest's new size")
        self.refused(self.daemon.request("PATCH", "/v1/disks/data1", {"size_gib": 1}), 422,
                     "invalid_spec", "shrinking a disk is refused")

        # Detached: complete on DEVICE_DELETED; gone in the guest; QEMU let go of the file.
        s, m = self.daemon.request("DELETE", "/v1/machines/web/disks/data1")
        self.assertEqual((s, m.get("disks")), (200, []), m)
        wait_for(lambda: "HANGAR-BLOCK: remove sda" in self.console("web"), 30,
                 "the guest to see the disk go")
        self.assertIsInstance(info(d["path"], unlocked=False), dict)  # no lock held
        self.refused(self.daemon.request("DELETE", "/v1/machines/web/disks/data1"), 404,
                     "not_found", "not attached to web")

        # Cold: attached while stopped, the VM boots with it.
        self.daemon.action("web", "kill")
        self.daemon.wait_state("web", "stopped")
        s, m = self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data1"})
        self.assertEqual(s, 200, m)
        m = self.daemon.action("web", "start")
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            self.assertIn(b"scsi-hd", f.read())
        wait_for(lambda: "HANGAR-BLOCK: add sda 4194304" in self.console("web"), 90,
                 "the guest to boot with the disk")
        # Kept across a kill -9 of hangard; the adopted QEMU's disk detaches too.
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual([x["name"] for x in self.daemon.machine("web")["disks"]], ["data1"])
        s, m = self.daemon.request("DELETE", "/v1/machines/web/disks/data1")
        self.assertEqual((s, m.get("disks")), (200, []), m)
        # A deleted machine lets go of its disks, which stay.
        s, _ = self.daemon.request("POST", "/v1/machines/web/disks", {"disk": "data1"})
        self.assertEqual(s, 200)
        s, _ = self.daemon.request("DELETE", "/v1/machines/web?force=true")
        self.assertEqual(s, 200)
        self.assertEqual(self.daemon.request("GET", "/v1/disks/data1")[1]["used_by"], [])
        s, _ = self.daemon.request("DELETE", "/v1/disks/data1")
        self.assertEqual(s, 200)
        self.assertFalse(os.path.exists(d["path"]))

    def test_sources_pools_and_bad_input(self):
        # An overlay on a disk image, its base named relative to it.
        self.import_disk_image(self.files, "base", "BASE")
        d = self.disk("ov", source={"image": "base"}, size_gib=3)
        self.assertEqual((d["size_bytes"], d["source"]), (3 * GIB, {"image": "base"}))
        self.assertEqual(info(d["path"])["backing-filename"], "../../images/base/disk.qcow2")
        self.refused(self.daemon.request("DELETE", "/v1/images/base"), 409, "conflict",
                     "disk ov")
        # A copy in another pool (an admin's), its base renamed for where it lies now.
        other = os.path.join(self.files, "pool2")
        os.mkdir(other)
        s, _ = self.daemon.request("POST", "/v1/pools", {"name": "p2", "path": other})
        self.assertEqual(s, 201)
        c = self.disk("copy", source={"disk": "ov"}, pool="p2")
        self.assertEqual((c["path"], c["size_bytes"]), (os.path.join(other, "copy.qcow2"), 3 * GIB))
        backing = info(c["path"])["backing-filename"]
        self.assertEqual(os.path.normpath(os.path.join(other, backing)),
                         os.path.join(self.state_dir, "images", "base", "disk.qcow2"))
        self.assertEqual(subprocess.run(["qemu-img", "check", "-q", c["path"]]).returncode, 0)

        # A user's file: copied as that user, inspected; a host file behind it is refused.
        mine = os.path.join(self.files, "mine.raw")
        with open(mine, "wb") as f:
            f.write(b"MINE")
        os.truncate(mine, 8 << 20)
        os.chown(mine, USER, USER)
        s, u = self.daemon.request_as(USER, "POST", "/v1/disks",
                                      {"name": "udisk", "source": {"file": mine}})
        self.assertEqual((s, u.get("format"), u.get("owner")), (201, "raw", USER), u)
        evil = os.path.join(self.files, "evil.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow",
                        "-F", "raw", evil, "1M"], check=True)
        os.chown(evil, USER, USER)
        self.refused(self.daemon.request_as(USER, "POST", "/v1/disks",
                                            {"name": "evil", "source": {"file": evil}}),
                     422, "invalid_spec", "backing file")
        secret = os.path.join(self.files, "secret.raw")
        shutil.copy(mine, secret)
        os.chmod(secret, 0o600)
        os.chown(secret, 0, 0)
        self.refused(self.daemon.request_as(USER, "POST", "/v1/disks",
                                            {"name": "sec", "source": {"file": secret}}),
                     422, "invalid_spec")
        # Users see their own disks only; another's is 404, and so is attaching it.
        s, lst = self.daemon.request_as(USER, "GET", "/v1/disks")
        self.assertEqual([x["name"] for x in lst["disks"]], ["udisk"])
        self.refused(self.daemon.request_as(USER, "GET", "/v1/disks/ov"), 404, "not_found")
        self.create("rootvm")
        self.refused(self.daemon.request_as(USER, "POST", "/v1/machines/rootvm/disks",
                                            {"disk": "udisk"}), 404, "not_found")
        s, um = self.daemon.request_as(USER, "POST", "/v1/machines",
                                       {"name": "uvm", "type": "vm"})
        self.assertEqual(s, 201, um)
        self.created_uuids.append(um["uuid"])
        self.refused(self.daemon.request_as(USER, "POST", "/v1/machines/uvm/disks",
                                            {"disk": "ov"}), 404, "not_found")
        s, _ = self.daemon.request_as(USER, "POST", "/v1/machines/uvm/disks", {"disk": "udisk"})
        self.assertEqual(s, 200)

        # Bad input: nothing is made.
        before = sorted(os.listdir(os.path.join(self.state_dir, "pools", "default")))
        for body, status, code in [
            ({"name": "../x", "size_gib": 1}, 400, "invalid_name"),
            ({"name": "a b", "size_gib": 1}, 400, "invalid_name"),
            ({"name": "x" * 300, "size_gib": 1}, 400, "invalid_name"),
            ({"name": "e1"}, 400, "bad_request"),
            ({"name": "e1", "size_gib": 0}, 400, "bad_request"),
            ({"name": "e1", "size_gib": -1}, 400, "bad_request"),
            ({"name": "e1", "size_gib": 1.5}, 400, "bad_request"),
            ({"name": "e1", "size_gib": "2"}, 400, "bad_request"),
            ({"name": "e1", "size_gib": 65537}, 400, "bad_request"),
            ({"name": "e1", "size_gib": 1, "colour": "red"}, 400, "bad_request"),
            ({"name": "e1", "source": {"image": "base", "disk": "ov"}}, 400, "bad_request"),
            ({"name": "e1", "source": {"file": "relative.img"}}, 400, "bad_request"),
            ({"name": "e1", "size_gib": 1, "pool": "nope"}, 422, "invalid_spec"),
            ({"name": "e1", "source": {"image": "nope"}}, 422, "invalid_spec"),
            ({"name": "e1", "source": {"disk": "nope"}}, 422, "invalid_spec"),
            ({"name": "e1", "source": {"image": "base"}, "size_gib": 65536}, 422,
             "invalid_spec"),
            ({"name": "ov", "size_gib": 1}, 409, "conflict"),
        ]:
            self.refused(self.daemon.request("POST", "/v1/disks", body), status, code)
        s, body = self.daemon.request("POST", "/v1/disks", raw=b"{not json")
        self.assertEqual(s, 400, body)
        free = os.statvfs(self.state_dir)
        if (free.f_bavail * free.f_frsize >> 30) + 1 <= 65536:
            self.refused(self.daemon.request(
                "POST", "/v1/disks",
                {"name": "big", "size_gib": (free.f_bavail * free.f_frsize >> 30) + 1}),
                422, "invalid_spec", "does not fit in the free space of pool default")
        self.assertEqual(sorted(os.listdir(os.path.join(self.state_dir, "pools", "default"))),
                         before)
        self.refused(self.daemon.request("PATCH", "/v1/disks/ov", {"size_gib": 2}), 422,
                     "invalid_spec", "shrinking")
        self.refused(self.daemon.request("PATCH", "/v1/disks/ov", {"size": 2}), 400,
                     "bad_request")

        # hangarctl: a table, create, grow, attach and detach.
        ctl = lambda *a: subprocess.run([HANGARCTL, "--socket", self.daemon.socket, *a],
                                        capture_output=True, text=True, timeout=60)
        out = ctl("disk", "create", "cli1", "--size", "1", "--pool", "p2")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn(f"cli1: 1 GiB qcow2 in {other}/cli1.qcow2", out.stdout)
        self.assertIn("cli1: 4 GiB", ctl("disk", "grow", "cli1", "4").stdout)
        out = ctl("attach", "rootvm", "cli1")
        self.assertEqual(out.returncode, 0, out.stderr)
        out = ctl("disk", "list")
        self.assertEqual(out.stdout.splitlines()[0].split(),
                         ["NAME", "POOL", "FORMAT", "SIZE", "USED", "BY", "SOURCE"])
        self.assertRegex(out.stdout, r"cli1 +p2 +qcow2 +4 GiB +rootvm +empty")
        self.assertRegex(out.stdout, r"ov +default +qcow2 +3 GiB +- +image base")
        out = ctl("detach", "rootvm", "cli1")
        self.assertEqual(out.returncode, 0, out.stderr)
        out = ctl("disk", "delete", "cli1")
        self.assertEqual(out.returncode, 0, out.stderr)
        out = ctl("disk", "create", "cli1")
        self.assertNotEqual(out.returncode, 0)
        self.assertIn("an empty disk needs size_gib", out.stderr)

        # Containers take no disks.
        s, ct = self.daemon.request("POST", "/v1/machines",
                                    {"name": "ct", "type": "container", "image": "base"})
        self.assertEqual(s, 422, ct)

        # A leftover of an interrupted create goes at the next start; records stay.
        leftover = os.path.join(self.state_dir, "pools", "default", ".new-zz-0000.qcow2")
        open(leftover, "w").close()
        self.daemon.kill()
        self.daemon.start()
        self.assertFalse(os.path.exists(leftover))
        s, lst = self.daemon.request("GET", "/v1/disks")
        self.assertEqual(sorted(x["name"] for x in lst["disks"]), ["copy", "ov", "udisk"])
        self.assertEqual(self.daemon.request("GET", "/v1/disks/udisk")[1]["used_by"], ["uvm"])
        s, metrics = self.daemon.request("GET", "/v1/metrics")
        self.assertIn("\nhangar_disks 3\n", metrics)
        self.assertIn(f'hangar_disk_bytes{{disk="ov",pool="default"}} {3 * GIB}', metrics)


if __name__ == "__main__":
    harness.main()
