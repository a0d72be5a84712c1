"""GET /v1/events: a WebSocket that loses nothing. Replay with since=, across a kill -9 of the
daemon, events.gap when since is older than the ring, filters, and a slow subscriber closed
while a fast one keeps every event."""
import asyncio
import json
import os
import signal
import socket
import time

import websockets

import harness
from harness import DaemonTest, wait_for


async def collect(sock, query, until=None, count=None, timeout=20):
    """Frames from /v1/events?query until `until(frame)` is true or `count` arrived."""
    out = []
    async with websockets.unix_connect(sock, f"ws://hangar/v1/events?{query}") as ws:
        async def reader():
            while True:
                ev = json.loads(await ws.recv())
                out.append(ev)
                if (until and until(ev)) or (count and len(out) >= count):
                    return
        await asyncio.wait_for(reader(), timeout)
    return out


def run(coro):
    return asyncio.run(coro)


class Events(DaemonTest):
    qemu = harness.FAKE_QEMU

    def lifecycle(self, name):
        d = self.daemon
        self.create(name)
        d.action(name, "start")
        d.action(name, "pause")
        d.action(name, "resume")
        d.action(name, "stop")
        status, _ = d.request("DELETE", f"/v1/machines/{name}")
        self.assertEqual(status, 200)

    def test_live_stream_in_order_then_exact_replay(self):
        sock = self.daemon.socket

        async def scenario():
            live = asyncio.ensure_future(collect(
                sock, "since=0", until=lambda e: e["type"] == "machine.deleted"))
            await asyncio.sleep(0.3)
            await asyncio.get_running_loop().run_in_executor(None, self.lifecycle, "ev1")
            return await live

        events = run(scenario())
        seqs = [e["seq"] for e in events]
        self.assertEqual(seqs, sorted(set(seqs)), "seq strictly increasing")
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))), "no seq missing")
        self.assertEqual(events[0]["type"], "machine.created")
        self.assertEqual(events[0]["data"]["name"], "ev1")
        transitions = [(e["data"]["from"], e["data"]["to"]) for e in events
                       if e["type"] == "machine.state"]
        self.assertEqual(transitions, [
            ("stopped", "starting"), ("starting", "running"), ("running", "paused"),
            ("paused", "running"), ("running", "stopping"), ("stopping", "stopped")])
        reasons = [e["data"]["reason"] for e in events if e["type"] == "machine.state"]
        self.assertEqual(reasons[1], "qmp:RESUME")
        self.assertEqual(reasons[2], "qmp:STOP")
        self.assertIn("qmp:SHUTDOWN guest=true", reasons[-1])
        self.assertEqual(events[-1]["type"], "machine.deleted")
        for e in events:
            self.assertTrue(e["time"].endswith("Z"))

        # Offline while more happens; since= replays exactly what was missed.
        last = seqs[-1]
        self.lifecycle("ev2")
        status, lst = self.daemon.request("GET", "/v1/machines")
        missed = run(collect(sock, f"since={last}", count=lst["revision"] - last))
        self.assertEqual([e["seq"] for e in missed], list(range(last + 1, lst["revision"] + 1)))
        self.assertEqual(missed[0]["data"]["name"], "ev2")
        # And the full history from 0 is the same frames as seen live.
        again = run(collect(sock, "since=0", count=len(events)))
        self.assertEqual(again, events)

    def test_replay_survives_kill9_of_the_daemon(self):
        self.lifecycle("before")
        status, lst = self.daemon.request("GET", "/v1/machines")
        rev = lst["revision"]
        before = run(collect(self.daemon.socket, "since=0", count=rev))
        self.daemon.kill(signal.SIGKILL)
        self.daemon.start()
        after = run(collect(self.daemon.socket, "since=0", count=rev))
        self.assertEqual(after, before)
        self.create("after")
        new = run(collect(self.daemon.socket, f"since={rev}", count=1))
        self.assertEqual((new[0]["seq"], new[0]["type"]), (rev + 1, "machine.created"))

    def test_filters_and_bad_queries(self):
        self.lifecycle("fa")
        self.lifecycle("fb")
        evs = run(collect(self.daemon.socket, "since=0&types=machine.state&machine=fb", count=6))
        self.assertTrue(all(e["machine"] == "fb" and e["type"] == "machine.state" for e in evs))
        upgrade = ["Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
                   "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="]
        for q in ["since=abc", "since=-1", "types=machine.bogus", "machine=../x", "color=red"]:
            status, body = self.daemon.request("GET", f"/v1/events?{q}", headers=upgrade)
            self.assertEqual(status, 400, (q, body))
        status, body = self.daemon.request("GET", "/v1/events")
        self.assertEqual((status, body["error"]["code"]), (400, "bad_request"))


