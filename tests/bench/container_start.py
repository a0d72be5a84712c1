#!/usr/bin/env python3
"""Container start time: from hangard's start request to `running` (the answer of
POST .../actions/start), for the busybox root file system and for Debian 12 with systemd
(scripts/build-debian-rootfs.sh), next to systemd-nspawn run by hand on the same root file
system with the same options in a delegated scope, timed from exec to its READY=1 (nspawn's notify socket; for
Debian that is systemd inside having booted, as for hangard, which runs nspawn with
--notify-ready=yes there). Real systemd + machined (tests/e2e/realsystemd.py). The first start,
which copies the image, is reported apart. Usage: tests/bench/container_start.py [RUNS]"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "e2e"))
import benchlib  # noqa: E402
from imageserver import make_busybox_rootfs_tar  # noqa: E402
from realsystemd import RealSystemd  # noqa: E402

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 5


def by_hand(rootfs, name, systemd_init, systemd):
    """systemd-nspawn started here in a delegated scope of the harness's manager (`systemd-run
    --scope`, as one would by hand; the container's systemd needs its cgroup delegated) and in
    its mount namespace (its /run/systemd is a tmpfs, as on a systemd host): seconds from exec
    to READY=1, then stopped gracefully."""
    sock_path = tempfile.mktemp(prefix="hangar-notify-")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    args = ["systemd-run", "--user", "--scope", "--quiet", "-p", "Delegate=yes", "nsenter",
            f"--mount=/proc/{systemd.manager.pid}/ns/mnt", "systemd-nspawn", "--quiet", "--keep-unit", "--register=no", f"--machine={name}",
            f"--directory={rootfs}", "--private-network", "--private-users=pick",
            "--private-users-ownership=auto", "--console=read-only",
            "--kill-signal=" + ("SIGRTMIN+4" if systemd_init else "SIGUSR2"),
            "--notify-ready=" + ("yes" if systemd_init else "no"), "--boot"]
    t0 = time.monotonic()
    log = tempfile.TemporaryFile()
    env = dict(os.environ, NOTIFY_SOCKET=sock_path, XDG_RUNTIME_DIR=systemd.runtime,
               DBUS_SESSION_BUS_ADDRESS=systemd.address)
    p = subprocess.Popen(args, env=env, stdout=log,
                         stderr=subprocess.STDOUT)
    try:
        try:
            while b"READY=1" not in sock.recv(4096):
                pass
        except TimeoutError:
            log.seek(0)
            sys.exit("systemd-nspawn by hand did not get ready: " + log.read()[-3000:].decode())
        elapsed = time.monotonic() - t0
        time.sleep(1)  # as for hangard below: stop a container that has settled
    finally:
        p.send_signal(signal.SIGTERM)  # nspawn hands its kill signal to the container's init
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        sock.close()
        os.unlink(sock_path)
    return elapsed


def measure(sock, name, image, runs):
    api = benchlib.Api(sock)  # a new connection: the previous one may have idled out
    status, m = api.call("POST", "/v1/machines", {"name": name, "type": "container",
                                                   "image": image})
    assert status == 201, m
    times = []
    for _ in range(runs + 1):
        t0 = time.monotonic()
        status, m = api.call("POST", f"/v1/machines/{name}/actions/start")
        times.append(time.monotonic() - t0)
        assert status == 200 and m["state"] == "running", m
        time.sleep(1)
        status, m = api.call("POST", f"/v1/machines/{name}/actions/stop", {"timeout_s": 60})
        assert status == 200 and m["state"] == "stopped", m
    return times[0], times[1:]


def main():
    work = tempfile.mkdtemp(prefix="hangar-bench-containers-")
    busybox_tar = os.path.join(work, "busybox.tar.xz")
    make_busybox_rootfs_tar(busybox_tar)
    debian_tar = subprocess.run([os.path.join(benchlib.ROOT, "scripts",
                                              "build-debian-rootfs.sh")],
                                capture_output=True, text=True, check=True).stdout.strip()
    systemd = RealSystemd().start()
    d = benchlib.Daemon(qemu=benchlib.FAKE_QEMU, extra=["--dbus", systemd.address])
    d.start()
    api = benchlib.Api(d.sock)
    try:
        for name, tar in (("busybox", busybox_tar), ("debian-12", debian_tar)):
            status, body = api.call("POST", "/v1/images?wait=true",
                                    {"name": name, "source": {"type": "file", "path": tar}})
            assert status == 201, body
        ms = lambda xs: "median %.0f ms (min %.0f, max %.0f)" % (  # noqa: E731
            sorted(xs)[len(xs) // 2] * 1000, min(xs) * 1000, max(xs) * 1000)
        for image, systemd_init in (("busybox", False), ("debian-12", True)):
            first, hangar = measure(d.sock, "bench-" + image, image, RUNS)
            rootfs = os.path.join(d.state_dir, "machines", "bench-" + image, "rootfs")
            hand = [by_hand(rootfs, "hand-" + image, systemd_init, systemd)
                    for _ in range(RUNS)]
            print(f"{image}: start request -> running, {RUNS} runs")
            print(f"  hangard:            {ms(hangar)}")
            print(f"  systemd-nspawn by hand (exec -> READY=1): {ms(hand)}")
            print(f"  hangard first start (copies the image first): {first * 1000:.0f} ms")
    finally:
        d.kill()
        systemd.stop()
        shutil.rmtree(d.state_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
