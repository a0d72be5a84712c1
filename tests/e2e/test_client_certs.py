"""Trusted TLS client certificates: registered over the unix socket (PEM or SHA-256
fingerprint), an HTTPS request presenting one acts as the uid that registered it, an unknown
certificate is 401, removal takes effect at once, and the registry survives a restart."""
import json
import os
import subprocess
import tempfile

import harness
from harness import DaemonTest

HANGARCTL = os.environ["HANGARCTL"]


def make_cert(directory, name):
    cert, key = os.path.join(directory, name + ".pem"), os.path.join(directory, name + ".key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", f"/CN={name}",
                    "-keyout", key, "-out", cert], check=True, capture_output=True)
    fp = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-fingerprint", "-sha256"],
                        check=True, capture_output=True, text=True).stdout
    return cert, key, fp.strip().split("=", 1)[1]


class ClientCertificates(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        super().setUp()
        self.tmp = tempfile.mkdtemp(prefix="hangar-certs-")
        os.chmod(self.state_dir, 0o711)

    def tearDown(self):
        subprocess.run(["rm", "-rf", self.tmp])
        super().tearDown()

    def curl(self, method, path, cert=None, body=None):
        args = ["curl", "-s", "-k", "-m", "30", "-X", method, "-w", "\n%{http_code}",
                self.daemon.url + path]
        if cert:
            args += ["--cert", cert[0], "--key", cert[1]]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=40)
        text, _, code = out.stdout.rpartition("\n")
        return int(code or 0), (json.loads(text) if text.startswith("{") else text)

    def ctl(self, *args, uid=None):
        cmd = ["setpriv", f"--reuid={uid}", "--regid=0", "--clear-groups"] if uid else []
        cmd += [HANGARCTL, "--socket", self.daemon.socket] + list(args)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30)

    def test_certificates_authenticate_as_their_registrant(self):
        a = make_cert(self.tmp, "a")
        b = make_cert(self.tmp, "b")
        stranger = make_cert(self.tmp, "stranger")
        # a by its PEM (root), b by its fingerprint (uid 1001).
        out = self.ctl("cert", "add", "ci-a", a[0])
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(out.stdout.strip(), a[2].replace(":", "").lower())
        out = self.ctl("cert", "add", "ci-b", "--fingerprint", b[2], uid=1001)
        self.assertEqual(out.returncode, 0, out.stderr)

        status, info = self.curl("GET", "/v1", cert=a)
        self.assertEqual((status, info["auth"]), (200, {"method": "certificate", "uid": 0,
                                                       "admin": True}))
        status, info = self.curl("GET", "/v1", cert=b)
        self.assertEqual(info["auth"], {"method": "certificate", "uid": 1001, "admin": False})
        # b acts as uid 1001: owns what it creates, does not see root's machines.
        self.create("rootm")
        status, m = self.curl("POST", "/v1/machines", cert=b, body={"name": "bm"})
        self.assertEqual((status, m["owner"]), (201, 1001))
        self.created_uuids.append(m["uuid"])
        status, lst = self.curl("GET", "/v1/machines", cert=b)
        self.assertEqual([x["name"] for x in lst["machines"]], ["bm"])
        status, lst = self.curl("GET", "/v1/machines", cert=a)
        self.assertEqual(sorted(x["name"] for x in lst["machines"]), ["bm", "rootm"])

        # An unknown certificate is not a way in.
        status, body = self.curl("GET", "/v1/machines", cert=stranger)
        self.assertEqual(status, 401)
        self.assertIn("not trusted", body["error"]["message"])
        self.assertIn(stranger[2].replace(":", "").lower(), body["error"]["message"])
        # Certificates are managed over the unix socket only.
        status, body = self.curl("POST", "/v1/certificates", cert=a,
                                 body={"name": "x", "fingerprint": stranger[2]})
        self.assertEqual((status, body["error"]["code"]), (403, "forbidden"))

        # hangarctl over HTTPS with a certificate.
        out = subprocess.run([HANGARCTL, "--url", self.daemon.url, "--cert", b[0], "--key", b[1],
                              "--insecure", "--json", "list"], capture_output=True, text=True,
                             timeout=30)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([x["name"] for x in json.loads(out.stdout)["machines"]], ["bm"])
        out = subprocess.run([HANGARCTL, "--url", self.daemon.url, "--cert", b[0], "list"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(out.returncode, 2)

        # Listing: each user sees their own; root sees all, with fingerprints.
        out = self.ctl("--json", "cert", "list", uid=1001)
        self.assertEqual([c["name"] for c in json.loads(out.stdout)["certificates"]], ["ci-b"])
        out = self.ctl("cert", "list")
        self.assertIn("ci-a", out.stdout)
        self.assertIn(b[2].replace(":", "").lower(), out.stdout)
        # Tokens and certificates are listed apart.
        status, toks = self.daemon.request("GET", "/v1/tokens")
        self.assertEqual(toks["tokens"], [])

        # The registry survives a restart; removal works at once.
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(self.curl("GET", "/v1", cert=b)[0], 200)
        out = self.ctl("cert", "remove", "ci-a", uid=1001)  # not theirs: does not exist for them
        self.assertEqual(out.returncode, 1)
        self.assertIn("no certificate named ci-a", out.stderr)
        out = self.ctl("cert", "remove", "ci-b", uid=1001)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.curl("GET", "/v1", cert=b)[0], 401)
        self.assertEqual(self.curl("GET", "/v1", cert=a)[0], 200)

    def test_bad_certificate_registrations(self):
        a = make_cert(self.tmp, "a")
        for body, code in [
            ({"name": "x"}, "bad_request"),
            ({"name": "x", "fingerprint": a[2], "certificate": "x"}, "bad_request"),
            ({"name": "x", "fingerprint": "ab" * 31}, "bad_request"),
            ({"name": "x", "fingerprint": "zz" * 32}, "bad_request"),
            ({"name": "x", "certificate": "-----BEGIN CERTIFICATE-----\nAAAA\n"}, "bad_request"),
            ({"name": "../x", "fingerprint": a[2]}, "invalid_name"),
            ({"name": "x", "fingerprint": a[2], "admin": True}, "bad_request"),
            ({"name": "x", "fingerprint": 7}, "bad_request"),
        ]:
            status, out = self.daemon.request("POST", "/v1/certificates", body)
            self.assertEqual((status, out["error"]["code"]), (400, code), body)
        status, _ = self.daemon.request("POST", "/v1/certificates",
                                        raw="{\"name\": \"x\", ")
        self.assertEqual(status, 400)
        status, _ = self.daemon.request("POST", "/v1/certificates",
                                        {"name": "one", "fingerprint": a[2]})
        self.assertEqual(status, 201)
        status, out = self.daemon.request("POST", "/v1/certificates",
                                          {"name": "two", "fingerprint": a[2].lower()})
        self.assertEqual((status, out["error"]["code"]), (409, "conflict"))
        self.assertIn("already registered as one", out["error"]["message"])
        # Names are shared with tokens.
        status, out = self.daemon.request("POST", "/v1/tokens", {"name": "one"})
        self.assertEqual(status, 409)
        # A token cannot be removed as a certificate, nor the reverse.
        self.daemon.request("POST", "/v1/tokens", {"name": "tok"})
        self.assertEqual(self.daemon.request("DELETE", "/v1/certificates/tok")[0], 404)
        self.assertEqual(self.daemon.request("DELETE", "/v1/tokens/one")[0], 404)
        status, lst = self.daemon.request("GET", "/v1/certificates")
        self.assertEqual([c["name"] for c in lst["certificates"]], ["one"])
        out = self.ctl("cert", "add", "z")
        self.assertEqual(out.returncode, 2)


if __name__ == "__main__":
    harness.main()
