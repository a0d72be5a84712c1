#!/usr/bin/env python3
"""Local image import throughput: `POST /v1/images` of a plain tar of SIZE_MIB (default 512)
of incompressible data, versus `sha256sum FILE && tar -xf FILE -C DIR` run by hand on the same
file (what an import does, without hangard). Prints the median of RUNS (default 3) for both,
and MiB/s. Usage: tests/bench/image_import.py [SIZE_MIB]; BUILD_DIR picks the hangard."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import benchlib  # noqa: E402
from image_pull import big_rootfs  # noqa: E402

SIZE_MIB = int(sys.argv[1]) if len(sys.argv) > 1 else 512
RUNS = int(os.environ.get("RUNS", "3"))


def main():
    work = tempfile.mkdtemp(prefix="hangar-bench-import-")
    archive = os.path.join(work, "rootfs.tar")
    big_rootfs(archive, SIZE_MIB)
    d = benchlib.Daemon(qemu=benchlib.FAKE_QEMU, state_dir=os.path.join(work, "state"))
    os.makedirs(d.state_dir)
    d.start()
    api = benchlib.Api(d.sock)
    hangar, by_hand = [], []
    for i in range(RUNS):
        t0 = time.monotonic()
        status, img = api.call("POST", "/v1/images?wait=true",
                               {"name": f"imp{i}", "source": {"type": "file", "path": archive}})
        hangar.append(time.monotonic() - t0)
        assert status == 201, img
        api.call("DELETE", f"/v1/images/imp{i}")
        out = os.path.join(d.state_dir, "images", f"hand{i}")  # the same file system
        os.makedirs(out)
        t0 = time.monotonic()
        subprocess.run(["sha256sum", archive], check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["tar", "-x", "--numeric-owner", "-f", archive, "-C", out], check=True)
        by_hand.append(time.monotonic() - t0)
        shutil.rmtree(out)
    d.kill()
    shutil.rmtree(work, ignore_errors=True)
    mh, mb = statistics.median(hangar), statistics.median(by_hand)
    print(f"import of {SIZE_MIB} MiB through hangard: median {mh * 1000:.0f} ms "
          f"({SIZE_MIB / mh:.0f} MiB/s, n={RUNS})")
    print(f"sha256sum + tar by hand, same file: median {mb * 1000:.0f} ms "
          f"({SIZE_MIB / mb:.0f} MiB/s)")


if __name__ == "__main__":
    main()
