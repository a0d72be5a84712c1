"""Size templates: admins create and delete them, everyone reads them; a create that names one
gets its cpus and memory where the create gives none, and keeps its own copy; they survive a
restart; their events reach every user; hangarctl and bad input."""
import json
import os
import subprocess

import harness
from harness import DaemonTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")
USER = 1001


class Templates(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)  # as /var/lib/hangar: others may reach the socket

    def post(self, body, expect=201):
        s, t = self.daemon.request("POST", "/v1/templates", body)
        self.assertEqual(s, expect, t)
        return t

    def test_admins_make_them_everyone_uses_them(self):
        t = self.post({"name": "small", "cpus": 2, "memory_mib": 512, "disk_gib": 10,
                       "description": "two CPUs"})
        self.assertEqual((t["name"], t["cpus"], t["memory_mib"], t["disk_gib"]),
                         ("small", 2, 512, 10))
        self.assertTrue(t["created_at"].endswith("Z"))
        self.refused(self.daemon.request("POST", "/v1/templates", {"name": "small"}), 409,
                     "conflict", "already exists")
        # A user reads them and may not change them.
        s, lst = self.daemon.request_as(USER, "GET", "/v1/templates")
        self.assertEqual((s, [x["name"] for x in lst["templates"]]), (200, ["small"]))
        s, one = self.daemon.request_as(USER, "GET", "/v1/templates/small")
        self.assertEqual((s, one), (200, t))
        self.refused(self.daemon.request_as(USER, "POST", "/v1/templates", {"name": "mine"}), 403,
                     "forbidden")
        self.refused(self.daemon.request_as(USER, "DELETE", "/v1/templates/small"), 403,
                     "forbidden")

        # A user's create from it: the template's sizes, unless the create names its own.
        s, m = self.daemon.request_as(USER, "POST", "/v1/machines",
                                      {"name": "web1", "template": "small"})
        self.assertEqual(s, 201, m)
        self.created_uuids.append(m["uuid"])
        self.assertEqual((m["cpus"], m["memory_mib"], m["template"], m["owner"]),
                         (2, 512, "small", USER))
        m = self.create("web2", template="small", memory_mib=256)
        self.assertEqual((m["cpus"], m["memory_mib"]), (2, 256))
        m = self.create("plain")
        self.assertNotIn("template", m)
        self.refused(self.daemon.request("PATCH", "/v1/machines/web2", {"template": "x"}), 400,
                     "bad_request", "cannot be changed")
        self.refused(self.daemon.request("POST", "/v1/machines", {"name": "x", "template": "big"}),
                     400, "bad_request", 'no template named "big"')
        self.refused(self.daemon.request("POST", "/v1/machines", {"name": "x", "template": 3}),
                     400, "bad_request", "field 'template' must be a string")

        # Kept across a kill -9; deleting it changes no machine made from it.
        self.daemon.kill()
        self.daemon.start()
        s, again = self.daemon.request("GET", "/v1/templates/small")
        self.assertEqual((s, again), (200, t))
        s, _ = self.daemon.request("DELETE", "/v1/templates/small")
        self.assertEqual(s, 200)
        self.refused(self.daemon.request("GET", "/v1/templates/small"), 404, "not_found")
        self.refused(self.daemon.request("DELETE", "/v1/templates/small"), 404, "not_found")
        m = self.daemon.machine("web1")
        self.assertEqual((m["cpus"], m["memory_mib"], m["template"]), (2, 512, "small"))
        s, metrics = self.daemon.request("GET", "/v1/metrics")
        self.assertIn("\nhangar_templates 0\n", metrics)

    def test_events_reach_every_user(self):
        read = ("import asyncio, json, sys, websockets\n"
                "async def main():\n"
                "    url = 'ws://h/v1/events?types=template.created,template.deleted'\n"
                "    async with websockets.unix_connect(sys.argv[1], url) as ws:\n"
                "        print('open', flush=True)\n"
                "        for _ in range(2):\n"
                "            e = json.loads(await asyncio.wait_for(ws.recv(), 20))\n"
                "            print(e['type'], json.dumps(e['data']), flush=True)\n"
                "asyncio.run(main())\n")
        reader = subprocess.Popen(["setpriv", f"--reuid={USER}", "--regid=0", "--clear-groups",
                                   "/usr/bin/python3", "-c", read, self.daemon.socket],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            self.assertEqual(reader.stdout.readline().strip(), "open")
            t = self.post({"name": "tiny", "memory_mib": 64})
            s, _ = self.daemon.request("DELETE", "/v1/templates/tiny")
            self.assertEqual(s, 200)
            out, err = reader.communicate(timeout=30)
        finally:
            if reader.poll() is None:
                reader.kill()
                reader.wait()
        lines = out.splitlines()
        self.assertEqual(len(lines), 2, (out, err))
        self.assertEqual(lines[0].split(" ", 1), ["template.created", json.dumps(t)])
        self.assertEqual(lines[1], 'template.deleted {"template": "tiny"}')

    def test_bad_input(self):
        for body, code in [
                ({"name": "../x"}, "invalid_name"),
                ({"name": "a b"}, "invalid_name"),
                ({"name": "a" * 300}, "invalid_name"),
                ({"cpus": 2}, "bad_request"),
                ({"name": "s", "cpus": 0.5}, "bad_request"),
                ({"name": "s", "cpus": -1}, "bad_request"),
                ({"name": "s", "cpus": 65}, "bad_request"),
                ({"name": "s", "memory_mib": 4}, "bad_request"),
                ({"name": "s", "disk_gib": 10 ** 9}, "bad_request"),
                ({"name": "s", "ram": 1}, "bad_request"),
                ({"name": "s", "description": "x" * 2000}, "bad_request")]:
            self.refused(self.daemon.request("POST", "/v1/templates", body), 400, code)
        self.refused(self.daemon.request("POST", "/v1/templates", raw='{"name": "s",'), 400,
                     "invalid_json")
        self.refused(self.daemon.request("POST", "/v1/templates", raw="x" * (2 << 20)), 413,
                     "too_large")
        self.refused(self.daemon.request("GET", "/v1/templates/..%2Fx"), 400, "invalid_name")
        s, lst = self.daemon.request("GET", "/v1/templates")
        self.assertEqual((s, lst), (200, {"templates": []}))

    def test_hangarctl(self):
        def ctl(*args, expect=0):
            out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket] + list(args),
                                 capture_output=True, text=True, timeout=60)
            self.assertEqual(out.returncode, expect, (args, out.stdout, out.stderr))
            return out.stdout, out.stderr

        ctl("template", "create", "medium", "--cpus", "2", "--memory", "1024", "--disk", "20",
            "--description", "for web")
        out, _ = ctl("template", "list")
        self.assertEqual(out.splitlines()[0].split(),
                         ["NAME", "CPUS", "MEMORY_MIB", "DISK_GIB", "DESCRIPTION"])
        self.assertEqual(out.splitlines()[1].split(), ["medium", "2", "1024", "20", "for", "web"])
        self.assertEqual(json.loads(ctl("template", "show", "medium")[0])["memory_mib"], 1024)
        out, _ = ctl("create", "api", "--template", "medium", "--cpus", "1")
        self.assertIn("template:     medium", out)
        m = self.daemon.machine("api")
        self.created_uuids.append(m["uuid"])
        self.assertEqual((m["cpus"], m["memory_mib"]), (1, 1024))
        _, err = ctl("template", "create", "medium", expect=1)
        self.assertIn("already exists", err)
        ctl("template", "delete", "medium")
        _, err = ctl("template", "show", "medium", expect=1)
        self.assertIn("no template named", err)
        ctl("template", "frobnicate", expect=2)


if __name__ == "__main__":
    harness.main()
