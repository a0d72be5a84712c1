#!/usr/bin/python3
"""Scale: N machines backed by fake QMP endpoints (tests/fakes/fake_qemu, one process each),
each emitting STOP/RESUME event pairs. Reports state changes processed and persisted per
second on the one reactor thread, and daemon RSS per machine."""
import os
import signal
import sys
import time

from benchlib import FAKE_QEMU, Api, Daemon, kill_pids

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
FLOOD = int(sys.argv[2]) if len(sys.argv) > 2 else 100  # pairs per machine


def main():
    os.environ["FAKE_QEMU_FLOOD"] = str(FLOOD)
    d = Daemon(qemu=FAKE_QEMU, extra=["--event-ring", "10000"])
    d.start()
    api = Api(d.sock)
    rss0 = d.rss_kib()
    pids = []
    try:
        t0 = time.monotonic()
        for i in range(N):
            s, m = api.call("POST", "/v1/machines", {"name": f"m{i}"})
            assert s == 201, m
        t_create = time.monotonic() - t0
        rss_created = d.rss_kib()
        t0 = time.monotonic()
        for i in range(N):
            s, m = api.call("POST", f"/v1/machines/m{i}/actions/start")
            assert s == 200, m
            pids.append(m["pid"])
        t_start = time.monotonic() - t0
        time.sleep(1)
        rss_running = d.rss_kib()
        s, info = api.call("GET", "/v1")
        base = info["revision"]
        expected = base + N * FLOOD * 2
        t0 = time.monotonic()
        for p in pids:
            os.kill(p, signal.SIGUSR1)
        while True:
            s, info = api.call("GET", "/v1")
            if info["revision"] >= expected:
                break
            if time.monotonic() - t0 > 300:
                sys.exit(f"only {info['revision'] - base} of {expected - base} changes seen")
            time.sleep(0.005)
        elapsed = time.monotonic() - t0
        s, lst = api.call("GET", "/v1/machines?state=running")
        print(f"machines: {N}; created in {t_create:.2f} s, started in {t_start:.2f} s "
              f"({t_start / N * 1000:.2f} ms each)")
        print(f"state changes: {N * FLOOD * 2} processed and persisted in {elapsed:.2f} s = "
              f"{N * FLOOD * 2 / elapsed:,.0f}/s (goal >= 50,000/s)")
        print(f"daemon RSS: {rss0} KiB empty, {rss_created} KiB with {N} machines, "
              f"{rss_running} KiB with all running")
        print(f"RSS per machine (running, QMP connected): {(rss_running - rss0) / N:.1f} KiB "
              f"(goal <= 32 KiB); per stored machine: {(rss_created - rss0) / N:.1f} KiB")
        print(f"all running after the flood: {len(lst['machines']) == N}")
    finally:
        d.kill()
        kill_pids(pids)


if __name__ == "__main__":
    main()
