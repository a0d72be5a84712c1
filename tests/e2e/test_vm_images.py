"""VM disk images: qcow2, raw and ISO files imported or downloaded (with their SHA-256) as
images of kind disk or iso, inspected by qemu-img and refused when they name another file; a
VM made from a disk image boots from its own copy-on-write overlay (the built-in guest prints
its disk's first bytes), its writes stay in the overlay, the base is never written."""
import http.server
import os
import shutil
import subprocess
import tempfile
import threading

import harness
from harness import DaemonTest, wait_for

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")
USER = 1001


guest_boot = harness.guest_boot
sha256 = harness.sha256


class VmImages(DaemonTest):
    def setUp(self):
        super().setUp()
        self.files = tempfile.mkdtemp(prefix="hangar-e2e-vmimg-")
        os.chmod(self.files, 0o755)
        self.addCleanup(shutil.rmtree, self.files, True)

    def disk_image(self, name, marker, fmt="qcow2", size="64M"):
        return harness.make_disk_image(self.files, name, marker, fmt, size)

    def import_image(self, name, path, kind=None, uid=None):
        body = {"name": name, "source": {"type": "file", "path": path}}
        if kind:
            body["kind"] = kind
        if uid is None:
            return self.daemon.request("POST", "/v1/images?wait=true", body)
        return self.daemon.request_as(uid, "POST", "/v1/images?wait=true", body)

    def leftovers(self):
        d = os.path.join(self.state_dir, "images")
        return [n for n in os.listdir(d) if n.startswith(".")] if os.path.isdir(d) else []

    def test_vm_boots_from_an_overlay_and_the_base_is_never_written(self):
        path = self.disk_image("base", "BASEIMG-7")
        s, img = self.import_image("base", path)
        self.assertEqual(s, 201, img)
        self.assertEqual((img["kind"], img["format"], img["virtual_size"], img["type"]),
                         ("disk", "qcow2", 64 << 20, "vm"))
        self.assertEqual(img["sha256"], sha256(path))
        stored = os.path.join(self.state_dir, "images", "base", "disk.qcow2")
        self.assertEqual(sha256(stored), img["sha256"])
        self.assertEqual(os.stat(stored).st_mode & 0o777, 0o444)
        base_sum = sha256(stored)

        m = self.create("web", image="base", boot=guest_boot())
        self.assertEqual(m["disks"], [{"name": "root", "boot": True, "image": "base",
                                       "size_gib": 1}])
        m = self.daemon.action("web", "start")
        overlay = os.path.join(self.state_dir, "machines", "web", "root.qcow2")
        info = subprocess.run(["qemu-img", "info", "-U", "--output=json", overlay],
                              capture_output=True, text=True, check=True).stdout
        self.assertIn('"backing-filename": "../../images/base/disk.qcow2"', info)
        self.assertIn('"virtual-size": 1073741824', info)
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        self.assertIn(b"virtio-blk-pci,drive=root,id=root,bootindex=1", argv)
        wait_for(lambda: "HANGAR-DISK: BASEIMG-7" in self.console("web"), 90,
                 "the guest to print its root disk")

        # The guest writes its disk (fsync: QEMU flushes the qcow2's metadata): the write
        # lands in the overlay, and survives a kill -9 of QEMU and a restart.
        subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "console", "web"],
                       input=b"echo OVERLAY-WRITE-42 | dd of=/dev/vda conv=fsync && "
                             b"echo WROTE-$((6*7))\n",
                       capture_output=True, timeout=60)
        wait_for(lambda: "WROTE-42" in self.console("web"), 30, "the write")
        self.daemon.action("web", "kill")
        self.daemon.wait_state("web", "stopped")
        self.daemon.action("web", "start")
        wait_for(lambda: self.console("web").count("HANGAR-DISK:") >= 2, 90, "the second boot")
        self.assertIn("HANGAR-DISK: OVERLAY-WRITE-42", self.console("web"))
        self.assertEqual(sha256(stored), base_sum)

        # A second VM on the same base sees the base, not the first VM's write.
        self.create("web2", image="base", boot=guest_boot(), disk_gib=2)
        self.daemon.action("web2", "start")
        wait_for(lambda: "HANGAR-DISK:" in self.console("web2"), 90, "web2's boot")
        self.assertIn("HANGAR-DISK: BASEIMG-7", self.console("web2"))

        # The image stays while VMs are made from it.
        self.refused(self.daemon.request("DELETE", "/v1/images/base"), 409, "conflict",
                     "in use by machine web, web2")
        for name in ("web", "web2"):
            s, _ = self.daemon.request("DELETE", f"/v1/machines/{name}?force=true")
            self.assertEqual(s, 200)
        s, _ = self.daemon.request("DELETE", "/v1/images/base")
        self.assertEqual(s, 200)
        self.assertEqual(sha256(path), img["sha256"])  # the user's file is untouched

    def test_bad_images_are_refused_and_leave_nothing(self):
        # A backing file that is a host file, a json: backing, an external data file.
        shadow = os.path.join(self.files, "shadow.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b", "/etc/shadow",
                        "-F", "raw", shadow, "1M"], check=True)
        jsonb = os.path.join(self.files, "json.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-u", "-b",
                        'json:{"driver":"file","filename":"/etc/shadow"}', "-F", "raw", jsonb,
                        "1M"], check=True)
        ext = os.path.join(self.files, "ext.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        f"data_file={self.files}/ext.data", ext, "1M"], check=True)
        for name, path, why in [("shadow", shadow, "names a backing file"),
                                ("jsonb", jsonb, "names a backing file"),
                                ("ext", ext, "external file")]:
            self.refused(self.import_image(name, path), 422, "invalid_spec", why)
        # An absurd virtual size; a qcow2 cut short; a raw file without "kind".
        huge = os.path.join(self.files, "huge.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", huge, "100T"], check=True)
        self.refused(self.import_image("huge", huge), 422, "invalid_spec", "larger than 64 TiB")
        good = self.disk_image("good", "GOOD")
        cut = os.path.join(self.files, "cut.qcow2")
        with open(good, "rb") as f, open(cut, "wb") as o:
            o.write(f.read(1024))
        s, body = self.import_image("cut", cut)
        self.assertEqual(s, 422, body)
        raw = self.disk_image("plain", "RAWDISK-1", fmt="raw")
        self.refused(self.import_image("plain", raw), 422, "invalid_spec",
                     'could not be unpacked (tar')
        self.refused(self.import_image("plain", raw), 422, "invalid_spec",
                     '(a raw disk image needs "kind": "disk")')
        self.refused(self.import_image("plain", raw, kind="iso"), 422, "invalid_spec",
                     "not an ISO 9660 image")
        self.refused(self.import_image("plain", good, kind="iso"), 422, "invalid_spec",
                     "a qcow2 disk image, not of kind")
        self.refused(self.import_image("plain", good, kind="floppy"), 400, "bad_request")
        wait_for(lambda: not self.leftovers(), 10, "the failed imports' files to go")
        s, lst = self.daemon.request("GET", "/v1/images")
        self.assertEqual(lst["images"], [])

        # A raw disk with its kind; an ISO by its content.
        s, img = self.import_image("plain", raw, kind="disk")
        self.assertEqual((s, img.get("kind"), img.get("format")), (201, "disk", "raw"), img)
        iso = os.path.join(self.files, "cd.iso")
        with open(iso, "wb") as f:
            f.write(b"\0" * 32769 + b"CD001" + b"\0" * 1000)
        os.truncate(iso, 1 << 20)
        s, img = self.import_image("cd", iso)
        self.assertEqual((s, img.get("kind"), img.get("virtual_size")), (201, "iso", 1 << 20),
                         img)
        self.assertTrue(os.path.isfile(os.path.join(self.state_dir, "images", "cd", "image.iso")))

        # Specs that do not fit the image.
        s, img = self.import_image("good", good)
        self.assertEqual(s, 201, img)
        boot = guest_boot()
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "v1", "image": "cd", "boot": boot}),
                     422, "invalid_spec", 'of kind "iso", not "disk"')
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "v1", "image": "nope", "boot": boot}),
                     422, "invalid_spec", "no image")
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "v1", "image": "../x", "boot": boot}),
                     400, "invalid_name")
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "v1", "disk_gib": 4, "boot": boot}),
                     422, "invalid_spec", "made from an image")
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "v1", "image": "good", "disk_gib": 65537}),
                     422, "invalid_spec", "at most 65536")
        free_gib = os.statvfs(self.state_dir).f_bavail * os.statvfs(self.state_dir).f_frsize >> 30
        if free_gib + 1 <= 65536:
            self.refused(self.daemon.request("POST", "/v1/machines",
                                             {"name": "v1", "image": "good",
                                              "disk_gib": free_gib + 1}),
                         422, "invalid_spec", "does not fit in the free space")
        for bad in (-1, 1.5, "2", None):
            s, body = self.daemon.request("POST", "/v1/machines",
                                          {"name": "v1", "image": "good", "disk_gib": bad})
            self.assertEqual(s, 400, (bad, body))
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "v1", "image": "good",
                                          "boot": {"disk": good}}),
                     422, "invalid_spec", "not both")
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "c1", "type": "container", "image": "good"}),
                     422, "invalid_spec", "not a container's root file system")
        # A template's disk_gib sizes the root disk.
        s, _ = self.daemon.request("POST", "/v1/templates", {"name": "small", "disk_gib": 3})
        self.assertEqual(s, 201)
        m = self.create("v2", image="good", template="small", boot=boot)
        self.assertEqual(m["disks"][0]["size_gib"], 3)
        s, body = self.daemon.request("PATCH", "/v1/machines/v2", {"disk_gib": 5})
        self.assertEqual(s, 400, body)
        # Kept across a kill -9 of hangard.
        self.daemon.kill()
        self.daemon.start()
        s, img = self.daemon.request("GET", "/v1/images/good")
        self.assertEqual((s, img["kind"], img["format"]), (200, "disk", "qcow2"))
        self.assertEqual(self.daemon.machine("v2")["disks"][0]["size_gib"], 3)

    def test_cdrom_goes_in_and_out_of_a_running_vm(self):
        def iso(name):
            path = os.path.join(self.files, name + ".iso")
            with open(path, "wb") as f:
                f.write(b"\0" * 32769 + b"CD001" + name.encode())
            os.truncate(path, 1 << 20)
            s, img = self.import_image(name, path)
            self.assertEqual((s, img.get("kind")), (201, "iso"), img)
            return os.path.join(self.state_dir, "images", name, "image.iso")

        def open_files(pid):
            d = f"/proc/{pid}/fd"
            out = set()
            for fd in os.listdir(d):
                try:
                    out.add(os.readlink(os.path.join(d, fd)))
                except OSError:
                    pass
            return out

        cd1, cd2 = iso("cd1"), iso("cd2")
        m = self.create("web", cdrom="cd1", boot=guest_boot())
        self.assertEqual(m["cdrom"], "cd1")
        m = self.daemon.action("web", "start")
        pid = m["pid"]
        self.assertIn(cd1, open_files(pid))
        wait_for(lambda: "HANGAR-GUEST-READY" in self.console("web"), 90, "the guest's boot")
        # Changed while it runs: QEMU holds the new ISO (read-only), not the old one.
        s, m = self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": "cd2"})
        self.assertEqual((s, m.get("cdrom")), (200, "cd2"), m)
        self.assertIn(cd2, open_files(pid))
        self.assertNotIn(cd1, open_files(pid))
        self.refused(self.daemon.request("DELETE", "/v1/images/cd2"), 409, "conflict",
                     "machine web")
        s, m = self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": ""})
        self.assertEqual(s, 200, m)
        self.assertNotIn("cdrom", m)
        self.assertFalse({cd1, cd2} & open_files(pid))
        s, m = self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": "cd1"})
        self.assertEqual(s, 200, m)
        self.assertIn(cd1, open_files(pid))
        # What does not fit changes nothing.
        good = self.disk_image("good", "GOOD")
        s, _ = self.import_image("good", good)
        self.refused(self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": "good"}), 422,
                     "invalid_spec", 'of kind "disk", not "iso"')
        self.refused(self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": "nope"}), 422,
                     "invalid_spec")
        self.refused(self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": "../x"}), 400,
                     "invalid_name")
        self.assertEqual(self.daemon.machine("web")["cdrom"], "cd1")
        self.assertIn(cd1, open_files(pid))
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "c1", "type": "container", "image": "x",
                                          "cdrom": "cd1"}), 422, "invalid_spec", "for VMs")
        # Kept across a restart of hangard; while stopped it just changes.
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(self.daemon.machine("web")["cdrom"], "cd1")
        self.daemon.action("web", "kill")
        self.daemon.wait_state("web", "stopped")
        s, m = self.daemon.request("PATCH", "/v1/machines/web", {"cdrom": "cd2"})
        self.assertEqual((s, m.get("cdrom")), (200, "cd2"), m)

    def test_users_import_their_files_and_download_needs_a_checksum(self):
        # A user imports a file of theirs, and not one they cannot read.
        mine = self.disk_image("mine", "MINE")
        os.chown(mine, USER, USER)
        s, img = self.import_image("mine", mine, uid=USER)
        self.assertEqual((s, img.get("owner")), (201, USER), img)
        secret = self.disk_image("secret", "SECRET")
        os.chmod(secret, 0o600)
        self.refused(self.import_image("secret", secret, uid=USER), 422, "invalid_spec")

        # A download from a loopback server, checked by its SHA-256.
        served = self.disk_image("served", "SERVED-1")
        handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=self.files)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self.addCleanup(server.server_close)
        self.addCleanup(server.shutdown)
        url = f"http://127.0.0.1:{server.server_port}/served.qcow2"
        body = {"name": "dl", "source": {"type": "url", "url": url, "sha256": "0" * 64}}
        self.refused(self.daemon.request("POST", "/v1/images?wait=true", body), 503,
                     "unavailable", "checksum mismatch")
        self.refused(self.daemon.request_as(USER, "POST", "/v1/images?wait=true", body), 403,
                     "forbidden", "configured image remotes")
        for src in ({"type": "url", "url": url}, {"type": "url", "url": url, "sha256": "xyz"},
                    {"type": "url", "url": "file:///etc/shadow", "sha256": "0" * 64},
                    {"type": "url", "url": url, "sha256": "0" * 64, "path": "/x"}):
            s, b = self.daemon.request("POST", "/v1/images?wait=true", {"name": "dl",
                                                                        "source": src})
            self.assertEqual(s, 400, (src, b))
        body["source"]["sha256"] = sha256(served)
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "image", "download",
                              "dl", url, "--sha256", sha256(served)],
                             capture_output=True, text=True, timeout=120)
        self.assertEqual(out.returncode, 0, out.stderr)
        s, img = self.daemon.request("GET", "/v1/images/dl")
        self.assertEqual((img["kind"], img["format"], img["source"]),
                         ("disk", "qcow2", {"type": "url", "url": url}))
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "image", "list"],
                             capture_output=True, text=True, timeout=30)
        self.assertRegex(out.stdout, r"dl +disk +qcow2 .*64 MiB +" + url)
        wait_for(lambda: not self.leftovers(), 10, "the failed download's files to go")


if __name__ == "__main__":
    harness.main()
