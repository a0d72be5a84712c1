"""HTTP strictness: a Transfer-Encoding other than exactly "chunked" is refused (400, then the
connection is closed: nothing can be smuggled behind it), so are duplicate JSON keys; every
error has a JSON body, WebSocket handshake errors included; plain HTTP sent to the HTTPS port
gets a plain answer saying so; GET /v1/health shows paths only to authenticated callers."""
import json
import socket
import ssl
import subprocess

import harness
from harness import DaemonTest


def complete(raw):
    """True once `raw` holds a whole answer (by Content-Length; a 101 has no body)."""
    head, sep, rest = raw.partition(b"\r\n\r\n")
    if not sep:
        return False
    if head.startswith(b"HTTP/1.1 101"):
        return True
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length":
            return len(rest) >= int(v)
    return False


def exchange(sock, data, timeout=10, one=False):
    """Sends `data`, reads until the server closes (or, with `one`, until one whole answer is
    in): (the raw answer, closed)."""
    sock.settimeout(timeout)
    sock.sendall(data)
    out = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return out, True
            out += chunk
            if one and complete(out):
                return out, False
    except socket.timeout:
        return out, False
    finally:
        sock.close()


def responses(raw):
    """Splits HTTP/1.1 answers with Content-Length: [(status, headers, body)]."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
        n = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:n]))
        raw = rest[n:]
    return out


class HttpStrictness(DaemonTest):
    qemu = harness.FAKE_QEMU

    def unix(self):
        s = socket.socket(socket.AF_UNIX)
        s.connect(self.daemon.socket)
        return s

    def assert_json_error(self, status, headers, body, code=400, error="bad_request"):
        self.assertEqual(status, code, body)
        self.assertEqual(headers.get("content-type"), "application/json", headers)
        self.assertEqual(json.loads(body)["error"]["code"], error, body)
        return json.loads(body)["error"]["message"]

    def test_transfer_encoding_other_than_chunked_is_refused_and_closes(self):
        smuggled = b"GET /v1/machines HTTP/1.1\r\nHost: h\r\n\r\n"
        for te in ["xchunked", "chunked, identity", "identity", "gzip, chunked"]:
            body = b'{"name":"te1"}'
            req = (f"POST /v1/machines HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: {te}\r\n"
                   f"Content-Type: application/json\r\n\r\n").encode()
            chunked = f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
            raw, closed = exchange(self.unix(), req + chunked + smuggled)
            answers = responses(raw)
            self.assertEqual(len(answers), 1, (te, raw))  # nothing after it was read
            message = self.assert_json_error(*answers[0])
            self.assertIn("Transfer-Encoding", message)
            self.assertEqual(answers[0][1].get("connection"), "close")
            self.assertTrue(closed, te)
        # Two Transfer-Encoding headers are refused too.
        raw, closed = exchange(self.unix(), b"POST /v1/machines HTTP/1.1\r\nHost: h\r\n"
                               b"Transfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n"
                               b"\r\n0\r\n\r\n")
        self.assert_json_error(*responses(raw)[0])
        self.assertTrue(closed)
        status, lst = self.daemon.request("GET", "/v1/machines")
        self.assertEqual(lst["machines"], [])  # none of them created anything
        # Exactly "chunked" works as before.
        body = b'{"name":"ch1"}'
        raw, _ = exchange(self.unix(), b"POST /v1/machines HTTP/1.1\r\nHost: h\r\n"
                          b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n" +
                          f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        status, _, created = responses(raw)[0]
        self.assertEqual(status, 201, raw)
        self.created_uuids.append(json.loads(created)["uuid"])

    def test_duplicate_json_keys_are_refused(self):
        for body in ['{"name":"a","name":"b"}', '{"name":"a","n\\u0061me":"b"}',
                     '{"name":"d1","boot":{"kernel":"/k","kernel":"/j"}}']:
            status, err = self.daemon.request("POST", "/v1/machines", raw=body)
            self.assertEqual((status, err["error"]["code"]), (400, "invalid_json"), body)
            self.assertIn("duplicate key", err["error"]["message"])
        status, err = self.daemon.request("POST", "/v1/tokens", raw='{"name":"t","name":"u"}')
        self.assertEqual(status, 400, err)
        status, lst = self.daemon.request("GET", "/v1/machines")
        self.assertEqual(lst["machines"], [])

    def test_websocket_handshake_errors_are_json(self):
        key = "dGhlIHNhbXBsZSBub25jZQ=="
        good = {"Host": "h", "Connection": "Upgrade", "Upgrade": "websocket",
                "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": key}
        cases = [
            ("/v1/events", {"Sec-WebSocket-Version": "12"}, "Sec-WebSocket-Version"),
            ("/v1/events", {"Sec-WebSocket-Key": None}, "Sec-WebSocket-Key"),
            ("/v1/events", {"Sec-WebSocket-Key": "short"}, "Sec-WebSocket-Key"),
            ("/v1/events", {"Upgrade": "h2c"}, "Upgrade: websocket"),
            ("/v1/events?since=abc", {}, "since"),
            ("/v1/events?types=nosuch.type", {}, ""),
            ("/v1/machines", {}, "upgrade"),
        ]
        for target, change, what in cases:
            headers = {**good, **change}
            req = f"GET {target} HTTP/1.1\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in headers.items() if v is not None) + "\r\n"
            raw, _ = exchange(self.unix(), req.encode(), one=True)
            status, h, body = responses(raw)[0]
            message = self.assert_json_error(status, h, body)
            self.assertIn(what, message, (target, change))
            if "Sec-WebSocket-Version" in change:
                self.assertEqual(h.get("sec-websocket-version"), "13")
        # The good handshake still switches protocols.
        req = "GET /v1/events HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in good.items())
        raw, _ = exchange(self.unix(), (req + "\r\n").encode(), one=True)
        self.assertTrue(raw.startswith(b"HTTP/1.1 101"), raw)

    def test_plain_http_to_the_https_port_gets_a_plain_answer(self):
        port = int(self.daemon.url.rsplit(":", 1)[1])
        raw, closed = exchange(socket.create_connection(("127.0.0.1", port)),
                               b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        self.assertTrue(closed)
        status, headers, body = responses(raw)[0]
        message = self.assert_json_error(status, headers, body)
        self.assertIn("https://", message)
        out = subprocess.run(["curl", "-s", "-m", "10", "-w", "\n%{http_code}",
                              self.daemon.url.replace("https://", "http://") + "/v1/machines"],
                             capture_output=True, text=True, timeout=20)
        text, _, code = out.stdout.rpartition("\n")
        self.assertEqual(code, "400", out)
        self.assertIn("https://", json.loads(text)["error"]["message"])
        # TLS on the same port is unaffected.
        out = subprocess.run(["curl", "-sk", "-m", "10", self.daemon.url + "/v1/health"],
                             capture_output=True, text=True, timeout=20)
        self.assertEqual(json.loads(out.stdout)["status"], "ok", out)

    def test_health_shows_paths_only_to_authenticated_callers(self):
        status, t = self.daemon.request("POST", "/v1/tokens", {"name": "h"})
        self.assertEqual(status, 201)

        def https(*extra):
            out = subprocess.run(["curl", "-sk", "-m", "10", *extra,
                                  self.daemon.url + "/v1/health"], capture_output=True,
                                 text=True, timeout=20)
            return out.stdout

        anonymous = https()
        health = json.loads(anonymous)
        self.assertEqual(health["status"], "ok")
        self.assertEqual(health["checks"]["store"], {"ok": True, "detail": "writable"})
        for secret in [self.state_dir, self.daemon.socket, harness.GUEST_DIR, "/"]:
            self.assertNotIn(secret, anonymous)
        with_token = json.loads(https("-H", f"Authorization: Bearer {t['token']}"))
        self.assertEqual(with_token["checks"]["store"]["detail"], self.state_dir)
        self.assertIn("/", with_token["checks"]["guest"]["detail"])
        status, local = self.daemon.request("GET", "/v1/health")
        self.assertEqual(local["checks"]["store"]["detail"], self.state_dir)


if __name__ == "__main__":
    harness.main()
