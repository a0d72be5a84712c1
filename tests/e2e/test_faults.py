"""Fault injection with a fake QEMU (tests/fakes/fake_qemu.cpp): a peer that never greets,
stalls, lies or floods must cost only its own machine, never the daemon or other machines."""
import os
import threading
import time

import harness
from harness import DaemonTest, pids_with_argument, wait_for


class Faults(DaemonTest):
    qemu = harness.FAKE_QEMU
    extra = ("--qmp-timeout-ms", "1500")

    def test_no_greeting_fails_start_and_leaves_no_process(self):
        m = self.create("nogreet-1")
        t0 = time.monotonic()
        status, body = self.daemon.request("POST", "/v1/machines/nogreet-1/actions/start")
        self.assertEqual(status, 504, body)
        self.assertEqual(body["error"]["code"], "timeout")
        self.assertIn("no QMP greeting", body["error"]["message"])
        self.assertLess(time.monotonic() - t0, 15)
        self.assertEqual(pids_with_argument(m["uuid"]), [])
        m = self.daemon.machine("nogreet-1")
        self.assertEqual(m["state"], "stopped")
        self.assertIn("api:start failed", m["state_reason"])
        self.assertFalse(os.path.exists(os.path.join(self.state_dir, "machines", "nogreet-1",
                                                     "qemu.pid")))

    def test_qemu_that_exits_reports_its_own_error(self):
        self.create("exit-1")
        status, body = self.daemon.request("POST", "/v1/machines/exit-1/actions/start")
        self.assertEqual(status, 503, body)
        self.assertIn("cannot load kernel (injected failure)", body["error"]["message"])
        self.assertIn("status=1", body["error"]["message"])

    def test_killed_during_cont_is_a_crash(self):
        # RESUME comes before cont's answer: a QEMU killed in between has crashed; its start
        # did not fail.
        self.create("diecont-1")
        self.daemon.request("POST", "/v1/machines/diecont-1/actions/start")
        m = self.daemon.wait_state("diecont-1", "crashed", timeout=5)
        self.assertIn("signal=9", m["state_reason"])
        self.assertNotIn("start failed", m["state_reason"])

    def test_stalled_command_times_out_without_delaying_others(self):
        d = self.daemon
        self.create("stall-1")
        self.create("ok-1")
        d.action("stall-1", "start")
        d.action("ok-1", "start")
        result = {}

        def pause_stalled():
            result["pause"] = d.request("POST", "/v1/machines/stall-1/actions/pause")

        th = threading.Thread(target=pause_stalled)
        th.start()
        time.sleep(0.2)
        # While stall-1 waits for its deadline, the other machine is served at once.
        t0 = time.monotonic()
        self.assertEqual(d.action("ok-1", "pause")["state"], "paused")
        self.assertEqual(d.action("ok-1", "resume")["state"], "running")
        status, _ = d.request("GET", "/v1/machines")
        self.assertEqual(status, 200)
        self.assertLess(time.monotonic() - t0, 0.5)
        # A second operation on the stalled machine is refused at once: busy.
        status, body = d.request("POST", "/v1/machines/stall-1/actions/stop")
        self.assertEqual((status, body["error"]["code"]), (409, "busy"))
        th.join()
        status, body = result["pause"]
        self.assertEqual(status, 504, body)
        self.assertEqual(body["error"]["code"], "timeout")
        m = d.machine("stall-1")
        self.assertTrue(m["unresponsive"])
        self.assertEqual(m["state"], "running")
        # kill always works: through the pidfd, not QMP.
        self.assertEqual(d.action("stall-1", "kill")["state"], "stopped")

    def test_garbage_and_endless_lines_drop_only_that_connection(self):
        d = self.daemon
        for n in ("garbage-1", "endless-1", "ok-2"):
            self.create(n)
            d.action(n, "start")
        for n in ("garbage-1", "endless-1"):
            status, body = d.request("POST", f"/v1/machines/{n}/actions/pause")
            self.assertEqual(status, 503, body)
            wait_for(lambda: d.machine(n)["unresponsive"], 5, f"{n} flagged unresponsive")
        self.assertIn("not a JSON object", d.log())
        self.assertIn("longer than", d.log())
        self.assertEqual(d.action("ok-2", "pause")["state"], "paused")
        self.assertEqual(d.action("ok-2", "resume")["state"], "running")
        # A graceful stop of a machine without QMP escalates to SIGKILL and still completes.
        m = d.action("garbage-1", "stop", {"timeout_s": 1})
        self.assertEqual(m["state"], "stopped")

    def test_graceful_stop_and_restart_with_fake(self):
        d = self.daemon
        self.create("ok-3")
        d.action("ok-3", "start")
        m = d.action("ok-3", "stop")
        self.assertEqual(m["state_reason"], "qmp:SHUTDOWN guest=true reason=guest-shutdown")
        d.action("ok-3", "start")
        m = d.action("ok-3", "restart")
        self.assertEqual(m["state"], "running")


