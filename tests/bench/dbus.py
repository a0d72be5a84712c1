#!/usr/bin/python3
"""D-Bus: GetMachine and ListMachines round trips with N machines (default 1000) on a private
dbus-daemon, median and p99 (build/tests/dbus_client, sd-bus, blocking calls like a script's);
then MachineStateChanged signals per second under a flood of QMP events from fake QEMU, with
the latency of GET /v1/machines/NAME over the unix socket measured during the flood."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

from benchlib import BUILD, FAKE_QEMU, Api, Daemon, kill_pids, pct

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
CALLS = int(os.environ.get("CALLS", "2000"))
PAIRS = os.environ.get("PAIRS", "50")                  # STOP/RESUME pairs per SIGUSR1
INTERVAL = float(os.environ.get("INTERVAL", "0.01"))  # seconds between SIGUSR1s
CLIENT = os.path.join(BUILD, "tests", "dbus_client")
CONF = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig><listen>unix:path={path}</listen><auth>EXTERNAL</auth>
<policy context="default"><allow user="*"/><allow own="*"/><allow send_destination="*"/>
<allow receive_sender="*"/></policy>
<limit name="max_incoming_bytes">1000000000</limit>
<limit name="max_outgoing_bytes">1000000000</limit></busconfig>
"""


def main():
    tmp = tempfile.mkdtemp(prefix="hangar-bench-bus-")
    with open(os.path.join(tmp, "bus.conf"), "w") as f:
        f.write(CONF.format(path=os.path.join(tmp, "bus")))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", "--config-file",
                            os.path.join(tmp, "bus.conf")], stderr=subprocess.DEVNULL)
    address = f"unix:path={tmp}/bus"
    while not os.path.exists(f"{tmp}/bus"):
        time.sleep(0.05)
    os.environ["FAKE_QEMU_FLOOD"] = PAIRS
    d = Daemon(qemu=FAKE_QEMU, extra=("--dbus", address))
    d.start()
    api = Api(d.sock)
    pids = []
    try:
        for i in range(N):
            api.call("POST", "/v1/machines", {"name": f"m{i}"})
        while subprocess.run(["busctl", f"--address={address}", "status", "org.hangar"],
                             capture_output=True).returncode != 0:
            time.sleep(0.1)
        out = json.loads(subprocess.run([CLIENT, address, "calls", str(CALLS), "m7"],
                                        capture_output=True, text=True, check=True).stdout)
        print(f"{N} machines, {CALLS} calls each: GetMachine p50 {out['get_p50_us']} us, "
              f"p99 {out['get_p99_us']} us; ListMachines ({out['list_entries']} entries) "
              f"p50 {out['list_p50_us']} us, p99 {out['list_p99_us']} us (goal p99 <= 1 ms)")

        s, m = api.call("POST", "/v1/machines/m0/actions/start")
        pids.append(m["pid"])
        watcher = subprocess.Popen([CLIENT, address, "signals", "5"], stdout=subprocess.PIPE,
                                   text=True)
        watcher.stdout.readline()  # ready
        lat, stop = [], threading.Event()

        def probe():
            probe_api = Api(d.sock)
            while not stop.is_set():
                t0 = time.monotonic()
                probe_api.call("GET", "/v1/machines/m7")
                lat.append((time.monotonic() - t0) * 1e6)
                time.sleep(0.002)

        t = threading.Thread(target=probe)
        t.start()
        t_end = time.monotonic() + 6
        while time.monotonic() < t_end:
            os.kill(m["pid"], signal.SIGUSR1)
            time.sleep(INTERVAL)
        out = json.loads(watcher.stdout.readline())
        stop.set()
        t.join()
        watcher.wait()
        print(f"MachineStateChanged under a QMP event flood ({PAIRS} STOP/RESUME pairs every "
              f"{INTERVAL * 1000:.0f} ms): {out['per_second']:,.0f} signals/s "
              f"received by one subscriber ({out['signals']:,} in 5 s); meanwhile "
              f"GET /v1/machines/m7: p50 {pct(lat, 50):.0f} us, p99 {pct(lat, 99):.0f} us "
              f"({len(lat)} requests)")
    finally:
        d.kill()
        kill_pids(pids)
        bus.kill()
        bus.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
