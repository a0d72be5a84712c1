#!/usr/bin/python3
"""Disk snapshots of the built-in guest with D disks of 1 GiB attached (default 1 and 4), each
holding 256 MiB of data: N snapshots taken while the guest runs (through the API, and the QMP
part alone as hangard logs it: the overlays added and one transaction), then with the VM
stopped N taken, N restored and N deleted (each delete merges one layer); N deleted while the
guest runs (QEMU's block-stream), and N clones of the stopped VM (each disk's data copied into
one file on its base). Then, on the built-in guest without disks (128 MiB), N
snapshots with memory (the API's answer, how long the guest was paused, the save as hangard
logs it), N restores with memory (until the guest runs again), and N clones of one of them,
each started warm (until the clone's guest runs). The time of a disk snapshot
does not grow with the data on the disks: nothing is copied."""
import os
import re
import shutil
import statistics
import subprocess
import sys
import time

from benchlib import GUEST_DIR, Api, Daemon, kill_pids, pct

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10
DISKS = [int(x) for x in sys.argv[2].split(",")] if len(sys.argv) > 2 else [1, 4]


def timed(api, method, path, body=None, want=200):
    t0 = time.monotonic()
    s, out = api.call(method, path, body)
    assert s == want, (method, path, s, out)
    return time.monotonic() - t0


