"""The HTTPS listener: self-signed TLS made on first start, bearer tokens created over the unix
socket (stored only as hashes, revocable), 401 without one, events over TLS."""
import asyncio
import json
import os
import socket
import ssl
import subprocess

import websockets

import harness
from harness import DaemonTest, wait_for


class Https(DaemonTest):
    def curl(self, method, path, token=None, body=None, extra=()):
        args = ["curl", "-s", "-k", "-m", "120", "-X", method, "-w", "\n%{http_code}",
                self.daemon.url + path] + list(extra)
        if token:
            args += ["-H", f"Authorization: Bearer {token}"]
        if body is not None:
            args += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
        out = subprocess.run(args, capture_output=True, text=True, timeout=130)
        text, _, code = out.stdout.rpartition("\n")
        return int(code or 0), (json.loads(text) if text.startswith("{") else text)

    def make_token(self, name):
        status, t = self.daemon.request("POST", "/v1/tokens", {"name": name})
        self.assertEqual(status, 201, t)
        self.assertTrue(t["token"].startswith("hgr_"))
        return t["token"]

    def test_tls_and_token_lifecycle_with_a_real_vm(self):
        self.assertTrue(self.daemon.url.startswith("https://127.0.0.1:"))
        cert = os.path.join(self.state_dir, "tls", "cert.pem")
        key = os.path.join(self.state_dir, "tls", "key.pem")
        self.assertEqual(os.stat(key).st_mode & 0o777, 0o600)
        text = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"],
                              capture_output=True, text=True).stdout
        self.assertIn("IP Address:127.0.0.1", text)
        token = self.make_token("ci")
        # Only the hash is stored.
        db = os.path.join(self.state_dir, "hangar.db")
        dump = subprocess.run(["sqlite3", db, ".dump tokens"], capture_output=True, text=True)
        self.assertNotIn(token, dump.stdout)

        status, body = self.curl("GET", "/v1/machines")
        self.assertEqual((status, body["error"]["code"]), (401, "unauthorized"))
        status, body = self.curl("GET", "/v1/health")
        self.assertEqual(status, 200)
        status, body = self.curl("GET", "/v1", token=token)
        self.assertEqual(body["auth"], {"method": "token", "uid": 0, "admin": True})
        status, body = self.curl("GET", "/v1/machines", token="hgr_" + "0" * 64)
        self.assertEqual(status, 401)

        status, m = self.curl("POST", "/v1/machines", token, {"name": "tls1"})
        self.assertEqual(status, 201, m)
        self.created_uuids.append(m["uuid"])
        status, m = self.curl("POST", "/v1/machines/tls1/actions/start", token)
        self.assertEqual((status, m["state"]), (200, "running"))
        wait_for(lambda: "HANGAR-GUEST-READY" in self.curl(
            "GET", "/v1/machines/tls1/console/log", token)[1], 60, "the guest's marker")
        status, lst = self.curl("GET", "/v1/machines?state=running", token)
        self.assertEqual([x["name"] for x in lst["machines"]], ["tls1"])
        status, m = self.curl("GET", "/v1/machines/tls1", token)
        self.assertEqual(m["state"], "running")
        self.assertEqual(self.curl("POST", "/v1/machines/tls1/actions/pause", token)[1]["state"],
                         "paused")
        self.assertEqual(self.curl("POST", "/v1/machines/tls1/actions/resume", token)[1]["state"],
                         "running")
        status, m = self.curl("POST", "/v1/machines/tls1/actions/stop", token, {"timeout_s": 60})
        self.assertEqual((status, m["state"]), (200, "stopped"))
        self.assertIn("qmp:SHUTDOWN guest=true", m["state_reason"])
        status, _ = self.curl("DELETE", "/v1/machines/tls1", token)
        self.assertEqual(status, 200)

        # Tokens are managed over the unix socket only.
        status, body = self.curl("POST", "/v1/tokens", token, {"name": "other"})
        self.assertEqual((status, body["error"]["code"]), (403, "forbidden"))
        status, lst = self.daemon.request("GET", "/v1/tokens")
        self.assertEqual([t["name"] for t in lst["tokens"]], ["ci"])
        self.assertNotIn("token", lst["tokens"][0])
        status, _ = self.daemon.request("DELETE", "/v1/tokens/ci")
        self.assertEqual(status, 200)
        status, body = self.curl("GET", "/v1/machines", token)
        self.assertEqual(status, 401)

    def test_tokens_survive_restart_and_bad_token_requests(self):
        token = self.make_token("keep")
        status, body = self.daemon.request("POST", "/v1/tokens", {"name": "keep"})
        self.assertEqual(status, 409)
        for bad in ({"name": "../x"}, {"name": 1}, {"nom": "x"}):
            status, _ = self.daemon.request("POST", "/v1/tokens", bad)
            self.assertEqual(status, 400, bad)
        status, _ = self.daemon.request("DELETE", "/v1/tokens/nothere")
        self.assertEqual(status, 404)
        with open(os.path.join(self.state_dir, "tls", "cert.pem")) as f:
            cert_before = f.read()
        self.daemon.kill()
        self.daemon.start()
        with open(os.path.join(self.state_dir, "tls", "cert.pem")) as f:
            self.assertEqual(f.read(), cert_before)
        status, _ = self.curl("GET", "/v1/machines", token)
        self.assertEqual(status, 200)
        # TLS older than 1.2 is refused.
        status, _ = self.curl("GET", "/v1/health", extra=["--tls-max", "1.1"])
        self.assertEqual(status, 0)

    def test_tls_garbage_and_plain_http_on_the_https_port(self):
        port = int(self.daemon.url.rsplit(":", 1)[1])
        for payload in [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", os.urandom(3000),
                        b"\x16\x03\x01\xff\xff" + b"A" * 100]:
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(payload)
            s.settimeout(10)
            try:
                s.recv(4096)
            except OSError:
                pass
            s.close()
        status, _ = self.curl("GET", "/v1/health")
        self.assertEqual(status, 200)

    def test_events_over_tls_need_a_token(self):
        token = self.make_token("ws")
        self.create("wsm")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        uri = self.daemon.url.replace("https://", "wss://") + "/v1/events?since=0"

        async def first(headers):
            async with websockets.connect(uri, ssl=ctx, extra_headers=headers) as ws:
                return json.loads(await asyncio.wait_for(ws.recv(), 10))

        ev = asyncio.run(first({"Authorization": f"Bearer {token}"}))
        self.assertEqual((ev["type"], ev["machine"]), ("machine.created", "wsm"))
        with self.assertRaises(websockets.exceptions.InvalidStatusCode) as ctx_err:
            asyncio.run(first({}))
        self.assertEqual(ctx_err.exception.status_code, 401)


class InsecureHttp(DaemonTest):
    qemu = harness.FAKE_QEMU
    extra = ("--insecure-http",)

    def test_plain_http_still_needs_a_token(self):
        self.assertTrue(self.daemon.url.startswith("http://"))
        out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                              self.daemon.url + "/v1/machines"], capture_output=True, text=True)
        self.assertEqual(out.stdout, "401")
        self.assertIn("plain HTTP", self.daemon.log())


if __name__ == "__main__":
    harness.main()
