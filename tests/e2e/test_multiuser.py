"""Several local users over the unix socket: each sees and manages only the machines it owns
(others' machines do not exist for it), root and the admin group see all."""
import json
import os
import subprocess

import harness
from harness import DaemonTest
from imageserver import make_busybox_rootfs_tar

ADMIN_GROUP = "adm"  # exists on Debian; used as the admin group, nothing is changed on the host
ADMIN_GID = 4


class MultiUser(DaemonTest):
    qemu = harness.FAKE_QEMU
    extra = ("--admin-group", ADMIN_GROUP)

    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)  # as /var/lib/hangar: others may reach the socket

    def as_user(self, uid, method, path, body=None, groups=()):
        return self.daemon.request_as(uid, method, path, body, groups)

    def test_owners_see_only_their_own(self):
        s, m1 = self.as_user(1001, "POST", "/v1/machines", {"name": "u1m"})
        self.assertEqual((s, m1["owner"]), (201, 1001))
        s, m2 = self.as_user(1002, "POST", "/v1/machines", {"name": "u2m"})
        self.assertEqual((s, m2["owner"]), (201, 1002))
        self.created_uuids += [m1["uuid"], m2["uuid"]]

        s, lst = self.as_user(1001, "GET", "/v1/machines")
        self.assertEqual([m["name"] for m in lst["machines"]], ["u1m"])
        s, lst = self.as_user(1002, "GET", "/v1/machines")
        self.assertEqual([m["name"] for m in lst["machines"]], ["u2m"])
        s, info = self.as_user(1001, "GET", "/v1")
        self.assertEqual(info["auth"], {"method": "unix", "uid": 1001, "admin": False})
        # The other's machine does not exist for them: 404 for every verb.
        for method, path in [("GET", "/v1/machines/u2m"), ("DELETE", "/v1/machines/u2m"),
                             ("POST", "/v1/machines/u2m/actions/start"),
                             ("GET", "/v1/machines/u2m/console/log")]:
            s, body = self.as_user(1001, method, path)
            self.assertEqual((s, body["error"]["code"]), (404, "not_found"), (method, path))
        # A name taken by another user is still a conflict (names are global).
        s, body = self.as_user(1001, "POST", "/v1/machines", {"name": "u2m"})
        self.assertEqual(s, 409)
        s, m = self.as_user(1001, "POST", "/v1/machines/u1m/actions/start")
        self.assertEqual((s, m["state"]), (200, "running"))

        status, lst = self.daemon.request("GET", "/v1/machines")  # root
        self.assertEqual(sorted(m["name"] for m in lst["machines"]), ["u1m", "u2m"])
        s, lst = self.as_user(1003, "GET", "/v1/machines", groups=[ADMIN_GID])
        self.assertEqual(sorted(m["name"] for m in lst["machines"]), ["u1m", "u2m"])
        s, info = self.as_user(1003, "GET", "/v1", groups=[ADMIN_GID])
        self.assertTrue(info["auth"]["admin"])
        s, m = self.as_user(1003, "POST", "/v1/machines/u1m/actions/kill", groups=[ADMIN_GID])
        self.assertEqual((s, m["state"]), (200, "stopped"))

        # Tokens act as their creator: user 1002's token sees only u2m over HTTPS.
        s, t = self.as_user(1002, "POST", "/v1/tokens", {"name": "u2tok"})
        self.assertEqual((s, t["uid"], t["admin"]), (201, 1002, False))
        out = subprocess.run(["curl", "-s", "-k", "-H", f"Authorization: Bearer {t['token']}",
                              self.daemon.url + "/v1/machines"], capture_output=True, text=True)
        self.assertEqual([m["name"] for m in json.loads(out.stdout)["machines"]], ["u2m"])
        s, lst = self.as_user(1001, "GET", "/v1/tokens")
        self.assertEqual(lst["tokens"], [])
        s, body = self.as_user(1001, "DELETE", "/v1/tokens/u2tok")
        self.assertEqual(s, 404)

    def test_events_are_filtered_by_owner(self):
        self.as_user(1001, "POST", "/v1/machines", {"name": "e1"})
        self.as_user(1002, "POST", "/v1/machines", {"name": "e2"})
        script = ("import asyncio, json, websockets\n"
                  "async def main():\n"
                  f"    async with websockets.unix_connect('{self.daemon.socket}', "
                  "'ws://h/v1/events?since=0') as ws:\n"
                  "        print(json.loads(await asyncio.wait_for(ws.recv(), 10))['machine'])\n"
                  "        try:\n"
                  "            print(json.loads(await asyncio.wait_for(ws.recv(), 1))['machine'])\n"
                  "        except asyncio.TimeoutError:\n"
                  "            print('no more')\n"
                  "asyncio.run(main())\n")
        out = subprocess.run(["setpriv", "--reuid=1002", "--regid=0", "--clear-groups",
                              "/usr/bin/python3", "-c", script], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.stdout.split(), ["e2", "no", "more"], out.stderr)

    def test_images_are_shared_but_owned(self):
        # A user imports a tarball of their own; files are opened as the caller, so another
        # user cannot import what only its owner may read.
        tarball = os.path.join(self.state_dir, "u1.tar.gz")
        make_busybox_rootfs_tar(tarball, "gz")
        os.chown(tarball, 1001, 0)
        os.chmod(tarball, 0o600)
        src = {"type": "file", "path": tarball}
        s, body = self.as_user(1002, "POST", "/v1/images?wait=true", {"name": "x", "source": src})
        self.assertEqual((s, body["error"]["code"]), (422, "invalid_spec"))
        self.assertIn("uid 1002 may not read it", body["error"]["message"])
        s, img = self.as_user(1001, "POST", "/v1/images?wait=true", {"name": "u1img",
                                                                     "source": src})
        self.assertEqual((s, img["owner"]), (201, 1001))
        # Everyone sees it; only its owner, root and the admin group may delete it.
        s, lst = self.as_user(1002, "GET", "/v1/images")
        self.assertEqual([i["name"] for i in lst["images"]], ["u1img"])
        s, body = self.as_user(1002, "DELETE", "/v1/images/u1img")
        self.assertEqual((s, body["error"]["code"]), (403, "forbidden"))
        # Image events are everyone's (like the list); the pull's operation stays its owner's.
        read = ("import asyncio, json, sys, websockets\n"
                "async def main():\n"
                "    url = 'ws://h/v1/events?since=0&types=image.created,operation.created'\n"
                "    async with websockets.unix_connect(sys.argv[1], url) as ws:\n"
                "        print(json.loads(await asyncio.wait_for(ws.recv(), 10))['type'])\n"
                "asyncio.run(main())\n")
        out = subprocess.run(["setpriv", "--reuid=1002", "--regid=0", "--clear-groups",
                              "/usr/bin/python3", "-c", read, self.daemon.socket],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.stdout.strip(), "image.created", out.stderr)
        s, _ = self.as_user(1003, "DELETE", "/v1/images/u1img", groups=(ADMIN_GID,))
        self.assertEqual(s, 200)


if __name__ == "__main__":
    harness.main()
