#!/usr/bin/python3
"""Adoption: time for a restarted hangard to adopt N running VMs (default 100, fake QEMU;
`--real` uses qemu-system-x86_64 with the built-in guest, paused to spare the CPU)."""
import re
import signal
import sys
import time

from benchlib import FAKE_QEMU, Api, Daemon, kill_pids

real = "--real" in sys.argv
args = [a for a in sys.argv[1:] if a != "--real"]
N = int(args[0]) if args else 100


def main():
    d = Daemon(qemu=None if real else FAKE_QEMU, extra=["--log-level", "info"])
    d.start()
    api = Api(d.sock)
    pids = []
    try:
        for i in range(N):
            api.call("POST", "/v1/machines", {"name": f"a{i}"})
            s, m = api.call("POST", f"/v1/machines/a{i}/actions/start")
            assert s == 200, m
            pids.append(m["pid"])
            if real:
                api.call("POST", f"/v1/machines/a{i}/actions/pause")
        d.kill(signal.SIGKILL)
        results = []
        for _ in range(5):
            wall = d.start()
            with open(f"{d.state_dir}/hangard.log") as f:
                log = f.read()
            ms = float(re.findall(r"running QEMU adopted in ([0-9.]+) ms", log)[-1]) \
                if "adopted in" in log else None
            api = Api(d.sock)
            s, lst = api.call("GET", "/v1/machines")
            ok = sum(1 for m in lst["machines"] if m["pid"] in pids)
            results.append((ms, wall * 1000, ok))
            d.kill(signal.SIGKILL)
        kind = "real QEMU" if real else "fake QEMU"
        for ms, wall, ok in results:
            print(f"adopted {ok}/{N} ({kind}): in-daemon {ms} ms; exec -> ready {wall:.1f} ms")
        print(f"median exec -> ready: {sorted(r[1] for r in results)[2]:.1f} ms (goal <= 300 ms)")
    finally:
        d.kill()
        kill_pids(pids)


if __name__ == "__main__":
    main()
