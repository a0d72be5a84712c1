"""A test image server on loopback: HTTPS with a CA of its own, serving one busybox-static root
file system in both catalog formats — simplestreams (streams/v1/index.json + images.json) and
the flat LXC index (meta/1.0/index-system + SHA256SUMS) — with Range requests, and faults on
demand: cut a file's transfer after N bytes, a number of times."""
import hashlib
import http.server
import io
import json
import os
import shutil
import ssl
import subprocess
import tarfile
import threading

VERSION = "20261125_00:00"


def make_busybox_rootfs_tar(path, compression="xz"):
    """A root file system of busybox-static: /bin/busybox, its applets as symlinks, /sbin/init,
    /etc/os-release. Returns its SHA-256."""
    busybox = shutil.which("busybox") or "/bin/busybox"
    with open(busybox, "rb") as f:
        binary = f.read()
    with tarfile.open(path, "w:" + compression) as tar:
        def add(name, data=None, mode=0o755, kind=tarfile.REGTYPE, link=""):
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.linkname = kind, mode, link
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
        for d in ("bin", "sbin", "etc", "dev", "proc", "sys", "tmp", "root", "run", "var", "usr"):
            add(d, kind=tarfile.DIRTYPE)
        add("bin/busybox", binary)
        for applet in ("sh", "echo", "cat", "ls", "sleep", "poweroff", "id", "pwd", "env",
                       "hostname", "uname"):
            add(f"bin/{applet}", kind=tarfile.SYMTYPE, link="busybox")
        add("sbin/init", kind=tarfile.SYMTYPE, link="../bin/busybox")
        add("etc/os-release", b'NAME="hangar busybox"\nID=busybox\n', mode=0o644)
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def make_ca(directory):
    """A CA and a server certificate for 127.0.0.1 (IP only: "localhost" must not verify)."""
    ca_key, ca = os.path.join(directory, "ca.key"), os.path.join(directory, "ca.pem")
    key, csr = os.path.join(directory, "server.key"), os.path.join(directory, "server.csr")
    cert, ext = os.path.join(directory, "server.pem"), os.path.join(directory, "ext.cnf")
    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-subj", "/CN=hangar test CA", "-keyout", ca_key, "-out", ca)
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=127.0.0.1", "-keyout", key, "-out", csr)
    with open(ext, "w") as f:
        f.write("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2",
        "-extfile", ext, "-out", cert)
    return ca, cert, key


class ImageServer:
    def __init__(self, directory, tls=True):
        self.dir = directory
        self.root = os.path.join(directory, "www")
        os.makedirs(self.root, exist_ok=True)
        self.tls = tls
        self.cuts = {}        # url path -> [bytes to send before cutting, times left]
        self.requests = []    # (path, Range header or None)
        self.redirects = {}   # url path -> Location to answer with a 302
        self.httpd = None

    def publish(self, sha_override=None):
        """Lays out both catalogs for the busybox image (and a product whose catalog
        checksum is wrong, alias busybox/bad). Returns the tarball's SHA-256."""
        rel = f"images/busybox/1.36/amd64/default/{VERSION}"
        os.makedirs(os.path.join(self.root, rel), exist_ok=True)
        tarball = os.path.join(self.root, rel, "rootfs.tar.xz")
        sha = make_busybox_rootfs_tar(tarball)
        self.size = os.path.getsize(tarball)
        self.rootfs_path = "/" + rel + "/rootfs.tar.xz"
        with open(os.path.join(self.root, rel, "SHA256SUMS"), "w") as f:
            f.write(f"{sha}  rootfs.tar.xz\n")
        bad_rel = f"images/busybox/bad/amd64/default/{VERSION}"
        os.makedirs(os.path.join(self.root, bad_rel), exist_ok=True)
        shutil.copy(tarball, os.path.join(self.root, bad_rel, "rootfs.tar.xz"))
        with open(os.path.join(self.root, bad_rel, "SHA256SUMS"), "w") as f:
            f.write(f"{'0' * 64}  rootfs.tar.xz\n")

        def product(alias, release, path, digest):
            return {"aliases": f"{alias}/default,{alias}", "arch": "amd64", "os": "Busybox",
                    "release": release, "variant": "default",
                    "versions": {VERSION: {"items": {
                        "lxd.tar.xz": {"ftype": "lxd.tar.xz", "path": path + "/lxd.tar.xz",
                                       "sha256": "1" * 64, "size": 1},
                        "root.tar.xz": {"ftype": "root.tar.xz", "path": path + "/rootfs.tar.xz",
                                        "sha256": digest, "size": self.size}}}}}
        products = {"content_id": "images", "datatype": "image-downloads",
                    "format": "products:1.0", "products": {
                        "busybox:1.36:amd64:default": product("busybox/1.36", "1.36", rel, sha),
                        "busybox:bad:amd64:default": product("busybox/bad", "bad", bad_rel,
                                                             sha_override or "f" * 64)}}
        index = {"format": "index:1.0", "index": {"images": {
            "datatype": "image-downloads", "path": "streams/v1/images.json",
            "format": "products:1.0", "products": list(products["products"])}}}
        os.makedirs(os.path.join(self.root, "streams/v1"), exist_ok=True)
        with open(os.path.join(self.root, "streams/v1/index.json"), "w") as f:
            json.dump(index, f)
        with open(os.path.join(self.root, "streams/v1/images.json"), "w") as f:
            json.dump(products, f)
        os.makedirs(os.path.join(self.root, "meta/1.0"), exist_ok=True)
        with open(os.path.join(self.root, "meta/1.0/index-system"), "w") as f:
            f.write(f"busybox;1.36;amd64;default;{VERSION};/{rel}/\n"
                    f"busybox;bad;amd64;default;{VERSION};/{bad_rel}/\n")
        return sha

    def cut(self, path, after_bytes, times):
        self.cuts[path] = [after_bytes, times]

    def start(self):
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                path = self.path.split("?")[0]
                server.requests.append((path, self.headers.get("Range")))
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                full = os.path.realpath(os.path.join(server.root, path.lstrip("/")))
                if not full.startswith(server.root + "/") or not os.path.isfile(full):
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                with open(full, "rb") as f:
                    data = f.read()
                start = 0
                rng = self.headers.get("Range")
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                cut = server.cuts.get(path)
                if cut and cut[1] > 0:
                    cut[1] -= 1
                    self.wfile.write(body[:cut[0]])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        if self.tls:
            self.ca, cert, key = make_ca(self.dir)
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(cert, key)
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def stop(self):
        if self.httpd:
            self.httpd.shutdown()
            self.httpd.server_close()