def main():
    d = Daemon(extra=("--log-level", "info"))  # the QMP part's figure is in the log
    log = lambda: open(os.path.join(d.state_dir, "hangard.log")).read()
    pids = []
    try:
        d.start()
        api = Api(d.sock)
        boot = {"kernel": os.path.join(GUEST_DIR, "vmlinuz"),
                "initrd": os.path.join(GUEST_DIR, "initrd.img"), "cmdline": "console=ttyS0"}
        ms = lambda v: (f"median {statistics.median(v) * 1000:7.1f} ms, "
                        f"p90 {pct(v, 90) * 1000:7.1f} ms")
        print(f"snapshots: {N} of each; disks of 1 GiB with 256 MiB written")
        for nd in DISKS:
            vm = f"vm{nd}"
            s, m = api.call("POST", "/v1/machines", {"name": vm, "boot": boot})
            assert s == 201, m
            for i in range(nd):
                s, disk = api.call("POST", "/v1/disks", {"name": f"{vm}-d{i}", "size_gib": 1})
                assert s == 201, disk
                subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 256M",
                                disk["path"]], check=True, capture_output=True)
                s, _ = api.call("POST", f"/v1/machines/{vm}/disks", {"disk": f"{vm}-d{i}"})
                assert s == 200
            s, m = api.call("POST", f"/v1/machines/{vm}/actions/start")
            assert s == 200, m
            pids.append(m["pid"])
            before = len(re.findall(r"snapshotted in ([0-9.]+) ms", log()))
            live = [timed(api, "POST", f"/v1/machines/{vm}/snapshots", {"name": f"l{i}"}, 201)
                    for i in range(N)]
            qmp = [float(x) / 1000 for x in
                   re.findall(r"snapshotted in ([0-9.]+) ms", log())[before:]]
            s, m = api.call("GET", f"/v1/machines/{vm}")
            assert m["state"] == "running", m
            for i in range(N):
                timed(api, "POST", f"/v1/machines/{vm}/snapshots", {"name": f"x{i}"}, 201)
            live_delete = [timed(api, "DELETE", f"/v1/machines/{vm}/snapshots/x{i}")
                           for i in range(N)]
            s, _ = api.call("POST", f"/v1/machines/{vm}/actions/kill")
            assert s == 200
            stopped = [timed(api, "POST", f"/v1/machines/{vm}/snapshots", {"name": f"s{i}"}, 201)
                       for i in range(N)]
            restore = [timed(api, "POST", f"/v1/machines/{vm}/snapshots/l{i}/restore")
                       for i in range(N)]
            delete = [timed(api, "DELETE", f"/v1/machines/{vm}/snapshots/s{i}")
                      for i in range(N)]
            # Clones of the stopped VM: each disk (256 MiB of data under layers) copied and
            # put on its base; against a plain cp of one disk's files.
            cloned = [timed(api, "POST", f"/v1/machines/{vm}/clone?wait=true",
                            {"name": f"{vm}-c{i}"}, 201) for i in range(N)]
            t0 = time.monotonic()
            subprocess.run(["cp", "--sparse=always", disk["path"], disk["path"] + ".cp"],
                           check=True)
            plain = time.monotonic() - t0
            os.unlink(disk["path"] + ".cp")
            print(f"{nd} disk(s): running, through the API   {ms(live)}")
            print(f"{nd} disk(s): running, QMP part          {ms(qmp)}")
            print(f"{nd} disk(s): stopped, through the API   {ms(stopped)}")
            print(f"{nd} disk(s): restore                    {ms(restore)}")
            print(f"{nd} disk(s): delete (merge one layer)   {ms(delete)}")
            print(f"{nd} disk(s): delete while running       {ms(live_delete)}")
            print(f"{nd} disk(s): clone (stopped)             {ms(cloned)} "
                  f"(cp of one disk's first file: {plain * 1000:.1f} ms)")
        # With memory.
        s, m = api.call("POST", "/v1/machines", {"name": "mem", "boot": boot})
        assert s == 201, m
        s, m = api.call("POST", "/v1/machines/mem/actions/start")
        assert s == 200, m
        pids.append(m["pid"])
        time.sleep(8)  # booted
        before = len(re.findall(r"paused ([0-9.]+) ms for the memory", log()))
        saved_before = len(re.findall(r"guest memory saved \(completed\) in ([0-9.]+) ms", log()))
        take = [timed(api, "POST", "/v1/machines/mem/snapshots?wait=true",
                      {"name": f"m{i}", "memory": True}, 201) for i in range(N)]
        paused = [float(x) / 1000 for x in
                  re.findall(r"paused ([0-9.]+) ms for the memory", log())[before:]]
        saved = [float(x) / 1000 for x in re.findall(
            r"guest memory saved \(completed\) in ([0-9.]+) ms", log())[saved_before:]]
        s, snap = api.call("GET", "/v1/machines/mem/snapshots/m0")
        back = []
        for i in range(N):
            s, m = api.call("POST", "/v1/machines/mem/actions/kill")
            assert s == 200, m
            back.append(timed(api, "POST", f"/v1/machines/mem/snapshots/m{i}/restore"))
            s, m = api.call("GET", "/v1/machines/mem")
            assert m["state"] == "running", m
            pids.append(m["pid"])
        # Clones of m0 (the source running): the clone made, then its warm start until
        # running (the saved guest resumes).
        s, m = api.call("POST", "/v1/machines/mem/actions/kill")
        assert s == 200, m
        cloned, warm = [], []
        for i in range(N):
            cloned.append(timed(api, "POST", "/v1/machines/mem/clone?wait=true",
                                {"name": f"w{i}", "snapshot": "m0"}, 201))
            warm.append(timed(api, "POST", f"/v1/machines/w{i}/actions/start"))
            s, m = api.call("GET", f"/v1/machines/w{i}")
            assert m["state"] == "running", m
            pids.append(m["pid"])
            s, m = api.call("POST", f"/v1/machines/w{i}/actions/kill")
            assert s == 200, m
        print(f"memory ({snap['memory_bytes'] >> 20} MiB file): take, API  {ms(take)}")
        print(f"memory: guest paused                {ms(paused)}")
        print(f"memory: save (QEMU, in background)  {ms(saved)}")
        print(f"memory: restore until running       {ms(back)}")
        print(f"clone of a memory snapshot, API     {ms(cloned)}")
        print(f"clone: warm start until running     {ms(warm)}")
    finally:
        kill_pids(pids)
        d.kill()
        shutil.rmtree(d.state_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
