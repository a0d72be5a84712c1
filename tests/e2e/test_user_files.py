"""Paths a request names are opened with the rights of the machine's owner, once, and QEMU gets
only the descriptors: a non-admin cannot make a guest read a file it could not read itself,
not through a symlink, a qcow2 backing file, a swap after create, or a FIFO. Real QEMU, real
users (uids without passwd entries, as setpriv gives them)."""
import json
import os
import shutil
import subprocess
import tempfile
import time

import harness
from harness import DaemonTest, wait_for

USER = 1001


def guest_boot(disk):
    """The built-in guest's kernel and initrd (hangard's own files) with `disk`."""
    return {"kernel": os.path.join(harness.GUEST_DIR, "vmlinuz"),
            "initrd": os.path.join(harness.GUEST_DIR, "initrd.img"),
            "cmdline": "console=ttyS0 panic=-1", "disk": disk}


class UserFiles(DaemonTest):
    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)  # as /var/lib/hangar: others may reach the socket
        os.chmod(self.daemon.socket, 0o666)
        # A world-traversable directory holding a root-only file, and one of the user's own.
        self.files = tempfile.mkdtemp(prefix="hangar-files-")
        os.chmod(self.files, 0o755)
        self.secret = os.path.join(self.files, "secret.img")
        self.write_disk(self.secret, b"ROOTSECRET-0600")
        os.chmod(self.secret, 0o600)
        self.home = os.path.join(self.files, "home")
        os.mkdir(self.home, 0o755)
        os.chown(self.home, USER, USER)
        self.mine = os.path.join(self.home, "mine.img")
        self.write_disk(self.mine, b"USERDATA-1001")
        os.chown(self.mine, USER, USER)
        os.chmod(self.mine, 0o600)

    def tearDown(self):
        super().tearDown()
        shutil.rmtree(self.files, ignore_errors=True)

    @staticmethod
    def write_disk(path, head):
        with open(path, "wb") as f:
            f.write(head.ljust(1 << 20, b"\0"))

    def as_user(self, method, path, body=None, uid=USER):
        return self.daemon.request_as(uid, method, path, body)

    def user_create(self, name, **spec):
        s, body = self.as_user("POST", "/v1/machines", {"name": name, **spec})
        if s == 201:
            self.created_uuids.append(body["uuid"])
        return s, body

    def refusal(self, name, **spec):
        s, body = self.user_create(name, **spec)
        self.assertEqual((s, body["error"]["code"]), (422, "invalid_spec"), body)
        return body["error"]["message"]

    def console(self, name):
        s, text = self.daemon.request("GET", f"/v1/machines/{name}/console/log")
        return text if isinstance(text, str) else json.dumps(text)

    def test_unreadable_files_are_refused_exactly_like_missing_ones(self):
        kernel = os.path.join(harness.GUEST_DIR, "vmlinuz")
        missing = os.path.join(self.files, "missing.img")
        for field, extra in [("disk", {}), ("kernel", {}), ("initrd", {"kernel": kernel})]:
            got = self.refusal("m1", boot={**extra, field: self.secret})
            absent = self.refusal("m1", boot={**extra, field: missing})
            self.assertEqual(got.replace(self.secret, "P"), absent.replace(missing, "P"))
            self.assertIn(f"boot.{field}", got)
        # Under a directory the user cannot search: the same answer, existence not revealed.
        private = tempfile.mkdtemp(prefix="hangar-private-")
        try:
            self.write_disk(os.path.join(private, "x.img"), b"X")
            got = self.refusal("m1", boot={"disk": os.path.join(private, "x.img")})
            absent = self.refusal("m1", boot={"disk": os.path.join(private, "y.img")})
            self.assertEqual(got.replace("x.img", "P"), absent.replace("y.img", "P"))
        finally:
            shutil.rmtree(private)
        # A symlink of the user's to the root-only file is followed with the user's rights.
        link = os.path.join(self.home, "link.img")
        os.symlink(self.secret, link)
        os.lchown(link, USER, USER)
        got = self.refusal("m1", boot={"disk": link})
        self.assertIn("may not read and write", got)
        # Root names any path, through the same code.
        self.create("r1", boot={"disk": self.secret})
        self.create("r2", boot={"disk": link})

    def test_non_regular_files_are_refused_without_blocking(self):
        fifo = os.path.join(self.home, "fifo.img")
        os.mkfifo(fifo)
        os.chown(fifo, USER, USER)
        t0 = time.monotonic()
        got = self.refusal("m1", boot={"disk": fifo})
        self.assertLess(time.monotonic() - t0, 5)
        self.assertIn("is a FIFO, not a regular file", got)
        got = self.refusal("m1", boot={"disk": self.home})
        self.assertIn("is a directory", got)
        got = self.refusal("m1", boot={"disk": "/dev/null"})
        self.assertIn("character device", got)
        got = self.refusal("m1", boot={"disk": "relative.img"})
        self.assertIn("absolute path", got)

    def test_qcow2_naming_another_file_is_refused_for_users(self):
        for name, args in [("backing.qcow2", ["-b", self.secret, "-F", "raw"]),
                           ("data.qcow2", ["-o", f"data_file={self.secret},data_file_raw=on"])]:
            q = os.path.join(self.home, name)
            subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", *args, q, "1M"],
                           check=True)
            os.chown(q, USER, USER)
            got = self.refusal("m1", boot={"disk": q})
            self.assertIn("refused", got)
            self.assertIn("backing file" if "backing" in name else "external data file", got)
        # A self-contained qcow2 of the user's is fine; so is root's with a backing file.
        plain = os.path.join(self.home, "plain.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", plain, "1M"], check=True)
        os.chown(plain, USER, USER)
        s, body = self.user_create("u1", boot={"disk": plain})
        self.assertEqual(s, 201, body)
        self.create("r1", boot={"disk": os.path.join(self.home, "backing.qcow2")})
        # Not a qcow2 at all behind a .qcow2 name.
        fake = os.path.join(self.home, "fake.qcow2")
        self.write_disk(fake, b"RAW")
        os.chown(fake, USER, USER)
        self.assertIn("not a qcow2 image", self.refusal("m1", boot={"disk": fake}))

    def test_the_guest_sees_the_users_disk_and_a_later_swap_is_refused(self):
        s, m = self.user_create("web", boot=guest_boot(self.mine))
        self.assertEqual(s, 201, m)
        s, m = self.as_user("POST", "/v1/machines/web/actions/start")
        self.assertEqual((s, m["state"]), (200, "running"), m)
        # QEMU got descriptors: no path of the user's is on its command line.
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        self.assertNotIn(self.mine.encode(), b" ".join(argv))
        self.assertIn(b"file=/dev/fdset/1,if=none,id=disk0,format=raw", argv)
        wait_for(lambda: "HANGAR-DISK: USERDATA-1001" in self.console("web"), 90,
                 "the guest to print its disk")
        s, m = self.as_user("POST", "/v1/machines/web/actions/kill")
        self.assertEqual(s, 200, m)
        self.daemon.wait_state("web", "stopped")

        # Swapped for a symlink to the root-only file after create: refused at start.
        os.rename(self.mine, self.mine + ".orig")
        os.symlink(self.secret, self.mine)
        s, body = self.as_user("POST", "/v1/machines/web/actions/start")
        self.assertEqual((s, body["error"]["code"]), (422, "invalid_spec"), body)
        self.assertIn("may not read and write", body["error"]["message"])
        self.assertEqual(self.daemon.machine("web")["state"], "stopped")
        # Access lost since create (the file is root's now): refused too.
        os.unlink(self.mine)
        os.rename(self.mine + ".orig", self.mine)
        os.chown(self.mine, 0, 0)
        s, body = self.as_user("POST", "/v1/machines/web/actions/start")
        self.assertEqual(s, 422, body)
        self.assertNotIn("ROOTSECRET", self.console("web"))

    def test_root_boots_a_root_only_disk_through_the_same_descriptors(self):
        self.create("rootvm", boot=guest_boot(self.secret))
        m = self.daemon.action("rootvm", "start")
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            self.assertIn(b"/dev/fd/4", f.read().split(b"\0"))  # the built-in kernel
        wait_for(lambda: "HANGAR-DISK: ROOTSECRET-0600" in self.console("rootvm"), 90,
                 "the guest to print its disk")
        self.daemon.action("rootvm", "kill")


if __name__ == "__main__":
    harness.main()
