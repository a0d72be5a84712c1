"""Image imports and pulls under attack: a file swapped for a symlink or a FIFO after the
request never brings in foreign content nor blocks anyone; an import can be cancelled (its
children killed, nothing left); one user cannot take every pull slot; a non-admin pulls only
from the configured remotes, redirects included. Real users via setpriv, a real HTTPS image
server on loopback."""
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
import time

import harness
from harness import DaemonTest, pids_with_argument, wait_for
from imageserver import ImageServer, make_busybox_rootfs_tar

USER, OTHER = 1001, 1002
HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")


def small_tar(path, marker):
    """A tiny root file system whose /marker says whose it is."""
    src = path + ".d"
    os.makedirs(os.path.join(src, "bin"), exist_ok=True)
    with open(os.path.join(src, "marker"), "w") as f:
        f.write(marker)
    with tarfile.open(path, "w") as t:
        t.add(src, arcname=".")
    shutil.rmtree(src)


class ImageSecurity(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        self.server_dir = tempfile.mkdtemp(prefix="hangar-images-")
        self.server = ImageServer(self.server_dir)
        self.server.start()
        self.server.publish()
        self.extra = ("--image-ca", self.server.ca, "--image-remote",
                      f"local={self.server.url}", "--quota-images", "1000")
        super().setUp()
        self.home = tempfile.mkdtemp(prefix="hangar-user-")
        os.chmod(self.home, 0o755)
        os.chown(self.home, USER, USER)
        self.root_only = os.path.join(self.server_dir, "root.tar")
        small_tar(self.root_only, "ROOT-SECRET")
        os.chmod(self.server_dir, 0o755)
        os.chmod(self.root_only, 0o600)

    def tearDown(self):
        super().tearDown()
        self.server.stop()
        shutil.rmtree(self.server_dir, ignore_errors=True)
        shutil.rmtree(self.home, ignore_errors=True)

    def as_user(self, uid, method, path, body=None):
        return self.daemon.request_as(uid, method, path, body)

    def import_as(self, uid, name, path, wait=False):
        return self.as_user(uid, "POST", "/v1/images" + ("?wait=true" if wait else ""),
                            {"name": name, "source": {"type": "file", "path": path}})

    def operation(self, op):
        s, body = self.daemon.request("GET", f"/v1/operations/{op}")
        self.assertEqual(s, 200, body)
        return body

    def wait_done(self, op, timeout=60):
        return wait_for(lambda: (lambda o: o if o["status"] != "running" else None)(
            self.operation(op)), timeout, f"operation {op} to end")

    def user_file(self, name, marker):
        path = os.path.join(self.home, name)
        small_tar(path, marker)
        os.chown(path, USER, USER)
        return path

    def rootfs_marker(self, name):
        with open(os.path.join(self.state_dir, "images", name, "rootfs", "marker")) as f:
            return f.read()

    def test_a_root_only_file_is_refused_like_a_missing_one(self):
        s, body = self.import_as(USER, "x", self.root_only)
        self.assertEqual((s, body["error"]["code"]), (422, "invalid_spec"), body)
        s2, body2 = self.import_as(USER, "x", self.root_only + ".missing")
        self.assertEqual(body["error"]["message"].replace(self.root_only, "P"),
                         body2["error"]["message"].replace(self.root_only + ".missing", "P"))
        link = os.path.join(self.home, "link.tar")
        os.symlink(self.root_only, link)
        s, body = self.import_as(USER, "x", link)
        self.assertEqual(s, 422, body)
        # A file the user may read but does not own is fine (opened with the user's rights).
        shared = os.path.join(self.server_dir, "shared.tar")
        small_tar(shared, "SHARED")
        s, img = self.import_as(USER, "shared", shared, wait=True)
        self.assertEqual((s, img["owner"]), (201, USER), img)
        # Root imports the root-only file through the same code.
        s, img = self.import_as(0, "rootimg", self.root_only, wait=True)
        self.assertEqual(s, 201, img)
        self.assertEqual(self.rootfs_marker("rootimg"), "ROOT-SECRET")

    def test_symlink_and_fifo_swaps_after_the_request_change_nothing(self):
        fifo = os.path.join(self.home, "fifo")
        os.mkfifo(fifo)
        os.chown(fifo, USER, USER)
        for i in range(50):
            path = self.user_file(f"img{i}.tar", f"USER-{i}")
            s, body = self.import_as(USER, f"u{i}", path)
            self.assertEqual(s, 202, body)
            # Swapped as soon as the request was accepted: half for a symlink to root's file,
            # half for a FIFO nobody writes.
            os.unlink(path)
            if i % 2:
                os.symlink(self.root_only, path)
            else:
                os.symlink(fifo, path)
            # Meanwhile another user's import goes through.
            if i % 10 == 0:
                other = os.path.join(self.server_dir, f"other{i}.tar")
                small_tar(other, "OTHER")
                os.chown(other, OTHER, OTHER)
                s2, img = self.import_as(OTHER, f"o{i}", other, wait=True)
                self.assertEqual(s2, 201, img)
            done = self.wait_done(body["operation"])
            self.assertEqual(done["status"], "succeeded", done)
            self.assertEqual(self.rootfs_marker(f"u{i}"), f"USER-{i}")
        # A FIFO named at the request is refused at once, without blocking anything.
        t0 = time.monotonic()
        s, body = self.import_as(USER, "f", fifo)
        self.assertEqual(s, 422, body)
        self.assertIn("FIFO", body["error"]["message"])
        self.assertLess(time.monotonic() - t0, 5)
        s, lst = self.daemon.request("GET", "/v1/images")
        self.assertNotIn("ROOT-SECRET", json.dumps(lst))

    def big_file(self, name):
        """A sparse 3 GiB file of the user's: hashing it takes seconds."""
        path = os.path.join(self.home, name)
        with open(path, "wb") as f:
            f.truncate(3 << 30)
        os.chown(path, USER, USER)
        return path

    def hashers_of(self, path):
        """sha256sum processes reading `path`."""
        out = []
        for pid in pids_with_argument("sha256sum"):
            try:
                if os.path.realpath(f"/proc/{pid}/fd/0") == path:
                    out.append(pid)
            except OSError:
                pass
        return out

    def test_cancel_kills_the_step_and_leaves_nothing(self):
        big = self.big_file("big.tar")
        s, body = self.import_as(USER, "big", big)
        self.assertEqual(s, 202, body)
        op = body["operation"]
        wait_for(lambda: self.hashers_of(big), 20, "sha256sum to run")
        # Not the other user's to cancel; not cancellable twice.
        s, err = self.as_user(OTHER, "DELETE", f"/v1/operations/{op}")
        self.assertEqual(s, 404, err)
        s, done = self.as_user(USER, "DELETE", f"/v1/operations/{op}")
        self.assertEqual((s, done["status"]), (200, "cancelled"), done)
        self.assertIn(f"cancelled by uid {USER}", done["error"]["message"])
        wait_for(lambda: not self.hashers_of(big), 10, "sha256sum to be killed")
        wait_for(lambda: not [e for e in os.listdir(os.path.join(self.state_dir, "images"))
                              if e.startswith(".pull-")], 10, "the import's files to go")
        self.assertEqual(self.daemon.request("GET", "/v1/images/big")[0], 404)
        s, err = self.as_user(USER, "DELETE", f"/v1/operations/{op}")
        self.assertEqual((s, err["error"]["code"]), (409, "invalid_state"), err)
        # An admin may cancel a user's import (here with hangarctl).
        s, body = self.import_as(USER, "big2", big)
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "operation", "cancel",
                              body["operation"]], capture_output=True, text=True, timeout=60)
        self.assertEqual((out.returncode, out.stdout), (0, f"{body['operation']}: cancelled\n"),
                         out.stderr)
        self.assertEqual(self.daemon.request("DELETE", "/v1/operations/op-nope")[0], 404)

    def test_one_user_cannot_take_every_slot(self):
        big = self.big_file("big.tar")
        ops = []
        for i in range(2):
            s, body = self.import_as(USER, f"b{i}", big)
            self.assertEqual(s, 202, body)
            ops.append(body["operation"])
        s, body = self.import_as(USER, "b2", big)
        self.assertEqual((s, body["error"]["code"]), (409, "busy"), body)
        self.assertIn("limit per user", body["error"]["message"])
        other = os.path.join(self.server_dir, "other.tar")
        small_tar(other, "OTHER")
        os.chown(other, OTHER, OTHER)
        s, img = self.import_as(OTHER, "o", other, wait=True)
        self.assertEqual(s, 201, img)
        for op in ops:
            self.as_user(USER, "DELETE", f"/v1/operations/{op}")

    def pull_as(self, uid, name, server):
        return self.as_user(uid, "POST", "/v1/images?wait=true",
                            {"name": name, "source": {"type": "simplestreams", "server": server,
                                                      "alias": "busybox/1.36"}})

    def test_users_pull_only_from_configured_remotes(self):
        # The configured remote, by name or by its URL.
        s, img = self.pull_as(USER, "bb", "local")
        self.assertEqual((s, img["source"]["server"]), (201, self.server.url + "/"), img)
        s, img = self.pull_as(USER, "bb2", self.server.url)
        self.assertEqual(s, 201, img)
        # Any other URL: refused before anything is sent, so no port is probed.
        before = len(self.server.requests)
        for url in ("https://127.0.0.1:1/", f"https://localhost:{self.server.port}/",
                    self.server.url + "/other/"):
            s, body = self.pull_as(USER, "x", url)
            self.assertEqual((s, body["error"]["code"]), (403, "forbidden"), (url, body))
            s, body = self.as_user(USER, "GET", f"/v1/images/remote?server={url}")
            self.assertEqual(s, 403, body)
        self.assertEqual(len(self.server.requests), before)
        # A redirect from the remote to another host is not followed for users; root follows it
        # (and the server's certificate, made for 127.0.0.1 only, stops it there).
        self.server.redirects["/streams/v1/index.json"] = (
            f"https://localhost:{self.server.port}/streams/v1/index.json")
        s, body = self.pull_as(USER, "x", "local")
        self.assertEqual(s, 403, body)
        self.assertIn("redirected to https://localhost", body["error"]["message"])
        s, body = self.pull_as(0, "rootbb", "local")
        self.assertEqual(s, 503, body)
        self.assertIn(f"localhost:{self.server.port}/streams/v1/index.json: TLS handshake failed",
                      body["error"]["message"])


if __name__ == "__main__":
    harness.main()
