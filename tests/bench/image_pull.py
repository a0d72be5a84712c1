#!/usr/bin/env python3
"""Image pull throughput from a loopback HTTPS image server (tests/e2e/imageserver.py) versus
curl fetching the same file from the same server. The rootfs archive is SIZE_MIB (default 256)
of incompressible data in a plain tar. Prints the download phase alone (from the operation's
progress events: first `download` to `verify`), the whole pull (catalog, download, SHA-256,
unpack), and curl's time for the file. Usage: tests/bench/image_pull.py [SIZE_MIB]"""
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import benchlib  # noqa: E402
from imageserver import ImageServer  # noqa: E402

SIZE_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 256
RUNS = int(os.environ.get("RUNS", "3"))


def big_rootfs(path, mib):
    with tarfile.open(path, "w") as tar:
        for d in ("bin", "etc"):
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        chunk = os.urandom(1 << 20)
        info = tarfile.TarInfo("bin/payload")
        info.size = mib << 20
        tar.addfile(info, io.BytesIO(chunk * mib))
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def main():
    work = tempfile.mkdtemp(prefix="hangar-bench-images-")
    server = ImageServer(work).start()
    server.publish()
    archive = os.path.join(server.root, server.rootfs_path.lstrip("/"))
    sha = big_rootfs(archive, SIZE_MIB)
    size = os.path.getsize(archive)
    catalog = os.path.join(server.root, "streams/v1/images.json")
    with open(catalog) as f:
        doc = json.load(f)
    item = doc["products"]["busybox:1.36:amd64:default"]["versions"]["20261125_00:00"]["items"]
    item["root.tar.xz"].update(sha256=sha, size=size)
    with open(catalog, "w") as f:
        json.dump(doc, f)

    d = benchlib.Daemon(qemu=benchlib.FAKE_QEMU, extra=["--image-ca", server.ca])
    d.start()
    api = benchlib.Api(d.sock)
    try:
        pulls, downloads, curls = [], [], []
        def pull(i):
            status, body = api.call("GET", "/v1/machines")
            since = body["revision"]
            t0 = time.monotonic()
            status, img = api.call("POST", "/v1/images?wait=true", {
                "name": f"big{i}", "source": {"type": "simplestreams", "server": server.url,
                                              "alias": "busybox/1.36"}})
            pulls.append(time.monotonic() - t0)
            if status != 201:
                sys.exit(f"pull failed: {img}")
            # The download phase, from the operation's progress events.
            out = subprocess.run(
                ["sqlite3", os.path.join(d.state_dir, "hangar.db"),
                 f"SELECT time, data FROM events WHERE seq > {since} AND "
                 "type = 'operation.progress' ORDER BY seq"],
                capture_output=True, text=True, check=True).stdout
            marks = {}
            for line in out.splitlines():
                t, data = line.split("|", 1)
                phase = json.loads(data)["phase"]
                marks.setdefault(phase, t)

            def secs(t):
                hms = t.split("T")[1].rstrip("Z")
                h, m, s = hms.split(":")
                return int(h) * 3600 + int(m) * 60 + float(s)
            downloads.append(secs(marks["verify"]) - secs(marks["download"]))
            api.call("DELETE", f"/v1/images/big{i}")

        def fetch():
            # Into a file on the state dir's file system, as hangard writes it.
            target = os.path.join(d.state_dir, "curl.out")
            t0 = time.monotonic()
            subprocess.run(["curl", "-sf", "--cacert", server.ca, "-o", target,
                            server.url + server.rootfs_path], check=True)
            curls.append(time.monotonic() - t0)
            os.unlink(target)

        # The first writer of a file that size into the page cache pays for memory the other
        # then reuses (in a VM, several times over), so the order alternates.
        for i in range(RUNS):
            if i % 2:
                fetch()
                pull(i)
            else:
                pull(i)
                fetch()
        mib = size / (1 << 20)
        best = lambda xs: min(xs)  # noqa: E731
        print(f"archive {mib:.0f} MiB over HTTPS from a loopback Python server, best of {RUNS}"
              " (order alternating):")
        print(f"hangard download phase: {best(downloads):.2f} s = {mib / best(downloads):.0f} MiB/s")
        print(f"curl, same file:        {best(curls):.2f} s = {mib / best(curls):.0f} MiB/s")
        print(f"ratio hangard/curl:     {best(curls) / best(downloads):.2f}")
        print(f"whole pull (catalog, download, sha256sum, tar -x): {best(pulls):.2f} s")
        print("each run, hangard / curl (s): " + ", ".join(
            f"{a:.2f}/{b:.2f}" for a, b in zip(downloads, curls)))
    finally:
        d.kill()
        server.stop()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(d.state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
