"""GET /v1/machines at scale: pages in name order (`limit`, `after`, `next`) that add up to
the whole list for each caller, filters before paging, the compact form (the same values as
the full one, fewer fields), and bad paging arguments refused with a 400 that says why."""
import os
import subprocess

import harness
from harness import DaemonTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")
COMPACT = {"name", "type", "state", "state_reason", "unresponsive", "owner", "pid"}


class MachineList(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)  # others may reach the socket

    def pages(self, query, limit, request=None):
        request = request or self.daemon.request
        names, after, revisions = [], None, []
        while True:
            path = f"/v1/machines?limit={limit}{query}" + (f"&after={after}" if after else "")
            s, page = request("GET", path)
            self.assertEqual(s, 200, page)
            self.assertLessEqual(len(page["machines"]), limit)
            names += [m["name"] for m in page["machines"]]
            revisions.append(page["revision"])
            after = page["next"]
            if after is None:
                return names, revisions
            self.assertEqual(after, page["machines"][-1]["name"])

    def test_pages_add_up_to_the_list(self):
        mine = ["b-7", "a1", "c0", "a10", "z", "a2", "m-m"]
        for n in mine:
            self.create(n)
        s, other = self.daemon.request_as(1001, "POST", "/v1/machines", {"name": "a3"})
        self.assertEqual(s, 201, other)
        self.created_uuids.append(other["uuid"])
        s, full = self.daemon.request("GET", "/v1/machines")
        self.assertEqual(s, 200)
        everyone = sorted(mine + ["a3"])
        self.assertEqual([m["name"] for m in full["machines"]], everyone)
        self.assertIsNone(full["next"])
        for limit in (1, 2, 3, 8, 1000):
            names, revisions = self.pages("", limit)
            self.assertEqual(names, everyone, limit)
            self.assertEqual(set(revisions), {full["revision"]})
        # Each caller pages through what it may see.
        names, _ = self.pages("", 1, lambda m, p: self.daemon.request_as(1001, m, p))
        self.assertEqual(names, ["a3"])
        # `after` need not exist; filters apply before paging.
        s, page = self.daemon.request("GET", "/v1/machines?limit=2&after=a100")
        self.assertEqual(([m["name"] for m in page["machines"]], page["next"]),
                         (["a2", "a3"], "a3"))
        self.daemon.action("c0", "start")
        self.daemon.action("a2", "start")
        names, _ = self.pages("&state=running", 1)
        self.assertEqual(names, ["a2", "c0"])
        s, page = self.daemon.request("GET", "/v1/machines?limit=5&after=z")
        self.assertEqual((page["machines"], page["next"]), ([], None))
        # Pages follow every change at once (deleted, created, state).
        self.assertEqual(self.daemon.request("DELETE", "/v1/machines/a10")[0], 200)
        self.create("a11")
        names, _ = self.pages("", 2)
        self.assertEqual(names, sorted(set(everyone) - {"a10"} | {"a11"}))
        self.daemon.action("a2", "stop")
        names, _ = self.pages("&state=running", 2)
        self.assertEqual(names, ["c0"])
        self.daemon.action("a2", "start")
        everyone = sorted(set(everyone) - {"a10"} | {"a11"})

        # The compact form: the full form's values, for fewer fields.
        s, compact = self.daemon.request("GET", "/v1/machines?fields=compact")
        self.assertEqual(s, 200)
        self.assertEqual(compact["revision"], self.daemon.request("GET", "/v1")[1]["revision"])
        s, full = self.daemon.request("GET", "/v1/machines")
        self.assertEqual(len(compact["machines"]), len(everyone))
        for c, f in zip(compact["machines"], full["machines"]):
            self.assertEqual(set(c), COMPACT | ({"operation"} if "operation" in f else set()))
            self.assertEqual(c, {k: f[k] for k in c})
        self.assertGreater(compact["machines"][everyone.index("c0")]["pid"], 0)
        s, page = self.daemon.request("GET", "/v1/machines?fields=compact&limit=3&after=a1")
        self.assertEqual([m["name"] for m in page["machines"]], ["a11", "a2", "a3"])
        self.assertEqual(set(page["machines"][0]), COMPACT)

        # hangarctl pages too, and says where the next page starts.
        out = subprocess.run([HANGARCTL, "--socket", self.daemon.socket, "list", "--limit", "2",
                              "--after", "a1"], capture_output=True, text=True)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual([line.split()[0] for line in out.stdout.splitlines()[1:]],
                         ["a11", "a2"])
        self.assertEqual(out.stderr, "more: hangarctl list --after a2\n")

    def test_bad_paging_arguments(self):
        for query, code, word in [("limit=0", "bad_request", "limit"),
                                  ("limit=1001", "bad_request", "limit"),
                                  ("limit=-1", "bad_request", "limit"),
                                  ("limit=", "bad_request", "limit"),
                                  ("limit=1e3", "bad_request", "limit"),
                                  ("limit=99999999999999999999", "bad_request", "limit"),
                                  ("after=..%2fx", "invalid_name", "after"),
                                  ("after=", "invalid_name", "after"),
                                  ("fields=all", "bad_request", "fields")]:
            s, body = self.daemon.request("GET", "/v1/machines?" + query)
            self.assertEqual((s, body["error"]["code"]), (400, code), query)
            self.assertIn(word, body["error"]["message"], query)


if __name__ == "__main__":
    harness.main()
