"""A token or client certificate acts with its creator's rights as they are now: made while
the creator was in the admin group it is admin, and it stops being admin at once (within the
daemon's one-second cache) when the creator is removed from the group (gpasswd -d), with no
restart and no new token. A real user and group are made for the test and removed after."""
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time

import harness
from harness import DaemonTest
from test_client_certs import make_cert

TAG = f"{os.getpid() % 100000}"
GROUP = f"hgtadm{TAG}"  # a group of this test's own, never a host's
USER = f"hgtusr{TAG}"


def sh(*cmd):
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=60)


class CurrentRights(DaemonTest):
    qemu = harness.FAKE_QEMU
    extra = ("--admin-group", GROUP)

    def setUp(self):
        # The group must exist when hangard starts (it resolves the name once).
        sh("groupadd", GROUP)
        self.addCleanup(subprocess.run, ["groupdel", GROUP], capture_output=True)
        sh("useradd", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin",
           "--groups", GROUP, USER)
        self.addCleanup(subprocess.run, ["userdel", USER], capture_output=True)
        self.uid = pwd.getpwnam(USER).pw_uid
        self.gid = grp.getgrnam(GROUP).gr_gid
        self.tmp = tempfile.mkdtemp(prefix="hangar-rights-")
        self.addCleanup(shutil.rmtree, self.tmp, True)
        super().setUp()
        os.chmod(self.state_dir, 0o711)

    def as_user(self, method, path, body=None):
        """As USER, with the groups the user database gives it now."""
        groups = os.getgrouplist(USER, pwd.getpwnam(USER).pw_gid)
        return self.daemon.request_as(self.uid, method, path, body, groups)

    def https(self, path, token=None, cert=None):
        args = ["curl", "-s", "-k", "-m", "30", "-w", "\n%{http_code}", self.daemon.url + path]
        if token:
            args += ["-H", f"Authorization: Bearer {token}"]
        if cert:
            args += ["--cert", cert[0], "--key", cert[1]]
        out = subprocess.run(args, capture_output=True, text=True, timeout=40)
        text, _, code = out.stdout.rpartition("\n")
        return int(code or 0), json.loads(text) if text.startswith("{") else text

    def admin_seen(self, token, cert):
        """(token is admin, token sees root's machine, cert is admin, cert sees it)."""
        out = []
        for cred in ({"token": token}, {"cert": cert}):
            s, info = self.https("/v1", **cred)
            self.assertEqual(s, 200, info)
            s, m = self.https("/v1/machines/rootm", **cred)
            self.assertIn(s, (200, 404), m)
            out += [info["auth"]["admin"], s == 200]
        return tuple(out)

    def listed_admin(self):
        s, toks = self.daemon.request("GET", "/v1/tokens")
        s2, certs = self.daemon.request("GET", "/v1/certificates")
        self.assertEqual((s, s2), (200, 200), (toks, certs))
        return ([t["admin"] for t in toks["tokens"] if t["name"] == "rt-tok"] +
                [c["admin"] for c in certs["certificates"] if c["name"] == "rt-cert"])

    def test_leaving_the_admin_group_takes_the_right_from_tokens_and_certificates(self):
        self.create("rootm")  # root's: only admins see it
        s, info = self.as_user("GET", "/v1")
        self.assertEqual(info["auth"], {"method": "unix", "uid": self.uid, "admin": True})
        s, tok = self.as_user("POST", "/v1/tokens", {"name": "rt-tok"})
        self.assertEqual((s, tok["uid"], tok["admin"]), (201, self.uid, True), tok)
        cert = make_cert(self.tmp, "rt")
        s, c = self.as_user("POST", "/v1/certificates", {"name": "rt-cert",
                                                         "fingerprint": cert[2]})
        self.assertEqual((s, c["admin"]), (201, True), c)

        self.assertEqual(self.admin_seen(tok["token"], cert), (True, True, True, True))
        self.assertEqual(self.listed_admin(), [True, True])

        sh("gpasswd", "-d", USER, GROUP)
        removed = time.monotonic()
        # The next request, or within the one-second cache.
        deadline = removed + 3
        while self.admin_seen(tok["token"], cert) != (False, False, False, False):
            self.assertLess(time.monotonic(), deadline, "the admin right stayed with the token")
            time.sleep(0.1)
        took = time.monotonic() - removed
        self.assertLess(took, 2.0)
        s, body = self.https("/v1/machines/rootm", token=tok["token"])
        self.assertEqual((s, body["error"]["code"]), (404, "not_found"))
        s, info = self.https("/v1", token=tok["token"])
        self.assertEqual(info["auth"], {"method": "token", "uid": self.uid, "admin": False})
        self.assertEqual(self.listed_admin(), [False, False])
        # The token still works as the user: it is not revoked, only no longer admin.
        s, lst = self.https("/v1/machines", token=tok["token"])
        self.assertEqual((s, lst["machines"]), (200, []))

        # And back: the right is the group's, not the token's.
        sh("gpasswd", "-a", USER, GROUP)
        deadline = time.monotonic() + 3
        while self.admin_seen(tok["token"], cert) != (True, True, True, True):
            self.assertLess(time.monotonic(), deadline, "the admin right did not come back")
            time.sleep(0.1)

        # A deleted user's token is no one's admin.
        sh("userdel", USER)
        deadline = time.monotonic() + 3
        while self.admin_seen(tok["token"], cert) != (False, False, False, False):
            self.assertLess(time.monotonic(), deadline, "a deleted user stayed admin")
            time.sleep(0.1)


if __name__ == "__main__":
    harness.main()
