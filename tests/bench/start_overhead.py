#!/usr/bin/python3
"""Start overhead: time from hangard's start request to `running`, minus the time a bare
`qemu-system-x86_64 -S` with the same argv takes to answer qmp_capabilities. Median of N."""
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from benchlib import Api, Daemon, kill_pids

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20


def bare_qemu(argv):
    """exec -> qmp_capabilities answered, on a pre-bound socket like hangard's."""
    d = tempfile.mkdtemp()
    path = os.path.join(d, "q.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    cli = socket.socket(socket.AF_UNIX)
    cli.connect(path)
    argv = [a.replace("fd=3", f"fd={srv.fileno()}") for a in argv]
    argv = [a for a in argv]
    i = argv.index("-pidfile")
    argv[i + 1] = os.path.join(d, "q.pid")
    j = argv.index("-chardev", argv.index("-mon"))
    argv[j + 1] = f"socket,id=serial0,path={d}/c.sock,server=on,wait=off"
    t0 = time.monotonic()
    p = subprocess.Popen(argv, pass_fds=[srv.fileno()], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    srv.close()
    f = cli.makefile("rwb")
    f.readline()
    f.write(b'{"execute":"qmp_capabilities"}\n')
    f.flush()
    f.readline()
    elapsed = time.monotonic() - t0
    p.kill()
    p.wait()
    f.close()
    cli.close()
    return elapsed


def main():
    d = Daemon()
    d.start()
    api = Api(d.sock)
    api.call("POST", "/v1/machines", {"name": "bench"})
    hangar, argv = [], None
    for _ in range(N):
        t0 = time.monotonic()
        status, m = api.call("POST", "/v1/machines/bench/actions/start")
        hangar.append(time.monotonic() - t0)
        assert status == 200 and m["state"] == "running", m
        if argv is None:
            with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
                argv = [a.decode() for a in f.read().split(b"\0") if a]
            # hangard hands QEMU the boot files as descriptors; bare QEMU opens them by name.
            names = {"/dev/fd/4": m["boot"]["kernel"], "/dev/fd/5": m["boot"]["initrd"]}
            argv = [names.get(a, a) for a in argv]
        status, m = api.call("POST", "/v1/machines/bench/actions/kill")
        assert m["state"] == "stopped", m
    bare = [bare_qemu(argv) for _ in range(N)]
    d.kill()
    mh, mb = statistics.median(hangar) * 1000, statistics.median(bare) * 1000
    print(f"start request -> running via hangard: median {mh:.1f} ms (n={N})")
    print(f"bare qemu -S exec -> qmp_capabilities: median {mb:.1f} ms (n={N})")
    print(f"start overhead: {mh - mb:.1f} ms (goal <= 5 ms)")


if __name__ == "__main__":
    main()
