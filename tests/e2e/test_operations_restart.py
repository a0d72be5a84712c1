"""Operations survive a restart of hangard: a start answered 202 and then hangard killed with
SIGKILL mid-start is readable afterwards and truthful (completed by the adoption, or failed
with `interrupted`); finished operations read the same after a restart; unknown ids are 404.
Real QEMU (the built-in guest, under harness.ACCEL)."""
import signal

import harness
from harness import DaemonTest, pids_with_argument, wait_for


class OperationsAcrossRestart(DaemonTest):
    def ended(self, op_id, timeout=60):
        def check():
            status, op = self.daemon.request("GET", f"/v1/operations/{op_id}")
            self.assertEqual(status, 200, op)
            return op if op["status"] != "running" else None
        return wait_for(check, timeout, f"operation {op_id} to end")

    def start_and_kill(self, name, wait_for_qemu):
        d = self.daemon
        m = self.create(name)
        status, body = d.request("POST", f"/v1/machines/{name}/actions/start?wait=false")
        self.assertEqual(status, 202, body)
        op_id = body["operation"]
        if wait_for_qemu:
            wait_for(lambda: pids_with_argument(m["uuid"]), 30, f"{name}'s QEMU")
        d.kill(signal.SIGKILL)
        d.start()
        op = self.ended(op_id)
        machine = d.machine(name)
        self.assertEqual((op["id"], op["machine"], op["action"]), (op_id, name, "start"))
        if op["status"] == "succeeded":
            # The start completed: before the kill (QEMU answers within milliseconds, so the
            # kill may come after RESUME), or by the adoption, and then the operation says so.
            self.assertEqual((op["state"], machine["state"]), ("running", "running"), op)
            if "detail" in op:
                self.assertIn("completed by adoption", op["detail"])
            self.assertEqual(len(pids_with_argument(m["uuid"])), 1)
        else:
            self.assertEqual(op["status"], "failed", op)
            self.assertEqual(op["error"]["code"], "interrupted", op)
            self.assertNotEqual(machine["state"], "running", (op, machine))
            self.assertEqual(op["state"], machine["state"], (op, machine))
        self.assertIn("done_at", op)
        # Readable the same way after one more restart.
        d.kill(signal.SIGKILL)
        d.start()
        self.assertEqual(d.request("GET", f"/v1/operations/{op_id}"), (200, op))
        return op

    def test_kill9_right_after_202(self):
        op = self.start_and_kill("mid-a", wait_for_qemu=False)
        print(f"killed right after the 202: {op['status']} {op.get('detail') or op.get('error')}")

    def test_kill9_once_qemu_runs(self):
        op = self.start_and_kill("mid-b", wait_for_qemu=True)
        print(f"killed once QEMU ran: {op['status']} {op.get('detail') or op.get('error')}")

    def test_kill9_mid_stop_is_interrupted(self):
        d = self.daemon
        self.create("mid-stop")
        d.action("mid-stop", "start")
        status, body = d.request("POST", "/v1/machines/mid-stop/actions/stop?wait=false",
                                 {"timeout_s": 30})
        self.assertEqual(status, 202, body)
        d.kill(signal.SIGKILL)
        d.start()
        op = self.ended(body["operation"])
        # Only a start is completed by adoption; a stop cut short says so, and the state the
        # machine was found in.
        self.assertEqual((op["status"], op["error"]["code"]), ("failed", "interrupted"), op)
        self.assertEqual(op["state"], d.machine("mid-stop")["state"])

    def test_finished_operation_survives_and_unknown_is_404(self):
        d = self.daemon
        self.create("done")
        status, body = d.request("POST", "/v1/machines/done/actions/start?wait=false")
        self.assertEqual(status, 202, body)
        started = self.ended(body["operation"])
        self.assertEqual((started["status"], started["state"]), ("succeeded", "running"))
        status, body = d.request("POST", "/v1/machines/done/actions/kill?wait=false")
        self.assertEqual(status, 202, body)
        killed = self.ended(body["operation"])
        self.assertEqual((killed["status"], killed["state"]), ("succeeded", "stopped"))
        d.kill(signal.SIGKILL)
        d.start()
        for op in (started, killed):
            self.assertEqual(d.request("GET", f"/v1/operations/{op['id']}"), (200, op))
        d.stop()
        d.start()
        self.assertEqual(d.request("GET", f"/v1/operations/{killed['id']}"), (200, killed))
        status, body = d.request("GET", "/v1/operations/op-0123456789abcdef")
        self.assertEqual((status, body["error"]["code"]), (404, "not_found"))
        # Others' operations stay hidden after a restart too.
        status, body = d.request_as(4242, "GET", f"/v1/operations/{killed['id']}")
        self.assertEqual(status, 404, body)


if __name__ == "__main__":
    harness.main()
