#!/usr/bin/python3
"""GET /v1/machines at scale: N machines (default 10,000; fake QEMU, none running), one HTTPS
keep-alive connection with a token. Pages of `?limit=100` walked through the whole list again
and again (each page's `after` is the previous page's `next`), timed one by one from the
request's first byte to the answer's last: p50, p99, max. Then the whole unpaginated list and
the whole compact list (`?fields=compact`), each timed 5 times (the machines' JSON is cached
from their creation, as in a daemon that has answered about them once)."""
import http.client
import json
import os
import re
import ssl
import subprocess
import sys
import tempfile
import time

from benchlib import FAKE_QEMU, Api, Daemon, pct

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 10  # walks through every page
LIMIT = 100


class Https:
    def __init__(self, url, token):
        host, port = url.split("://", 1)[1].rsplit(":", 1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=300)
        self.headers = {"Authorization": f"Bearer {token}"}

    def get(self, path):
        """(seconds, status, body bytes) of one request on the kept-alive connection."""
        t0 = time.perf_counter()
        self.conn.request("GET", path, headers=self.headers)
        r = self.conn.getresponse()
        body = r.read()
        elapsed = time.perf_counter() - t0
        if r.will_close:
            sys.exit("the server closed the keep-alive connection")
        return elapsed, r.status, body


def ms(v):
    return f"{v * 1000:.2f} ms"


LUA = """
done = function(summary, latency, requests)
  io.write(string.format("p50_us=%d p99_us=%d max_us=%d\\n", latency:percentile(50),
                         latency:percentile(99), latency.max))
end
"""


def wrk(url, token, duration="5s"):
    """wrk (C, one thread, one keep-alive connection): (req/s, p50, p99, max) in seconds."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{duration}", "-s", f.name, "-H",
                          f"Authorization: Bearer {token}", url],
                         capture_output=True, text=True).stdout
    os.unlink(f.name)
    rps = float(re.search(r"Requests/sec:\s+([0-9.]+)", out).group(1))
    p50, p99, mx = map(int, re.search(r"p50_us=(\d+) p99_us=(\d+) max_us=(\d+)", out).groups())
    return rps, p50 / 1e6, p99 / 1e6, mx / 1e6


def handler_buckets(api, route):
    """The daemon's own histogram of `route` (dispatch to answer, before the write)."""
    api.conn.request("GET", "/v1/metrics")
    text = api.conn.getresponse().read().decode()
    out = {}
    for le, n in re.findall(r'hangar_api_request_duration_seconds_bucket\{route="' +
                            re.escape(route) + r'",method="GET",le="([^"]+)"\} (\d+)', text):
        out[le] = int(n)
    return out


def bucket_share(before, after, bound):
    total = after["+Inf"] - before.get("+Inf", 0)
    under = after[bound] - before.get(bound, 0)
    return under, total


def main():
    d = Daemon(qemu=FAKE_QEMU)
    d.start()
    api = Api(d.sock)
    try:
        t0 = time.monotonic()
        for i in range(N):
            s, m = api.call("POST", "/v1/machines", {"name": f"m{i:05d}"})
            assert s == 201, m
        t_create = time.monotonic() - t0
        s, t = api.call("POST", "/v1/tokens", {"name": "bench"})
        client = Https(d.url, t["token"])
        client.get("/v1")  # TLS handshake and authentication, not timed

        full = []
        for _ in range(5):
            elapsed, status, body = client.get("/v1/machines")
            assert status == 200, body[:200]
            full.append(elapsed)
        full_bytes = len(body)
        assert len(json.loads(body)["machines"]) == N
        compact = []
        for _ in range(5):
            elapsed, status, body = client.get("/v1/machines?fields=compact")
            assert status == 200, body[:200]
            compact.append(elapsed)
        compact_bytes = len(body)

        hist0 = handler_buckets(api, "/v1/machines")
        pages, page_bytes, seen = [], 0, 0
        for _ in range(ROUNDS):
            after = None
            while True:
                path = f"/v1/machines?limit={LIMIT}" + (f"&after={after}" if after else "")
                elapsed, status, body = client.get(path)
                assert status == 200, body[:200]
                pages.append(elapsed)
                page_bytes = max(page_bytes, len(body))
                doc = json.loads(body)  # after the clock stopped
                seen += len(doc["machines"])
                after = doc["next"]
                if after is None:
                    break
        assert seen == N * ROUNDS, seen
        hist1 = handler_buckets(api, "/v1/machines")
        compact_pages = []
        for _ in range(ROUNDS):
            after = None
            while True:
                path = f"/v1/machines?limit={LIMIT}&fields=compact" + (
                    f"&after={after}" if after else "")
                elapsed, status, body = client.get(path)
                assert status == 200, body[:200]
                compact_pages.append(elapsed)
                after = json.loads(body)["next"]
                if after is None:
                    break

        print(f"machines: {N} (created in {t_create:.1f} s over the unix socket)")
        print(f"GET /v1/machines?limit={LIMIT} over HTTPS keep-alive, {len(pages)} pages "
              f"(<= {page_bytes} bytes each): p50 {ms(pct(pages, 50))}, p99 {ms(pct(pages, 99))}, "
              f"max {ms(max(pages))} (goal p99 <= 2 ms)")
        shares = ", ".join(f"{bucket_share(hist0, hist1, b)[0]} <= {float(b) * 1000:g} ms"
                           for b in ("0.00025", "0.0005", "0.001", "0.0025"))
        print(f"  in hangard (route handler, before the write), of "
              f"{bucket_share(hist0, hist1, '+Inf')[1]}: {shares}")
        rps, p50, p99, mx = wrk(d.url + f"/v1/machines?limit={LIMIT}&after=m{N // 2:05d}",
                                t["token"])
        print(f"wrk, one connection, GET /v1/machines?limit={LIMIT}&after=m{N // 2:05d}: "
              f"{rps:,.0f} req/s, p50 {ms(p50)}, p99 {ms(p99)}, max {ms(mx)}")
        rps, p50, p99, mx = wrk(d.url + "/v1/machines/m00000", t["token"])
        print(f"  control, wrk on GET /v1/machines/m00000 (one machine): {rps:,.0f} req/s, "
              f"p50 {ms(p50)}, p99 {ms(p99)}, max {ms(mx)}")
        print(f"GET /v1/machines?limit={LIMIT}&fields=compact, {len(compact_pages)} pages: "
              f"p50 {ms(pct(compact_pages, 50))}, p99 {ms(pct(compact_pages, 99))}, "
              f"max {ms(max(compact_pages))}")
        print(f"GET /v1/machines (all {N}, {full_bytes} bytes): median {ms(pct(full, 50))}, "
              f"max {ms(max(full))}")
        print(f"GET /v1/machines?fields=compact (all {N}, {compact_bytes} bytes): "
              f"median {ms(pct(compact, 50))}, max {ms(max(compact))}")
        print("times include the Python client's TLS and HTTP parsing; the 2 cores are shared "
              f"(load average {os.getloadavg()[0]:.1f}): the control's tail is the host's")
    finally:
        d.kill()


if __name__ == "__main__":
    main()
