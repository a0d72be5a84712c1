#!/usr/bin/python3
"""A VM from a 2 GiB disk image: hangard's copy-on-write root disk (an overlay made at the first
start) against the same VM on a full `cp` of the image (what a dir pool that copies does).
Figures, median of N runs each: the disk made (POST /v1/disks from the image; `cp`), and
create + start to `running` (the overlay's creation included; the copy's not). Also the
overlay's time for a 64 MiB image: O(1) in the base's size."""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import GUEST_DIR, Api, Daemon, kill_pids

N = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def make_image(path, size):
    raw = path + ".raw"
    block = bytes(range(256)) * 4096  # 1 MiB, nothing sparse
    with open(raw, "wb") as f:
        for _ in range(size >> 20):
            f.write(block)
    subprocess.run(["qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, path],
                   check=True)
    os.unlink(raw)


def main():
    work = tempfile.mkdtemp(prefix="hangar-bench-img-")
    d = Daemon()
    pids = []
    try:
        big = os.path.join(work, "big.qcow2")
        small = os.path.join(work, "small.qcow2")
        make_image(big, 2 << 30)
        make_image(small, 64 << 20)
        d.start()
        api = Api(d.sock)
        for name, path in (("big", big), ("small", small)):
            s, img = api.call("POST", "/v1/images?wait=true",
                              {"name": name, "source": {"type": "file", "path": path}})
            assert s == 201, img
        boot = {"kernel": os.path.join(GUEST_DIR, "vmlinuz"),
                "initrd": os.path.join(GUEST_DIR, "initrd.img"), "cmdline": "console=ttyS0"}
        overlay = {"big": [], "small": []}
        hangar, copy, copy_start = [], [], []
        for i in range(N):
            for name in ("big", "small"):
                t0 = time.monotonic()
                s, disk = api.call("POST", "/v1/disks",
                                   {"name": f"o-{name}-{i}", "source": {"image": name}})
                overlay[name].append(time.monotonic() - t0)
                assert s == 201, disk
            t0 = time.monotonic()
            s, m = api.call("POST", "/v1/machines", {"name": f"h{i}", "image": "big", "boot": boot})
            assert s == 201, m
            s, m = api.call("POST", f"/v1/machines/h{i}/actions/start")
            assert s == 200 and m["state"] == "running", m
            hangar.append(time.monotonic() - t0)
            pids.append(m["pid"])
            dst = os.path.join(work, f"copy{i}.qcow2")
            t0 = time.monotonic()
            shutil.copyfile(big, dst)
            os.fsync(os.open(dst, os.O_RDONLY))
            copy.append(time.monotonic() - t0)
            t1 = time.monotonic()
            b = dict(boot, disk=dst)
            s, m = api.call("POST", "/v1/machines", {"name": f"c{i}", "boot": b})
            assert s == 201, m
            s, m = api.call("POST", f"/v1/machines/c{i}/actions/start")
            assert s == 200 and m["state"] == "running", m
            copy_start.append(time.monotonic() - t1)
            pids.append(m["pid"])
            for name in (f"h{i}", f"c{i}"):
                api.call("DELETE", f"/v1/machines/{name}?force=true")
            os.unlink(dst)
        ms = lambda v: f"{statistics.median(v) * 1000:8.1f} ms"
        print(f"runs: {N}; base image 2 GiB of data (qcow2)")
        print(f"disk ready, overlay on the 2 GiB image  {ms(overlay['big'])}")
        print(f"disk ready, overlay on a 64 MiB image   {ms(overlay['small'])}")
        print(f"disk ready, cp of the 2 GiB image       {ms(copy)}")
        print(f"create + start, hangard overlay         {ms(hangar)}")
        print(f"cp + create + start                     "
              f"{ms([a + b for a, b in zip(copy, copy_start)])}")
        print(f"speed-up, disk ready                    "
              f"{statistics.median(copy) / statistics.median(overlay['big']):8.0f} x")
    finally:
        kill_pids(pids)
        d.kill()
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(d.state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