class BadInput(DaemonTest):
    qemu = harness.FAKE_QEMU

    def snapshot(self):
        return sorted(os.listdir(os.path.join(self.state_dir, "machines")))

    def expect_error(self, method, path, status, code, body=None, raw=None):
        got, resp = self.daemon.request(method, path, body, raw=raw)
        self.assertEqual(got, status, (method, path, resp))
        self.assertEqual(resp["error"]["code"], code, resp)
        self.assertTrue(resp["error"]["message"])
        return resp

    def test_bad_requests_change_nothing(self):
        self.create("base")
        before = self.snapshot()
        for name in ["../x", "a b", "x" * 300, "", "Upper", "a/b", "-a"]:
            self.expect_error("POST", "/v1/machines", 400, "invalid_name", {"name": name})
        for path in ["/v1/machines/..%2fx", "/v1/machines/a%20b", "/v1/machines/" + "x" * 300]:
            self.expect_error("GET", path, 400, "invalid_name")
            self.expect_error("POST", path + "/actions/start", 400, "invalid_name")
            self.expect_error("DELETE", path, 400, "invalid_name")
        self.expect_error("POST", "/v1/machines", 400, "invalid_json", raw="{\"name\": ")
        self.expect_error("POST", "/v1/machines", 400, "bad_request", raw="[1]")
        self.expect_error("POST", "/v1/machines", 400, "bad_request", {"name": "n", "cpus": "2"})
        self.expect_error("POST", "/v1/machines", 400, "bad_request", {"name": "n", "color": 1})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec", {"name": "n", "cpus": 0})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec", {"name": "n", "cpus": 65})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec",
                          {"name": "n", "memory_mib": 1})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec",
                          {"name": "n", "memory_mib": 10 ** 9})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec",
                          {"name": "n", "boot": {"kernel": "/nonexistent/vmlinuz"}})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec",
                          {"name": "n", "boot": {"kernel": "relative/vmlinuz"}})
        self.expect_error("POST", "/v1/machines", 422, "invalid_spec", {"name": "n", "type": "lxc"})
        self.expect_error("POST", "/v1/machines", 409, "conflict", {"name": "base"})
        self.expect_error("POST", "/v1/machines", 413, "too_large", raw="x" * (10 * 1024 * 1024))
        self.expect_error("GET", "/v1/nothing", 404, "not_found")
        self.expect_error("GET", "/v1/machines/base/actions/start", 405, "method_not_allowed")
        self.expect_error("POST", "/v1/machines/base/actions/explode", 404, "not_found")
        self.expect_error("PUT", "/v1/machines/base", 405, "method_not_allowed")
        self.expect_error("GET", "/v1/machines?state=bogus", 400, "bad_request")
        self.expect_error("POST", "/v1/machines/base/actions/stop", 400, "bad_request",
                          {"timeout_s": "soon"})
        self.expect_error("POST", "/v1/machines/base/actions/pause", 400, "bad_request",
                          {"timeout_s": 1})
        self.expect_error("POST", "/v1/machines/base/actions/start?wait=later", 400,
                          "bad_request")
        self.assertEqual(self.snapshot(), before)
        self.assertEqual(self.daemon.machine("base")["state"], "stopped")

    def test_wrong_states(self):
        d = self.daemon
        self.create("w1")
        for action in ("stop", "pause", "resume", "kill", "restart"):
            self.expect_error("POST", f"/v1/machines/w1/actions/{action}", 409, "invalid_state")
        d.action("w1", "start")
        self.expect_error("POST", "/v1/machines/w1/actions/start", 409, "invalid_state")
        self.expect_error("POST", "/v1/machines/w1/actions/resume", 409, "invalid_state")
        self.expect_error("DELETE", "/v1/machines/w1", 409, "invalid_state")
        self.assertTrue(os.path.isdir(os.path.join(self.state_dir, "machines", "w1")))
        pid = d.machine("w1")["pid"]
        status, _ = d.request("DELETE", "/v1/machines/w1?force=true")
        self.assertEqual(status, 200)
        self.assertFalse(os.path.exists(os.path.join(self.state_dir, "machines", "w1")))
        wait_for(lambda: not harness.pid_alive(pid), 5, "the forced delete's QEMU to die")

    def test_patch(self):
        d = self.daemon
        self.create("p1")
        status, m = d.request("PATCH", "/v1/machines/p1", {"cpus": 2, "memory_mib": 256,
                                                            "description": "web"})
        self.assertEqual((status, m["cpus"], m["memory_mib"], m["description"]),
                         (200, 2, 256, "web"))
        pid = d.action("p1", "start")["pid"]
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        self.assertEqual(argv[argv.index(b"-smp") + 1], b"2")
        self.assertEqual(argv[argv.index(b"-m") + 1], b"256")
        # While QEMU runs: description and autostart yes, hardware no.
        status, m = d.request("PATCH", "/v1/machines/p1", {"autostart": True, "description": "x"})
        self.assertEqual((status, m["autostart"], m["description"]), (200, True, "x"))
        self.expect_error("PATCH", "/v1/machines/p1", 409, "invalid_state", {"cpus": 1})
        self.expect_error("PATCH", "/v1/machines/p1", 400, "bad_request", {"name": "p2"})
        self.expect_error("PATCH", "/v1/machines/p1", 400, "bad_request", {"colour": "red"})
        self.expect_error("PATCH", "/v1/machines/p1", 400, "invalid_json", raw="{")
        self.expect_error("PATCH", "/v1/machines/nothere", 404, "not_found", {"cpus": 1})
        d.action("p1", "kill")
        self.expect_error("PATCH", "/v1/machines/p1", 422, "invalid_spec", {"memory_mib": 1})
        self.expect_error("PATCH", "/v1/machines/p1", 422, "invalid_spec",
                          {"boot": {"kernel": "/nonexistent"}})
        self.assertEqual(d.machine("p1")["cpus"], 2)
        # Stored: a restarted daemon has the new spec.
        d.kill()
        d.start()
        m = d.machine("p1")
        self.assertEqual((m["cpus"], m["memory_mib"], m["autostart"], m["description"]),
                         (2, 256, True, "x"))

    def test_raw_protocol_abuse_does_not_hurt_the_daemon(self):
        import socket
        for payload in [b"GARBAGE\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X: " +
                        b"y" * 70000 + b"\r\n\r\n", b"POST /v1/machines HTTP/1.1\r\nContent-Length: 100\r\n\r\n{",
                        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(64)]:
            s = socket.socket(socket.AF_UNIX)
            s.connect(self.daemon.socket)
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)
            s.settimeout(10)
            try:
                s.recv(65536)
            except OSError:
                pass
            s.close()
        # A WebSocket upgrade on a plain route is refused with the JSON shape.
        status, body = self.daemon.request("GET", "/v1/machines", headers=[
            "Connection: Upgrade", "Upgrade: websocket", "Sec-WebSocket-Version: 13",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=="])
        self.assertEqual((status, body["error"]["code"]), (400, "bad_request"))
        status, body = self.daemon.request("GET", "/v1/health")
        self.assertEqual(status, 200, body)
        self.assertEqual(body["status"], "ok")


if __name__ == "__main__":
    harness.main()
