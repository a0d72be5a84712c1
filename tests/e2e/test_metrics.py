"""GET /v1/metrics: Prometheus text format that promtool accepts, with the figures that
matter (machines by state, events, subscribers, requests, latencies)."""
import os
import re
import subprocess

import harness
from imageserver import make_busybox_rootfs_tar
from harness import DaemonTest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Metrics(DaemonTest):
    qemu = harness.FAKE_QEMU

    def test_metrics_are_valid_and_true(self):
        d = self.daemon
        tarball = os.path.join(self.state_dir, "rootfs.tar.gz")
        make_busybox_rootfs_tar(tarball, "gz")
        junk = os.path.join(self.state_dir, "junk.tar")
        with open(junk, "wb") as f:
            f.write(b"not a tar archive" * 100)
        for name, path in (("img", tarball), ("bad", junk)):
            d.request("POST", "/v1/images?wait=true", {"name": name, "source": {
                "type": "file", "path": path}})
        self.create("m1")
        self.create("m2")
        d.action("m1", "start")
        d.action("m1", "pause")
        d.request("GET", "/v1/nothing")
        d.request("GET", "/v1/machines/nothere")
        status, text = d.request("GET", "/v1/metrics")
        self.assertEqual(status, 200)
        promtool = subprocess.run([os.path.join(ROOT, "scripts", "fetch-promtool.sh")],
                                  capture_output=True, text=True, check=True).stdout.strip()
        check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                               text=True)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)

        def value(pattern):
            m = re.search("^" + pattern + r" ([0-9.e+-]+)$", text, re.M)
            self.assertIsNotNone(m, pattern)
            return float(m.group(1))

        self.assertEqual(value(r'hangar_machines\{state="paused",type="vm"\}'), 1)
        self.assertEqual(value(r'hangar_machines\{state="stopped",type="vm"\}'), 1)
        self.assertEqual(value(r'hangar_machines\{state="running",type="vm"\}'), 0)
        status, lst = d.request("GET", "/v1/machines")
        self.assertEqual(value("hangar_events_total"), lst["revision"])
        self.assertEqual(value(
            r'hangar_api_requests_total\{route="/v1/machines/\{name\}/actions/\{action\}",'
            r'method="POST",code="200"\}'), 2)
        self.assertEqual(value(r'hangar_api_requests_total\{route="unmatched",method="",'
                               r'code="404"\}'), 1)
        self.assertEqual(value(r'hangar_api_requests_total\{route="/v1/machines/\{name\}",'
                               r'method="GET",code="404"\}'), 1)
        self.assertGreaterEqual(value("hangar_qmp_command_duration_seconds_count"), 3)
        self.assertEqual(value("hangar_event_subscribers"), 0)
        self.assertIn('hangar_build_info{version="', text)
        self.assertEqual(value("hangar_images"), 1)
        self.assertEqual(value("hangar_image_pulls_running"), 0)
        self.assertEqual(value(r'hangar_image_pulls_total\{result="succeeded"\}'), 1)
        self.assertEqual(value(r'hangar_image_pulls_total\{result="failed"\}'), 1)

    def test_metrics_are_for_admins(self):
        os.chmod(self.state_dir, 0o711)
        out = subprocess.run(["setpriv", "--reuid=1001", "--regid=0", "--clear-groups", "curl",
                              "-s", "-o", "/dev/null", "-w", "%{http_code}", "--unix-socket",
                              self.daemon.socket, "http://h/v1/metrics"],
                             capture_output=True, text=True)
        self.assertEqual(out.stdout, "403")


if __name__ == "__main__":
    harness.main()
