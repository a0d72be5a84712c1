"""Storage pools: the default pool in the state dir, dir pools admins add (probed: writable,
reflink or not), capacity and free space as the file system reports them, kept across a
restart, forgotten without touching their files; users read them; hangarctl; bad input."""
import json
import os
import shutil
import subprocess
import tempfile

import harness
from harness import DaemonTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")
USER = 1001


class Pools(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)
        self.outside = tempfile.mkdtemp(prefix="hangar-e2e-pool-")
        self.addCleanup(shutil.rmtree, self.outside, True)

    def test_default_and_added_pools(self):
        s, lst = self.daemon.request_as(USER, "GET", "/v1/pools")
        self.assertEqual(s, 200, lst)
        (default,) = lst["pools"]
        self.assertEqual((default["name"], default["driver"], default["path"]),
                         ("default", "dir", os.path.join(self.state_dir, "pools", "default")))
        st = os.statvfs(default["path"])
        self.assertEqual(default["capacity_bytes"], st.f_blocks * st.f_frsize)
        self.assertLess(abs(default["free_bytes"] - st.f_bavail * st.f_frsize), 64 << 20)
        self.assertEqual(os.stat(default["path"]).st_mode & 0o777, 0o700)

        data = os.path.join(self.outside, "data")
        os.mkdir(data)
        with open(os.path.join(data, "keep"), "w") as f:
            f.write("x")
        self.refused(self.daemon.request_as(USER, "POST", "/v1/pools",
                                            {"name": "fast", "path": data}), 403, "forbidden")
        s, pool = self.daemon.request("POST", "/v1/pools", {"name": "fast", "driver": "dir",
                                                            "path": data + "/"})
        self.assertEqual(s, 201, pool)
        # What cp finds, independently: can it clone a file there?
        cloned = subprocess.run(["cp", "--reflink=always", os.path.join(data, "keep"),
                                 os.path.join(self.outside, "clone")],
                                capture_output=True).returncode == 0
        self.assertEqual((pool["path"], pool["reflink"]), (data, cloned))
        self.assertEqual(os.listdir(data), ["keep"])  # the probe leaves nothing behind
        self.refused(self.daemon.request("POST", "/v1/pools", {"name": "fast", "path": data}),
                     409, "conflict", "already exists")
        os.mkdir(os.path.join(data, "sub"))
        self.refused(self.daemon.request("POST", "/v1/pools",
                                         {"name": "sub", "path": os.path.join(data, "sub")}),
                     409, "conflict", "in or around pool fast")

        # Kept across a kill -9; a delete forgets it and leaves its files.
        self.daemon.kill()
        self.daemon.start()
        s, again = self.daemon.request("GET", "/v1/pools/fast")
        self.assertEqual((s, again["path"], again["created_at"]), (200, data, pool["created_at"]))
        s, metrics = self.daemon.request("GET", "/v1/metrics")
        self.assertIn("\nhangar_pools 2\n", metrics)
        self.assertIn('hangar_pool_free_bytes{pool="fast"} ', metrics)
        self.assertIn('hangar_pool_capacity_bytes{pool="default"} ', metrics)
        self.refused(self.daemon.request_as(USER, "DELETE", "/v1/pools/fast"), 403, "forbidden")
        self.refused(self.daemon.request("DELETE", "/v1/pools/default"), 409, "invalid_state")
        s, _ = self.daemon.request("DELETE", "/v1/pools/fast")
        self.assertEqual(s, 200)
        self.assertEqual(sorted(os.listdir(data)), ["keep", "sub"])
        self.refused(self.daemon.request("GET", "/v1/pools/fast"), 404, "not_found")

    def test_bad_input(self):
        afile = os.path.join(self.outside, "file")
        open(afile, "w").close()
        link = os.path.join(self.outside, "link")
        os.symlink(self.outside, link)
        for body, status, code in [
                ({"name": "p", "path": "relative/dir"}, 400, "bad_request"),
                ({"name": "p", "path": self.outside + "/../x"}, 400, "bad_request"),
                ({"name": "p", "path": "/"}, 400, "bad_request"),
                ({"name": "p", "driver": "zfs", "path": self.outside}, 400, "bad_request"),
                ({"name": "../x", "path": self.outside}, 400, "invalid_name"),
                ({"name": "a b", "path": self.outside}, 400, "invalid_name"),
                ({"name": "a" * 300, "path": self.outside}, 400, "invalid_name"),
                ({"name": "p"}, 400, "bad_request"),
                ({"name": "p", "path": self.outside, "size": 1}, 400, "bad_request"),
                ({"name": "p", "path": self.outside + "/missing"}, 422, "invalid_spec"),
                ({"name": "p", "path": afile}, 422, "invalid_spec"),
                ({"name": "p", "path": link}, 422, "invalid_spec"),
                ({"name": "p", "path": self.state_dir}, 422, "invalid_spec"),
                ({"name": "p", "path": os.path.join(self.state_dir, "machines")}, 422,
                 "invalid_spec"),
                ({"name": "default", "path": self.outside}, 409, "conflict")]:
            self.refused(self.daemon.request("POST", "/v1/pools", body), status, code)
        self.refused(self.daemon.request("POST", "/v1/pools", raw="{"), 400, "invalid_json")
        s, lst = self.daemon.request("GET", "/v1/pools")
        self.assertEqual([p["name"] for p in lst["pools"]], ["default"])

    def test_hangarctl(self):
        def ctl(*args, expect=0):
            out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket] + list(args),
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, expect, (args, out.stdout, out.stderr))
            return out.stdout, out.stderr

        ctl("pool", "create", "spare", self.outside)
        out, _ = ctl("pool", "list")
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(rows[0], ["NAME", "DRIVER", "PATH", "REFLINK", "SIZE", "FREE"])
        self.assertEqual([r[:3] for r in rows[1:]],
                         [["default", "dir", os.path.join(self.state_dir, "pools", "default")],
                          ["spare", "dir", self.outside]])
        self.assertIn(rows[2][3], ("yes", "no"))
        self.assertEqual(json.loads(ctl("pool", "show", "spare")[0])["path"], self.outside)
        ctl("pool", "delete", "spare")
        _, err = ctl("pool", "show", "spare", expect=1)
        self.assertIn("no pool named", err)
        ctl("pool", "create", "only-name", expect=2)


if __name__ == "__main__":
    harness.main()
