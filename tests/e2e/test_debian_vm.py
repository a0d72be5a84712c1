"""A real Debian 12 VM: a disk image built once from the debootstrap root and cached outside the
clone (scripts/build-debian-vm-image.sh: mkfs.ext4 -d, qemu-img convert), imported as an image;
a VM made from it boots systemd from its own overlay disk (the built-in guest's kernel and
initramfs hand over with hangar.root=/dev/vda). A unit in the image counts the boots on the
disk and prints them: a snapshot taken while systemd runs, restored while it runs, brings the
count back; a clone of the snapshot boots with it too; the base image is never written."""
import json
import os
import subprocess

import harness
from harness import DaemonTest, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


sha256 = harness.sha256


class DebianVm(DaemonTest):
    def boots(self, name):
        """The boot counts machine `name`'s systemd printed, in order."""
        return [int(line.split("HANGAR-DEBIAN-BOOT:", 1)[1].split()[0])
                for line in self.console(name).splitlines() if "HANGAR-DEBIAN-BOOT:" in line]

    def booted(self, name, n):
        wait_for(lambda: len(self.boots(name)) >= n, 180, f"boot {n} of {name}'s systemd")
        return self.boots(name)[n - 1]

    def test_debian_boots_systemd_from_its_overlay_and_snapshots_bring_data_back(self):
        out = subprocess.run([os.path.join(ROOT, "scripts", "build-debian-vm-image.sh")],
                             capture_output=True, text=True, timeout=1800)
        self.assertEqual(out.returncode, 0, out.stderr)
        s, img = self.daemon.request("POST", "/v1/images?wait=true", {
            "name": "debian-12", "source": {"type": "file", "path": out.stdout.strip()}})
        self.assertEqual(s, 201, img)
        self.assertEqual((img["kind"], img["format"], img["virtual_size"]),
                         ("disk", "qcow2", 2 << 30), img)
        base = os.path.join(self.state_dir, "images", "debian-12", "disk.qcow2")
        base_sum = sha256(base)
        boot = {"kernel": os.path.join(harness.GUEST_DIR, "vmlinuz"),
                "initrd": os.path.join(harness.GUEST_DIR, "initrd.img"),
                "cmdline": "console=ttyS0 hangar.root=/dev/vda panic=-1"}
        self.create("deb", image="debian-12", memory_mib=512, boot=boot)
        self.daemon.action("deb", "start")
        self.assertEqual(self.booted("deb", 1), 1)
        self.assertIn("Welcome to", self.console("deb"))
        root = os.path.join(self.state_dir, "machines", "deb", "root.qcow2")
        self.assertEqual(json.loads(subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", root], capture_output=True, text=True,
            check=True).stdout)["backing-filename"], "../../images/debian-12/disk.qcow2")

        # A snapshot while systemd runs; the next boot counts on.
        s, s1 = self.daemon.request("POST", "/v1/machines/deb/snapshots", {"name": "s1"})
        self.assertEqual(s, 201, s1)
        self.daemon.action("deb", "kill")
        self.daemon.wait_state("deb", "stopped")
        self.daemon.action("deb", "start")
        self.assertEqual(self.booted("deb", 2), 2)
        # Restored while it runs: killed, its disk back at s1, booted again: the count of s1.
        s, m = self.daemon.request("POST", "/v1/machines/deb/snapshots/s1/restore")
        self.assertEqual((s, m.get("state")), (200, "running"), m)
        self.assertEqual(self.booted("deb", 3), 2)

        # A clone of s1 (the source running) boots with s1's count too.
        s, c = self.daemon.request("POST", "/v1/machines/deb/clone?wait=true",
                                   {"name": "deb2", "snapshot": "s1"})
        self.assertEqual(s, 201, c)
        self.daemon.action("deb", "kill")
        self.daemon.wait_state("deb", "stopped")
        self.daemon.action("deb2", "start")
        self.assertEqual(self.booted("deb2", 1), 2)
        self.daemon.action("deb2", "kill")
        self.daemon.wait_state("deb2", "stopped")
        self.assertEqual(sha256(base), base_sum)


if __name__ == "__main__":
    harness.main()
