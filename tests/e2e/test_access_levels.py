"""Access levels, table-driven: every route of the served OpenAPI document (which a unit test
holds equal to the router's table, access levels included, so a new route is walked here
without a change to this file) is called by each kind of caller — anonymous over TCP, a
user's token, an admin's token, and over the unix socket root, a plain uid and a member of the
admin group — and answers as its declared `x-hangar-access` says: 401 for the anonymous on
anything above `anonymous`, 403 below `local` or `admin`, and otherwise the route's own answer
(path parameters name nothing that exists, so a permitted call is 400/404, never 401/403).
WebSocket routes are also opened with a real handshake: 101 where permitted."""
import json
import os
import re
import subprocess

import harness
from harness import DaemonTest

ADMIN_GROUP, ADMIN_GID = "adm", 4  # as in test_multiuser: exists on Debian, nothing changed
USER, MEMBER = 1001, 1003

# One raw HTTP/1.1 request (unix socket or TLS), run as the caller's uid; prints the status
# and the body. Raw, so that a WebSocket handshake is sent as is and its 101 seen.
RAW = r"""
import json, socket, ssl, sys
kind, where, method, path, token, upgrade = sys.argv[1:7]
if kind == "unix":
    s = socket.socket(socket.AF_UNIX)
    s.connect(where)
else:
    host, port = where.rsplit(":", 1)
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection((host, int(port))))
s.settimeout(30)
h = [f"{method} {path} HTTP/1.1", "Host: h"]
if token:
    h.append("Authorization: Bearer " + token)
if upgrade == "1":
    h += ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
          "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
else:
    h.append("Connection: close")
if method in ("POST", "PATCH", "PUT"):
    h.append("Content-Length: 0")
s.sendall(("\r\n".join(h) + "\r\n\r\n").encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
head, _, rest = data.partition(b"\r\n\r\n")
status = int(head.split(b" ")[1])
length = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
          if l.lower().startswith(b"content-length:")]
while status != 101 and (not length or len(rest) < length[0]):
    chunk = s.recv(65536)
    if not chunk:
        break
    rest += chunk
print(json.dumps({"status": status, "body": rest.decode(errors="replace")}))
"""


class Caller:
    def __init__(self, label, kind, uid=None, groups=(), token="", anonymous=False,
                 local=False, admin=False):
        self.label, self.kind, self.uid, self.groups, self.token = label, kind, uid, groups, token
        self.anonymous, self.local, self.admin = anonymous, local, admin


class AccessLevels(DaemonTest):
    qemu = harness.FAKE_QEMU
    extra = ("--admin-group", ADMIN_GROUP)

    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)  # as /var/lib/hangar: others may reach the socket

    def call(self, caller, method, path, upgrade=False):
        where = self.daemon.socket if caller.kind == "unix" else \
            self.daemon.url.split("://", 1)[1]
        cmd = []
        if caller.uid is not None:
            cmd = ["setpriv", f"--reuid={caller.uid}", "--regid=0"]
            cmd += [f"--groups={','.join(map(str, caller.groups))}"] if caller.groups \
                else ["--clear-groups"]
        cmd += ["/usr/bin/python3", "-c", RAW, caller.kind, where, method, path, caller.token,
                "1" if upgrade else "0"]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        r = json.loads(out.stdout)
        try:
            body = json.loads(r["body"])
        except ValueError:
            body = r["body"]
        return r["status"], body

    def callers(self):
        s, user_token = self.daemon.request_as(USER, "POST", "/v1/tokens", {"name": "user"})
        self.assertEqual(s, 201, user_token)
        s, admin_token = self.daemon.request("POST", "/v1/tokens", {"name": "admin"})
        self.assertEqual(s, 201, admin_token)
        return [
            Caller("anonymous over TCP", "tcp", anonymous=True),
            Caller(f"uid {USER}'s token", "tcp", token=user_token["token"]),
            Caller("root's token", "tcp", token=admin_token["token"], admin=True),
            Caller("root over the unix socket", "unix", local=True, admin=True),
            Caller(f"uid {USER} over the unix socket", "unix", uid=USER, local=True),
            Caller(f"uid {MEMBER} of the admin group over the unix socket", "unix", uid=MEMBER,
                   groups=(ADMIN_GID,), local=True, admin=True),
        ]

    @staticmethod
    def refusal(access, caller):
        """The (status, code) `caller` is refused with on a route of `access`, or None."""
        if access == "anonymous":
            return None
        if caller.anonymous:
            return 401, "unauthorized"
        if (access == "local" and not caller.local) or (access == "admin" and not caller.admin):
            return 403, "forbidden"
        return None

    def test_every_route_with_every_caller(self):
        s, doc = self.daemon.request("GET", "/v1/openapi.json")
        self.assertEqual(s, 200)
        routes = []
        for template, item in doc["paths"].items():
            path = re.sub(r"\{[^}]+\}", "no-such-thing", template)
            for method, op in item.items():
                if isinstance(op, dict) and "responses" in op:
                    self.assertIn("x-hangar-access", op, f"{method} {template}")
                    routes.append((method.upper(), template, path, op["x-hangar-access"],
                                   op.get("x-hangar-websocket", False)))
        self.assertGreaterEqual(len(routes), 26)
        self.assertEqual({r[3] for r in routes}, {"anonymous", "user", "local", "admin"})
        callers = self.callers()
        seen = []
        for method, template, path, access, websocket in routes:
            for caller in callers:
                status, body = self.call(caller, method, path)
                what = f"{method} {path} ({access}) by {caller.label}: {status} {body}"
                seen.append(f"{method} {template} {caller.label}: {status}")
                refused = self.refusal(access, caller)
                if refused:
                    code = body.get("error", {}).get("code") if isinstance(body, dict) else None
                    self.assertEqual((status, code), refused, what)
                    if status == 401:
                        self.assertIn("bearer token", body["error"]["message"], what)
                else:
                    self.assertIn(status, (200, 400, 404), what)
                if websocket:
                    status, body = self.call(caller, method, path, upgrade=True)
                    what = f"WebSocket {path} ({access}) by {caller.label}: {status} {body}"
                    # A machine's WebSocket of a machine that does not exist: 404.
                    expect = 404 if "{name}" in template else 101
                    self.assertEqual(status, refused[0] if refused else expect, what)
        self.assertEqual(len(seen), len(routes) * len(callers))
        # What exists is not told to the anonymous: a route that does not exist is 401 too.
        for caller in callers:
            status, body = self.call(caller, "GET", "/v1/no-such-route")
            self.assertEqual(status, 401 if caller.anonymous else 404, caller.label)
            status, body = self.call(caller, "PUT", "/v1/machines")
            self.assertEqual(status, 401 if caller.anonymous else 405, caller.label)


if __name__ == "__main__":
    harness.main()