class Operations(DaemonTest):
    qemu = harness.FAKE_QEMU

    def test_wait_false_answers_202_and_reports_through_events(self):
        d = self.daemon
        self.create("op1")
        status, lst = d.request("GET", "/v1/machines")
        rev = lst["revision"]
        status, body = d.request("POST", "/v1/machines/op1/actions/start?wait=false")
        self.assertEqual(status, 202, body)
        op_id = body["operation"]
        self.assertTrue(op_id.startswith("op-"))
        evs = run(collect(d.socket, f"since={rev}&types=operation.created,operation.done",
                          count=2))
        self.assertEqual([e["type"] for e in evs], ["operation.created", "operation.done"])
        self.assertEqual(evs[0]["data"], {"id": op_id, "action": "start"})
        self.assertEqual((evs[1]["data"]["status"], evs[1]["data"]["state"]),
                         ("succeeded", "running"))
        status, op = d.request("GET", f"/v1/operations/{op_id}")
        self.assertEqual((status, op["status"], op["machine"]), (200, "succeeded", "op1"))
        # Refusals are still answered at once, with no operation.
        status, body = d.request("POST", "/v1/machines/op1/actions/start?wait=false")
        self.assertEqual((status, body["error"]["code"]), (409, "invalid_state"))
        status, body = d.request("POST", "/v1/machines/op1/actions/start?wait=maybe")
        self.assertEqual(status, 400)
        # A failing operation reports its error.
        self.create("stall-op")
        d.action("stall-op", "start")
        status, body = d.request("POST", "/v1/machines/stall-op/actions/pause?wait=false")
        self.assertEqual(status, 202)
        op_id = body["operation"]
        op = wait_for(lambda: (lambda o: o if o["status"] != "running" else None)(
            d.request("GET", f"/v1/operations/{op_id}")[1]), 15, "the operation to end")
        self.assertEqual((op["status"], op["error"]["code"]), ("failed", "timeout"))
        status, body = d.request("GET", "/v1/operations/op-nothere")
        self.assertEqual(status, 404)


class EventGap(DaemonTest):
    qemu = harness.FAKE_QEMU
    extra = ("--event-ring", "16")

    def test_since_older_than_ring_gets_gap(self):
        for i in range(20):
            self.create(f"g{i}")
        status, lst = self.daemon.request("GET", "/v1/machines")
        rev = lst["revision"]
        evs = run(collect(self.daemon.socket, "since=1", count=17))
        self.assertEqual(evs[0]["type"], "events.gap")
        self.assertEqual(evs[0]["data"]["revision"], rev)
        self.assertEqual(evs[0]["data"]["since"], 1)
        self.assertEqual([e["seq"] for e in evs[1:]], list(range(rev - 15, rev + 1)))
        # A since inside the ring gets no gap.
        evs = run(collect(self.daemon.socket, f"since={rev - 2}", count=2))
        self.assertEqual([e["seq"] for e in evs], [rev - 1, rev])
        # A since from another history (newer than this server's) gets a gap too.
        evs = run(collect(self.daemon.socket, f"since={rev + 100}", count=1))
        self.assertEqual(evs[0]["type"], "events.gap")


class SlowSubscriber(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        os.environ["FAKE_QEMU_FLOOD"] = "500"  # STOP/RESUME pairs per SIGUSR1
        super().setUp()

    def tearDown(self):
        os.environ.pop("FAKE_QEMU_FLOOD", None)
        super().tearDown()

    def test_slow_one_is_closed_fast_one_gets_everything(self):
        d = self.daemon
        self.create("flood")
        pid = d.action("flood", "start")["pid"]
        status, lst = d.request("GET", "/v1/machines")
        start_rev = lst["revision"]
        # The slow subscriber: a raw WebSocket handshake, then it never reads.
        slow = socket.socket(socket.AF_UNIX)
        slow.connect(d.socket)
        slow.sendall(b"GET /v1/events HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
                     b"Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        rounds, per_round = 20, 1000
        total = rounds * per_round

        async def scenario():
            got = []
            async with websockets.unix_connect(
                    d.socket, f"ws://hangar/v1/events?since={start_rev}") as ws:
                async def reader():
                    while len(got) < total:
                        got.append(json.loads(await ws.recv()))
                fast = asyncio.ensure_future(asyncio.wait_for(reader(), 90))
                await asyncio.sleep(0.3)
                # Each burst once the fast one has what came before: it keeps up by
                # definition, however slow this machine (or a sanitizer build) is, while
                # the slow one never reads and falls 4096 behind by the fifth burst.
                for r in range(rounds):
                    os.kill(pid, signal.SIGUSR1)
                    while len(got) < (r + 1) * per_round and not fast.done():
                        await asyncio.sleep(0.01)
                await fast
            return got

        events = run(scenario())
        self.assertEqual([e["seq"] for e in events],
                         list(range(start_rev + 1, start_rev + total + 1)))
        wait_for(lambda: "closing a subscriber that is" in d.log(), 10, "the slow one closed")
        # The slow one ends: after what was buffered, the connection is closed by the server.
        slow.settimeout(10)
        data = b""
        while True:
            chunk = slow.recv(65536)
            if not chunk:
                break
            data += chunk
        self.assertLess(len(data), total * 100, "the slow subscriber was not sent everything")
        slow.close()
        if os.environ.get("HANGAR_SANITIZED") != "1":
            with open(f"/proc/{d.pid}/status") as f:
                rss = int([l for l in f if l.startswith("VmRSS")][0].split()[1])
            self.assertLess(rss, 64 * 1024, "daemon memory stays bounded")


if __name__ == "__main__":
    harness.main()
