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


    def test_machine_updated_has_one_shape(self):
        self.create("up1")
        rev = self.daemon.request("GET", "/v1/machines")[1]["revision"]
        status, m = self.daemon.request("PATCH", "/v1/machines/up1",
                                        {"cpus": 2, "description": "x"})
        self.assertEqual(status, 200, m)
        evs = run(collect(self.daemon.socket, f"since={rev}&types=machine.updated", count=1))
        self.assertEqual(evs[0]["data"], {"changed": ["cpus", "description"],
                                          "reason": "api:update", "machine": m})


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


class RawWs:
    """A bare WebSocket client on the unix socket that reads only when asked, with a small
    receive buffer, so the server's writes stall: a reader as slow as we like."""

    def __init__(self, path, query, rcvbuf=4096):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.connect(path)
        self.s.settimeout(30)
        self.s.sendall(f"GET /v1/events?{query} HTTP/1.1\r\nHost: h\r\n"
                       "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                       "Sec-WebSocket-Version: 13\r\n"
                       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n".encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101"), head

    def fill(self):
        chunk = self.s.recv(65536)
        if not chunk:
            raise EOFError("the server closed the connection")
        self.buf += chunk

    def take(self, n):
        while len(self.buf) < n:
            self.fill()
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def event(self):
        """The next text frame as JSON; a close frame raises with its reason."""
        while True:
            b0, b1 = self.take(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(self.take(2), "big")
            elif n == 127:
                n = int.from_bytes(self.take(8), "big")
            payload = self.take(n)
            opcode = b0 & 0x0F
            if opcode == 1:
                return json.loads(payload)
            if opcode == 8:
                raise EOFError(f"closed by the server: {payload[2:].decode(errors='replace')}")
            # pings (9) and anything else: not events

    def close(self):
        self.s.close()


class FloodTest(DaemonTest):
    """Thousands of events cheaply: fake QEMU answers SIGUSR1 with FLOOD STOP/RESUME pairs."""
    qemu = harness.FAKE_QEMU
    flood = 1000

    def setUp(self):
        os.environ["FAKE_QEMU_FLOOD"] = str(self.flood)
        super().setUp()

    def tearDown(self):
        os.environ.pop("FAKE_QEMU_FLOOD", None)
        super().tearDown()

    def revision(self):
        return self.daemon.request("GET", "/v1")[1]["revision"]

    def start_flooder(self):
        self.create("flood")
        return self.daemon.action("flood", "start")["pid"]

    def flood_rounds(self, pid, rounds):
        """`rounds` bursts, each once the previous is published; the revision after them."""
        rev = self.revision()
        for _ in range(rounds):
            os.kill(pid, signal.SIGUSR1)
            rev += 2 * self.flood
            wait_for(lambda: self.revision() >= rev, 60, f"revision {rev}")
        return rev


class BigReplay(FloodTest):
    extra = ("--event-ring", "10000")

    def test_since_0_over_more_than_the_queue_completes_in_order(self):
        pid = self.start_flooder()
        rev = self.flood_rounds(pid, 3)  # 6,000 events and the few of create/start
        self.assertGreater(rev, 4096 + 1000, "more events behind since=0 than the queue holds")

        async def scenario():
            got = []
            async with websockets.unix_connect(self.daemon.socket,
                                               "ws://hangar/v1/events?since=0") as ws:
                async def reader(n):
                    while len(got) < n:
                        got.append(json.loads(await ws.recv()))
                await asyncio.wait_for(reader(rev), 60)
                # Still open and live: the next burst arrives on the same connection.
                os.kill(pid, signal.SIGUSR1)
                await asyncio.wait_for(reader(rev + 2 * self.flood), 60)
            return got

        events = run(scenario())
        self.assertEqual([e["seq"] for e in events], list(range(1, rev + 2 * self.flood + 1)))
        self.assertNotIn("events.gap", {e["type"] for e in events})
        self.assertNotIn("closing a subscriber", self.daemon.log())

    def test_a_reader_that_pauses_during_the_replay_loses_nothing(self):
        pid = self.start_flooder()
        rev = self.flood_rounds(pid, 3)
        ws = RawWs(self.daemon.socket, "since=0")
        try:
            time.sleep(1)  # reads nothing: the replay waits for the socket, it is not queued
            live = self.flood_rounds(pid, 1)  # meanwhile live events arrive (into the ring)
            seqs = [ws.event()["seq"] for _ in range(live)]
        finally:
            ws.close()
        self.assertEqual(seqs, list(range(1, live + 1)))
        self.assertNotIn("closing a subscriber", self.daemon.log())


class ReplayOutrunByTheRing(FloodTest):
    extra = ("--event-ring", "5000")

    def test_lost_range_during_replay_is_one_gap_then_the_replay_goes_on(self):
        pid = self.start_flooder()
        rev = self.flood_rounds(pid, 3)
        since = rev - 4500  # inside the ring: no gap at the start
        ws = RawWs(self.daemon.socket, f"since={since}")
        try:
            # The server fills the socket's buffers (a few hundred frames: a unix socket
            # holds the sender's SO_SNDBUF, ~200 KiB, counted with per-write overhead), then
            # waits with its cursor far behind the head.
            time.sleep(0.5)
            # 6,000 more events: the ring (5,000) wraps past the stalled replay's cursor.
            final = self.flood_rounds(pid, 3)
            frames = []
            while not frames or frames[-1]["seq"] < final:
                frames.append(ws.event())
        finally:
            ws.close()
        gaps = [i for i, f in enumerate(frames) if f["type"] == "events.gap"]
        self.assertEqual(len(gaps), 1, [frames[i] for i in gaps])
        g = gaps[0]
        before, gap, after = frames[:g], frames[g], frames[g + 1:]
        self.assertGreater(len(before), 0, "some of the replay went out before the wrap")
        self.assertEqual([f["seq"] for f in before], list(range(since + 1, since + 1 + g)))
        # Exactly the lost range: after the last sent, up to the oldest still kept.
        self.assertEqual(gap["seq"], 0)
        self.assertEqual(gap["data"]["since"], before[-1]["seq"])
        self.assertEqual(gap["data"]["oldest"], after[0]["seq"])
        self.assertGreater(gap["data"]["oldest"], gap["data"]["since"] + 1)
        self.assertGreaterEqual(gap["data"]["oldest"], final - 5000 + 1)
        self.assertEqual([f["seq"] for f in after], list(range(after[0]["seq"], final + 1)))
        self.assertNotIn("closing a subscriber", self.daemon.log())


if __name__ == "__main__":
    harness.main()
