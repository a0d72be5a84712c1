#!/usr/bin/python3
"""wrk over HTTPS keep-alive against the one reactor thread: GET /v1/machines with N machines
(default 1000) and GET /v1/machines/NAME. Prints requests/s and latency percentiles."""
import os
import re
import subprocess
import sys
import tempfile

from benchlib import FAKE_QEMU, Api, Daemon

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
DURATION = os.environ.get("WRK_DURATION", "10s")

LUA = """
done = function(summary, latency, requests)
  io.write(string.format("p50_us=%d p99_us=%d\\n", latency:percentile(50), latency:percentile(99)))
end
"""


def wrk(url, token, connections=32):
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{DURATION}", "--latency",
                          "-s", f.name, "-H", f"Authorization: Bearer {token}", url],
                         capture_output=True, text=True).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50, p99 = map(int, re.search(r"p50_us=(\d+) p99_us=(\d+)", out).groups())
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return rps, p50, p99, int(errors.group(1)) if errors else 0


def main():
    d = Daemon(qemu=FAKE_QEMU)
    d.start()
    api = Api(d.sock)
    try:
        for i in range(N):
            api.call("POST", "/v1/machines", {"name": f"m{i}"})
        s, t = api.call("POST", "/v1/tokens", {"name": "bench"})
        token = t["token"]
        s, body = api.call("GET", "/v1/machines")
        size = len(subprocess.run(["curl", "-sk", "-H", f"Authorization: Bearer {token}",
                                   d.url + "/v1/machines"], capture_output=True).stdout)
        for path, label in [("/v1/machines", f"GET /v1/machines ({N} machines, {size} bytes)"),
                            ("/v1/machines/m7", "GET /v1/machines/m7")]:
            rps, p50, p99, errors = wrk(d.url + path, token)
            print(f"{label}: {rps:,.0f} req/s, p50 {p50 / 1000:.2f} ms, p99 {p99 / 1000:.2f} ms"
                  f"{'' if not errors else f', {errors} errors'}")
        print("goal: >= 20,000 req/s, p99 <= 5 ms; wrk shares the 2 cores with hangard")
    finally:
        d.kill()


if __name__ == "__main__":
    main()
