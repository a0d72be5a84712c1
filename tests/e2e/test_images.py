"""Images against a real HTTPS image server on loopback (imageserver.py, a CA of its own given
to hangard with --image-ca): what a server offers in both catalog formats; pulls that verify
the catalog's SHA-256 (or the LXC directory's SHA256SUMS), unpack, and register only whole
images; a checksum mismatch, a transfer cut off mid-way (resumed with Range, or failing
clearly after the retries), an unverifiable certificate, bad input; local imports; deletion;
images surviving a restart; operation progress events; hangarctl's image commands."""
import json
import os
import subprocess
import tempfile
import threading

import harness
from harness import DaemonTest, wait_for
from imageserver import ImageServer, make_busybox_rootfs_tar

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")


class Images(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        self.server_dir = tempfile.mkdtemp(prefix="hangar-images-")
        self.server = ImageServer(self.server_dir)
        self.server.start()
        self.sha = self.server.publish()
        self.extra = ("--image-ca", self.server.ca)
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.server.stop()
        subprocess.run(["rm", "-rf", self.server_dir])

    def pull(self, name, alias="busybox/1.36", type_="simplestreams", server=None, wait=True):
        body = {"name": name, "source": {"type": type_, "server": server or self.server.url,
                                         "alias": alias}}
        return self.daemon.request("POST", "/v1/images" + ("?wait=true" if wait else ""), body)

    def images_dir(self):
        return os.path.join(self.state_dir, "images")

    def assert_clean(self, name):
        """Nothing registered under `name` and nothing left of the attempt on disk."""
        self.assertEqual(self.daemon.request("GET", f"/v1/images/{name}")[0], 404)
        wait_for(lambda: not [e for e in os.listdir(self.images_dir())
                              if e == name or e.startswith(".pull-")], 10,
                 "the failed pull's files to go")

    def test_remote_lists_both_catalog_formats(self):
        status, body = self.daemon.request(
            "GET", f"/v1/images/remote?server={self.server.url}&type=simplestreams")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["host_arch"], "amd64")
        by_alias = {i["aliases"][-1]: i for i in body["images"]}
        self.assertEqual(by_alias["busybox/1.36"]["sha256"], self.sha)
        self.assertEqual(by_alias["busybox/1.36"]["format"], "tar")
        self.assertEqual(by_alias["busybox/1.36"]["version"], "20261125_00:00")
        status, body = self.daemon.request(
            "GET", f"/v1/images/remote?server={self.server.url}/&type=lxc")
        self.assertEqual(status, 200, body)
        aliases = [a for i in body["images"] for a in i["aliases"]]
        self.assertIn("busybox/1.36/amd64/default", aliases)
        # A server that is no image server, and one that is not there.
        status, body = self.daemon.request(
            "GET", f"/v1/images/remote?server={self.server.url}/nothing&type=lxc")
        self.assertEqual(status, 404, body)
        status, body = self.daemon.request(
            "GET", "/v1/images/remote?server=https://127.0.0.1:1&type=lxc")
        self.assertEqual(status, 503, body)
        status, body = self.daemon.request("GET", "/v1/images/remote?server=ftp://x&type=lxc")
        self.assertEqual(status, 400, body)
        status, body = self.daemon.request(
            "GET", f"/v1/images/remote?server={self.server.url}&type=oci")
        self.assertEqual(status, 400, body)

    def test_pull_both_formats_verify_unpack_and_delete(self):
        status, img = self.pull("bb")
        self.assertEqual(status, 201, img)
        self.assertEqual(img["sha256"], self.sha)
        self.assertEqual(img["size"], self.server.size)
        self.assertEqual((img["os"], img["release"], img["arch"]), ("Busybox", "1.36", "amd64"))
        self.assertEqual(img["source"], {"type": "simplestreams", "server": self.server.url,
                                         "alias": "busybox/1.36"})
        rootfs = os.path.join(self.images_dir(), "bb", "rootfs")
        self.assertTrue(os.path.isfile(os.path.join(rootfs, "bin/busybox")))
        self.assertEqual(os.readlink(os.path.join(rootfs, "bin/sh")), "busybox")
        self.assertFalse(os.path.exists(os.path.join(self.images_dir(), "bb", "archive")))

        # The LXC index has no checksums: the directory's SHA256SUMS is checked instead.
        status, img = self.pull("bb-lxc", alias="busybox/1.36/amd64/default", type_="lxc")
        self.assertEqual(status, 201, img)
        self.assertEqual(img["sha256"], self.sha)
        self.assertIn(("/images/busybox/1.36/amd64/default/20261125_00:00/SHA256SUMS", None),
                      self.server.requests)

        status, body = self.daemon.request("GET", "/v1/images")
        self.assertEqual([i["name"] for i in body["images"]], ["bb", "bb-lxc"])
        self.assertEqual(self.pull("bb")[0], 409)  # the name is taken

        status, _ = self.daemon.request("DELETE", "/v1/images/bb")
        self.assertEqual(status, 200)
        self.assertEqual(self.daemon.request("GET", "/v1/images/bb")[0], 404)
        wait_for(lambda: os.listdir(self.images_dir()) == ["bb-lxc"], 10, "bb's files to go")
        self.assertEqual(self.daemon.request("DELETE", "/v1/images/bb")[0], 404)

        # Images are kept across a restart, and a pull cut short by one is cleaned up.
        os.makedirs(os.path.join(self.images_dir(), ".pull-x-1234", "rootfs"))
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(self.daemon.request("GET", "/v1/images/bb-lxc")[1]["sha256"], self.sha)
        wait_for(lambda: os.listdir(self.images_dir()) == ["bb-lxc"], 10, "leftovers to go")

    def test_operation_reports_progress_and_events(self):
        status, body = self.daemon.request("GET", "/v1/machines")
        since = body["revision"]
        status, body = self.pull("bb", wait=False)
        self.assertEqual(status, 202, body)
        op = body["operation"]
        done = wait_for(lambda: (lambda o: o if o["status"] != "running" else None)(
            self.daemon.request("GET", f"/v1/operations/{op}")[1]), 30, "the pull to finish")
        self.assertEqual(done["status"], "succeeded", done)
        self.assertEqual(done["image"], "bb")
        self.assertEqual(done["action"], "image.pull")
        self.assertEqual(done["progress"]["phase"], "unpack")
        # The event stream has it all, in order.
        # `events` replays, then follows live: read until the operation's end, then stop it.
        tail = subprocess.Popen([HANGARCTL, "--socket", self.daemon.socket, "--json", "events",
                                 "--since", str(since)], stdout=subprocess.PIPE, text=True)
        guard = threading.Timer(30, tail.kill)
        guard.start()
        events = []
        try:
            for line in tail.stdout:
                events.append(json.loads(line))
                if events[-1]["type"] == "operation.done":
                    break
        finally:
            guard.cancel()
            tail.kill()
            tail.wait()
            tail.stdout.close()
        types = [e["type"] for e in events]
        self.assertEqual(types[0], "operation.created", types)
        self.assertIn("operation.progress", types)
        self.assertLess(types.index("image.created"), types.index("operation.done"))
        phases = [e["data"]["phase"] for e in events if e["type"] == "operation.progress"]
        self.assertEqual(phases[0], "catalog")
        self.assertEqual(phases[-1], "unpack")
        self.assertIn("download", phases)

    def test_checksum_mismatch_registers_nothing(self):
        status, body = self.pull("bad", alias="busybox/bad")
        self.assertEqual(status, 503, body)
        self.assertIn("checksum mismatch", body["error"]["message"])
        self.assert_clean("bad")
        # Same through the LXC index and its SHA256SUMS.
        status, body = self.pull("bad", alias="busybox/bad/amd64/default", type_="lxc")
        self.assertEqual(status, 503, body)
        self.assertIn("checksum mismatch", body["error"]["message"])
        self.assert_clean("bad")

    def test_cut_transfer_is_resumed_or_fails_clearly(self):
        half = self.server.size // 2
        self.server.cut(self.server.rootfs_path, half, 1)
        status, img = self.pull("resumed")
        self.assertEqual(status, 201, img)
        self.assertEqual(img["sha256"], self.sha)
        ranges = [r for p, r in self.server.requests if p == self.server.rootfs_path]
        self.assertEqual(ranges, [None, f"bytes={half}-"])
        # Cut every time, early: each retry resumes a little further, then they run out with
        # a clear error, and nothing is registered.
        self.server.cut(self.server.rootfs_path, 1000, 100)
        status, body = self.pull("cut")
        self.assertEqual(status, 503, body)
        self.assertIn("broke off", body["error"]["message"])
        self.assert_clean("cut")

    def test_certificate_must_verify(self):
        # The server's certificate names 127.0.0.1 only.
        url = self.server.url.replace("127.0.0.1", "localhost")
        status, body = self.pull("tls", server=url)
        self.assertEqual(status, 503, body)
        self.assertIn("TLS handshake failed", body["error"]["message"])
        self.assert_clean("tls")

    def test_bad_input(self):
        url = self.server.url
        cases = [
            ({"name": "../x", "source": {"type": "lxc", "server": url, "alias": "a"}}, 400),
            ({"name": "a" * 300, "source": {"type": "lxc", "server": url, "alias": "a"}}, 400),
            ({"name": "has space", "source": {"type": "lxc", "server": url, "alias": "a"}}, 400),
            ({"name": "remote", "source": {"type": "lxc", "server": url, "alias": "a"}}, 400),
            ({"name": "x", "source": {"type": "lxc", "server": url, "alias": "a b"}}, 400),
            ({"name": "x", "source": {"type": "lxc", "server": "ftp://h/", "alias": "a"}}, 400),
            ({"name": "x", "source": {"type": "lxc", "server": "https://u:p@h/",
                                      "alias": "a"}}, 400),
            ({"name": "x", "source": {"type": "oci", "server": url, "alias": "a"}}, 400),
            ({"name": "x", "source": {"type": "lxc", "server": url, "alias": "a", "x": 1}}, 400),
            ({"name": "x", "source": {"type": "file", "path": "relative.tar"}}, 400),
            # Missing, and not readable by the caller: the same 422.
            ({"name": "x", "source": {"type": "file", "path": "/nonexistent.tar"}}, 422),
            ({"name": "x", "source": {"type": "file", "path": "/dev/null"}}, 422),
            ({"name": "x", "source": {"type": "file", "path": "/x", "server": url}}, 400),
            ({"name": "x", "source": "debian"}, 400),
            ({"name": "x"}, 400),
            ({"name": 7, "source": {}}, 400),
            ({"name": "x", "source": {}, "extra": True}, 400),
        ]
        for body, want in cases:
            status, answer = self.daemon.request("POST", "/v1/images", body)
            self.assertEqual(status, want, (body, answer))
            self.assertIn("message", answer["error"])
        self.assertEqual(self.daemon.request("POST", "/v1/images", raw="{nope")[0], 400)
        self.assertEqual(self.daemon.request("GET", "/v1/images/..%2Fx")[0], 400)
        self.assertEqual(self.daemon.request("PUT", "/v1/images/x")[0], 405)
        # An alias the server does not have for this architecture.
        status, body = self.pull("none", alias="debian/12")
        self.assertEqual(status, 404, body)
        self.assertIn("no image", body["error"]["message"])
        self.assert_clean("none")
        self.assertEqual(self.daemon.request("GET", "/v1/images")[1], {"images": []})

    def test_import_local_files(self):
        good = os.path.join(self.server_dir, "rootfs.tar.gz")
        sha = make_busybox_rootfs_tar(good, "gz")
        status, img = self.daemon.request(
            "POST", "/v1/images?wait=true", {"name": "local", "source": {"type": "file",
                                                                         "path": good}})
        self.assertEqual(status, 201, img)
        self.assertEqual((img["sha256"], img["source"]), (sha, {"type": "file", "path": good}))
        self.assertTrue(os.path.isfile(os.path.join(self.images_dir(), "local/rootfs/bin/busybox")))
        self.assertTrue(os.path.exists(good))  # the caller's file is left alone
        # A squashfs (what current simplestreams servers offer) is unpacked with unsquashfs.
        tree = os.path.join(self.server_dir, "tree")
        os.makedirs(tree)
        subprocess.run(["tar", "-xzf", good, "-C", tree], check=True)
        squash = os.path.join(self.server_dir, "rootfs.squashfs")
        subprocess.run(["mksquashfs", tree, squash, "-quiet", "-no-progress"], check=True)
        status, img = self.daemon.request(
            "POST", "/v1/images?wait=true", {"name": "squash", "source": {"type": "file",
                                                                          "path": squash}})
        self.assertEqual(status, 201, img)
        self.assertEqual(os.readlink(os.path.join(self.images_dir(), "squash/rootfs/bin/sh")),
                         "busybox")
        junk = os.path.join(self.server_dir, "junk.tar")
        with open(junk, "wb") as f:
            f.write(os.urandom(4096))
        status, body = self.daemon.request(
            "POST", "/v1/images?wait=true", {"name": "junk", "source": {"type": "file",
                                                                        "path": junk}})
        self.assertEqual(status, 422, body)
        self.assertIn("could not be unpacked", body["error"]["message"])
        self.assert_clean("junk")

    def test_hangarctl_image_commands(self):
        def ctl(*args, expect=0):
            out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, *args],
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, expect, (args, out.stdout, out.stderr))
            return out.stdout, out.stderr
        out, _ = ctl("image", "remote", self.server.url)
        self.assertIn("busybox/1.36", out)
        out, _ = ctl("image", "remote", self.server.url, "--type", "lxc")
        self.assertIn("busybox/1.36/amd64/default", out)
        out, _ = ctl("image", "pull", self.server.url, "busybox/1.36")
        self.assertIn(f"busybox-1-36: ready, sha256 {self.sha}", out)
        out, _ = ctl("--json", "image", "pull", self.server.url, "busybox/1.36/amd64/default",
                     "--type", "lxc", "--name", "bb")
        self.assertEqual(json.loads(out)["name"], "bb")
        out, _ = ctl("image", "list")
        self.assertEqual(out.splitlines()[0].split(), ["NAME", "KIND", "OS/FORMAT", "ARCH",
                                                       "VERSION", "SIZE", "SOURCE"])
        self.assertRegex(out, r"busybox-1-36 +rootfs ")
        self.assertEqual(json.loads(ctl("image", "show", "bb")[0])["sha256"], self.sha)
        tarball = os.path.join(self.server_dir, "import.tar.xz")
        make_busybox_rootfs_tar(tarball)
        out, _ = ctl("image", "import", "imported", tarball)
        self.assertIn("imported: ready", out)
        self.assertEqual(len(json.loads(ctl("--json", "image", "list")[0])["images"]), 3)
        ctl("image", "delete", "bb")
        _, err = ctl("image", "show", "bb", expect=1)
        self.assertIn("no image", err)
        _, err = ctl("image", "pull", self.server.url, "busybox/bad", expect=1)
        self.assertIn("checksum mismatch", err)
        ctl("image", "frobnicate", expect=2)


if __name__ == "__main__":
    harness.main()
