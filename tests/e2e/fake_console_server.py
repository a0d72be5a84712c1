"""A small fake of hangard's console and interactive-exec WebSockets on a unix socket, for
checking what hangarctl sends (resize, input, close codes) and how it treats what it gets.

Machines: "web" (attached note, some output, a state note, then echoes every input frame),
"full" (closed at once with 1008 and a reason), "stall" (attached, then never reads),
"drop" (attached at byte 5, "hello", then the connection cut), anything else: 404 with the API's error.
POST /v1/machines/ct/exec answers a session; its WebSocket prints "$ ", echoes input, and
on "exit N" sends {"type":"exit","exit_code":N} and closes 1000."""
import base64
import hashlib
import json
import os
import re
import socket
import socketserver
import threading

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def send_frame(sock, opcode, payload):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([n])
    elif n < 65536:
        head += bytes([126]) + n.to_bytes(2, "big")
    else:
        head += bytes([127]) + n.to_bytes(8, "big")
    sock.sendall(head + payload)


def read_exact(f, n):
    data = f.read(n)
    if len(data) < n:
        raise EOFError
    return data


def read_message(f):
    """(opcode, payload) of the next whole message or control frame."""
    parts, first = [], None
    while True:
        b0, b1 = read_exact(f, 2)
        op, n = b0 & 15, b1 & 127
        if n == 126:
            n = int.from_bytes(read_exact(f, 2), "big")
        elif n == 127:
            n = int.from_bytes(read_exact(f, 8), "big")
        mask = read_exact(f, 4) if b1 & 0x80 else b"\0\0\0\0"
        data = bytes(c ^ mask[i % 4] for i, c in enumerate(read_exact(f, n)))
        if op >= 8:
            return op, data
        if first is None:
            first = op
        parts.append(data)
        if b0 & 0x80:
            return first, b"".join(parts)


class FakeServer:
    def __init__(self, path):
        self.path = path
        self.log = []  # (kind, value): ("request", (method, target, headers, body)),
        # ("binary", bytes), ("text", dict), ("close", code)
        self.cond = threading.Condition()
        self.stopped = threading.Event()
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self):
                try:
                    fake.serve(self.request, self.rfile)
                except (EOFError, ConnectionError, OSError):
                    pass

        class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
            daemon_threads = True

        self.server = Server(path, Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.stopped.set()
        self.server.shutdown()
        self.server.server_close()
        os.unlink(self.path)

    def record(self, kind, value):
        with self.cond:
            self.log.append((kind, value))
            self.cond.notify_all()

    def wait(self, pred, timeout=10):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(pred(k, v) for k, v in self.log), timeout)
        if not ok:
            raise AssertionError(f"fake server: not seen; log: {self.log}")

    def items(self, kind):
        with self.cond:
            return [v for k, v in self.log if k == kind]

    def serve(self, sock, f):
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            head += read_exact(f, 1)
        lines = head.decode().split("\r\n")
        method, target, _ = lines[0].split(" ", 2)
        headers = {k.lower(): v.strip() for k, v in
                   (line.split(":", 1) for line in lines[1:] if ":" in line)}
        body = read_exact(f, int(headers.get("content-length", "0")))
        self.record("request", (method, target, headers, body))
        path = target.split("?")[0]
        if method == "POST" and path == "/v1/machines/ct/exec":
            return self.answer(sock, 201, {"session": "s1", "url": "/v1/machines/ct/exec/s1"})
        m = re.fullmatch(r"/v1/machines/([^/]+)/(console|exec/s1)", path)
        if not m or m.group(1) not in ("web", "full", "stall", "drop", "ct") or \
                headers.get("upgrade", "").lower() != "websocket":
            name = m.group(1) if m else path
            return self.answer(sock, 404, {"error": {"code": "not_found",
                                                     "message": f"no machine named {name}"}})
        accept = base64.b64encode(hashlib.sha1(
            headers["sec-websocket-key"].encode() + GUID).digest()).decode()
        sock.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n").encode())
        name = m.group(1)
        if name == "ct":
            send_frame(sock, 2, b"$ ")
        elif name == "drop":
            send_frame(sock, 1, json.dumps({"type": "attached", "offset": 5, "end": 10,
                                            "readonly": False, "viewer": "v1"}).encode())
            send_frame(sock, 2, b"hel")
            send_frame(sock, 2, b"lo")
            sock.shutdown(socket.SHUT_RDWR)
            return
        else:
            send_frame(sock, 1, json.dumps({"type": "attached", "offset": 0, "end": 11,
                                            "readonly": "readonly=true" in target,
                                            "viewer": "v1"}).encode())
            send_frame(sock, 2, b"boot line\r\n")
            send_frame(sock, 1, json.dumps({"type": "state", "state": "running",
                                            "reason": "qmp:RESUME", "offset": 11}).encode())
        if name == "full":
            send_frame(sock, 8, (1008).to_bytes(2, "big") + b"too many viewers (max 2)")
        if name == "stall":
            self.stopped.wait()
            return
        typed = b""
        while True:
            op, data = read_message(f)
            if op == 8:
                code = int.from_bytes(data[:2], "big") if len(data) >= 2 else None
                self.record("close", code)
                if name != "full":
                    send_frame(sock, 8, data[:2])
                return
            if op == 9:
                send_frame(sock, 10, data)
            elif op == 1:
                self.record("text", json.loads(data))
            elif op == 2:
                self.record("binary", data)
                send_frame(sock, 2, data)
                typed += data
                code = re.search(rb"exit (\d+)", typed)
                if name == "ct" and code:
                    send_frame(sock, 1, json.dumps({"type": "exit",
                                                    "exit_code": int(code.group(1))}).encode())
                    send_frame(sock, 8, (1000).to_bytes(2, "big"))

    @staticmethod
    def answer(sock, status, doc):
        body = json.dumps(doc).encode()
        sock.sendall((f"HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n"
                      f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
                     + body)
