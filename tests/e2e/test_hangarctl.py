"""hangarctl against a real hangard (fake QEMU): every command, table and --json output, and
the exit codes (0 success, 1 API error, 2 usage error)."""
import json
import os
import subprocess

import harness
from harness import DaemonTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")


class Hangarctl(DaemonTest):
    qemu = harness.FAKE_QEMU

    def ctl(self, *args, expect=0, env=None):
        cmd = [HANGARCTL, "--socket", self.daemon.socket] + list(args)
        if env is not None:
            cmd = [HANGARCTL] + list(args)
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                             env={**os.environ, **(env or {})})
        self.assertEqual(out.returncode, expect, (args, out.stdout, out.stderr))
        return out.stdout, out.stderr

    def test_commands_and_outputs(self):
        out, _ = self.ctl("info")
        self.assertIn("accelerator:", out)
        self.assertIn("(admin)", out)
        self.assertEqual(json.loads(self.ctl("--json", "info")[0])["auth"]["uid"], 0)

        out, _ = self.ctl("create", "demo", "--cpus", "2", "--memory", "256",
                          "--description", "a demo")
        self.assertIn("demo", out)
        m = json.loads(self.ctl("--json", "show", "demo")[0])
        self.assertEqual((m["cpus"], m["memory_mib"], m["description"]), (2, 256, "a demo"))
        self.created_uuids.append(m["uuid"])
        out, _ = self.ctl("show", "demo")
        self.assertIn("state:        stopped", out)

        out, _ = self.ctl("start", "demo")
        self.assertEqual(out, "demo: running (qmp:RESUME)\n")
        self.assertEqual(self.ctl("pause", "demo")[0], "demo: paused (qmp:STOP)\n")
        self.assertEqual(json.loads(self.ctl("--json", "resume", "demo")[0])["state"], "running")
        out, _ = self.ctl("restart", "demo", "--reset")
        self.assertIn("running", out)
        out, _ = self.ctl("restart", "demo", "--timeout", "5")
        self.assertIn("running", out)

        out, _ = self.ctl("list")
        self.assertTrue(out.startswith("NAME"))
        self.assertIn("demo", out)
        self.assertIn("running", out)
        lst = json.loads(self.ctl("--json", "list", "--state", "running")[0])
        self.assertEqual([x["name"] for x in lst["machines"]], ["demo"])
        self.assertEqual(json.loads(self.ctl("--json", "list", "--state", "paused")[0])["machines"], [])

        out, _ = self.ctl("console-log", "demo")
        out, _ = self.ctl("console-log", "demo", "--tail", "10")

        _, err = self.ctl("delete", "demo", expect=1)
        self.assertIn("stop it first", err)
        self.assertIn("stopped", self.ctl("stop", "demo", "--timeout", "5")[0])
        self.ctl("start", "demo")
        self.assertEqual(self.ctl("kill", "demo")[0], "demo: stopped (api:kill)\n")
        self.ctl("delete", "demo")
        _, err = self.ctl("show", "demo", expect=1)
        self.assertIn("no machine named demo", err)

    def test_events_tail(self):
        self.ctl("create", "ev")
        self.ctl("start", "ev")
        self.ctl("stop", "ev")
        p = subprocess.Popen([HANGARCTL, "--socket", self.daemon.socket, "events", "--since", "0"],
                             stdout=subprocess.PIPE, text=True)
        lines = [p.stdout.readline() for _ in range(5)]
        p.kill()
        p.wait()
        self.assertIn("machine.created  ev", lines[0])
        self.assertIn("stopped -> starting (api:start)", lines[1])
        self.assertIn("starting -> running (qmp:RESUME)", lines[2])
        p = subprocess.Popen([HANGARCTL, "--socket", self.daemon.socket, "--json", "events",
                              "--since", "0", "--types", "machine.state"],
                             stdout=subprocess.PIPE, text=True)
        first = json.loads(p.stdout.readline())
        p.kill()
        p.wait()
        self.assertEqual((first["type"], first["data"]["to"]), ("machine.state", "starting"))
        _, err = self.ctl("events", "--types", "machine.bogus", expect=1)
        self.assertIn("unknown event type", err)

    def test_tokens_and_https(self):
        token = self.ctl("token", "create", "cli")[0].strip()
        self.assertTrue(token.startswith("hgr_") and len(token) == 68, token)
        j = json.loads(self.ctl("--json", "token", "create", "cli2")[0])
        self.assertEqual(sorted(j), ["name", "token"])
        out, _ = self.ctl("token", "list")
        self.assertIn("cli2", out)
        self.ctl("create", "remote")
        url = self.daemon.url
        remote = [HANGARCTL, "--url", url, "--token", token, "--insecure"]
        out = subprocess.run(remote + ["list"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertIn("remote", out.stdout)
        out = subprocess.run(remote + ["start", "remote"], capture_output=True, text=True)
        self.assertEqual(out.stdout, "remote: running (qmp:RESUME)\n", out.stderr)
        self.created_uuids.append(json.loads(self.ctl("--json", "show", "remote")[0])["uuid"])
        p = subprocess.Popen(remote + ["events", "--since", "0"], stdout=subprocess.PIPE, text=True)
        first = p.stdout.readline()
        p.kill()
        p.wait()
        self.assertIn("machine.created  remote", first)
        # The self-signed certificate is refused unless --insecure.
        out = subprocess.run([HANGARCTL, "--url", url, "--token", token, "list"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn("--insecure", out.stderr)
        out = subprocess.run(remote + ["token", "create", "x"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn("unix socket only", out.stderr)
        out = subprocess.run([HANGARCTL, "--url", url, "list"], capture_output=True, text=True,
                             env={k: v for k, v in os.environ.items() if k != "HANGAR_TOKEN"})
        self.assertEqual(out.returncode, 2)
        self.ctl("token", "revoke", "cli")
        out = subprocess.run(remote + ["list"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn("not valid", out.stderr)
        # HANGAR_URL + HANGAR_TOKEN work like the flags.
        out = subprocess.run([HANGARCTL, "--insecure", "info"], capture_output=True, text=True,
                             env={**os.environ, "HANGAR_URL": url, "HANGAR_TOKEN": j["token"]})
        self.assertEqual(out.returncode, 0, out.stderr)
        self.ctl("token", "revoke", "nothere", expect=1)
        self.ctl("token", "frob", expect=2)

    def test_exit_codes(self):
        self.ctl(expect=2)
        self.ctl("frobnicate", expect=2)
        self.ctl("create", expect=2)
        self.ctl("create", "x", "--cpus", "many", expect=2)
        self.ctl("start", "a", "b", expect=2)
        self.ctl("list", "--colour", "red", expect=2)
        self.ctl("events", "--since", "-3", expect=2)
        _, err = self.ctl("create", "../x", expect=1)
        self.assertIn("invalid", err)
        _, err = self.ctl("create", "big", "--memory", "1", expect=1)
        self.assertIn("memory_mib must be between", err)
        _, err = self.ctl("start", "nothere", expect=1)
        self.assertIn("no machine named nothere", err)
        out = subprocess.run([HANGARCTL, "--socket", "/nonexistent/x.sock", "list"],
                             capture_output=True, text=True)
        self.assertEqual(out.returncode, 1)
        self.assertIn("cannot connect to hangard", out.stderr)
        # HANGAR_SOCKET names the socket too.
        out, _ = self.ctl("info", env={"HANGAR_SOCKET": self.daemon.socket})
        self.assertIn("version:", out)
        self.assertEqual(self.ctl("--help")[1], "")


if __name__ == "__main__":
    harness.main()
