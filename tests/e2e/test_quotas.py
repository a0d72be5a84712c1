"""Quotas: a non-admin owner is held to hangard's --quota-* limits (machines, vCPUs and memory of
all its machines, images, disk), at create and at PATCH, with a message naming the limit, the use
and the option; root and the admin group are not; nobody gets a machine bigger than the host.
GET /v1 shows the caller's quota and use; hangarctl and D-Bus CreateMachine get the same
answers."""
import os
import socket
import subprocess
import unittest

import harness
from harness import DaemonTest
from imageserver import make_busybox_rootfs_tar
from test_dbus import BusTest

HANGARCTL = os.environ.get("HANGARCTL", "build/hangarctl")

ADMIN_GROUP = "adm"  # exists on Debian; used as the admin group, nothing is changed on the host
ADMIN_GID = 4
HOST_CPUS = os.sysconf("SC_NPROCESSORS_ONLN")
HOST_MIB = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") >> 20


class UserTest(DaemonTest):
    qemu = harness.FAKE_QEMU

    def setUp(self):
        super().setUp()
        os.chmod(self.state_dir, 0o711)  # as /var/lib/hangar: others may reach the socket

    def as_user(self, uid, method, path, body=None, groups=()):
        return self.daemon.request_as(uid, method, path, body, groups)

    def create_as(self, uid, name, groups=(), **spec):
        s, m = self.as_user(uid, "POST", "/v1/machines", {"name": name, **spec}, groups)
        if s == 201:
            self.created_uuids.append(m["uuid"])
        return s, m

    def assert_refused(self, answer, message, status=409, code="conflict"):
        s, body = answer
        self.assertEqual((s, (body or {}).get("error", {}).get("code")), (status, code), body)
        self.assertIn(message, body["error"]["message"])

    def tarball(self, uid, name="rootfs.tar.gz"):
        path = os.path.join(self.state_dir, name)
        make_busybox_rootfs_tar(path, "gz")
        os.chown(path, uid, 0)
        return {"type": "file", "path": path}


class Quotas(UserTest):
    extra = ("--admin-group", ADMIN_GROUP, "--quota-machines", "3", "--quota-cpus", "4",
             "--quota-memory-mib", "1024", "--quota-images", "1")

    def setUp(self):
        # A server that accepts connections and never answers (a pull from it stays in flight),
        # configured as a remote so that users may pull from it.
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(8)
        self.silent_url = f"http://127.0.0.1:{self.silent.getsockname()[1]}"
        self.extra = self.extra + ("--image-remote", f"silent={self.silent_url}")
        super().setUp()

    def tearDown(self):
        super().tearDown()
        self.silent.close()

    def test_machine_count(self):
        for n in ("m1", "m2", "m3"):
            self.assertEqual(self.create_as(1001, n)[0], 201)
        self.assert_refused(self.create_as(1001, "m4"),
                            "uid 1001 would own 4 machines; the quota is 3 (--quota-machines)")
        # Per owner: another user has a quota of their own.
        self.assertEqual(self.create_as(1002, "o1")[0], 201)
        s, info = self.as_user(1001, "GET", "/v1")
        self.assertEqual(info["quota"]["machines"], {"limit": 3, "used": 3})
        self.assertEqual(info["quota"]["vcpus"], {"limit": 4, "used": 3})
        self.assertEqual(info["quota"]["memory_mib"], {"limit": 1024, "used": 3 * 128})
        self.assertFalse(info["quota"]["exempt"])
        self.assertEqual(info["host"], {"cpus": HOST_CPUS, "memory_mib": HOST_MIB})
        # hangarctl gets the same answer (exit status 1, the message).
        out = subprocess.run(["setpriv", "--reuid=1001", "--regid=0", "--clear-groups", HANGARCTL,
                              "--socket", self.daemon.socket, "create", "m4"],
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(out.returncode, 1, out)
        self.assertIn("the quota is 3 (--quota-machines)", out.stderr + out.stdout)
        # A deleted machine frees its place.
        self.assertEqual(self.as_user(1001, "DELETE", "/v1/machines/m3")[0], 200)
        self.assertEqual(self.create_as(1001, "m4")[0], 201)

    @unittest.skipIf(HOST_CPUS < 2, "needs a host with 2 CPUs")
    def test_vcpus_and_memory_count_stopped_and_running_machines(self):
        self.assertEqual(self.create_as(1001, "c1", cpus=2, memory_mib=512)[0], 201)
        s, m = self.as_user(1001, "POST", "/v1/machines/c1/actions/start")
        self.assertEqual((s, m["state"]), (200, "running"))
        self.assertEqual(self.create_as(1001, "c2", cpus=2, memory_mib=256)[0], 201)
        self.assert_refused(self.create_as(1001, "c3"),
                            "uid 1001 would use 5 vCPUs; the quota is 4 (--quota-cpus)")
        self.assertEqual(self.as_user(1001, "DELETE", "/v1/machines/c2")[0], 200)
        self.assertEqual(self.create_as(1001, "c2", cpus=1, memory_mib=256)[0], 201)
        self.assert_refused(self.create_as(1001, "c4", memory_mib=512),
                            "uid 1001 would use 1280 MiB of memory; the quota is 1024 "
                            "(--quota-memory-mib)")

    @unittest.skipIf(HOST_CPUS < 2, "needs a host with 2 CPUs")
    def test_patch_over_quota_is_refused(self):
        self.assertEqual(self.create_as(1001, "p1", cpus=1, memory_mib=256)[0], 201)
        self.assertEqual(self.create_as(1001, "p2", cpus=1, memory_mib=256)[0], 201)
        self.assertEqual(self.create_as(1001, "p3", cpus=1, memory_mib=256)[0], 201)
        s, m = self.as_user(1001, "PATCH", "/v1/machines/p1", {"cpus": 2})
        self.assertEqual((s, m.get("cpus")), (200, 2), m)
        # Its own old size is replaced, not added to: the same value again passes at the limit.
        s, m = self.as_user(1001, "PATCH", "/v1/machines/p1", {"cpus": 2, "memory_mib": 512})
        self.assertEqual(s, 200, m)
        self.assert_refused(self.as_user(1001, "PATCH", "/v1/machines/p2", {"cpus": 2}),
                            "uid 1001 would use 5 vCPUs; the quota is 4 (--quota-cpus)")
        self.assert_refused(self.as_user(1001, "PATCH", "/v1/machines/p2", {"memory_mib": 512}),
                            "uid 1001 would use 1280 MiB of memory; the quota is 1024 "
                            "(--quota-memory-mib)")
        # Root changing the user's machine is held to the owner's quota too.
        s, body = self.daemon.request("PATCH", "/v1/machines/p2", {"memory_mib": 512})
        self.assertEqual((s, body["error"]["code"]), (409, "conflict"), body)
        # Shrinking is always allowed.
        s, m = self.as_user(1001, "PATCH", "/v1/machines/p1", {"memory_mib": 128})
        self.assertEqual(s, 200, m)
        self.assertEqual(self.daemon.machine("p2")["memory_mib"], 256)

    def test_root_and_admins_are_exempt_but_not_from_the_host(self):
        for i in range(5):
            self.create(f"r{i}", cpus=HOST_CPUS, memory_mib=512)
        s, info = self.daemon.request("GET", "/v1")
        self.assertTrue(info["quota"]["exempt"])
        self.assertEqual(info["quota"]["machines"], {"limit": 3, "used": 5})
        for i in range(4):
            self.assertEqual(self.create_as(1003, f"a{i}", groups=[ADMIN_GID])[0], 201)
        # The host's bound holds for everyone, at create and at PATCH.
        self.assert_refused(self.daemon.request("POST", "/v1/machines",
                                                {"name": "big", "cpus": HOST_CPUS + 1}),
                            f"cpus {HOST_CPUS + 1} is more than this host's {HOST_CPUS} online "
                            "CPUs", 422, "invalid_spec")
        self.assert_refused(self.daemon.request("POST", "/v1/machines",
                                                {"name": "big", "memory_mib": HOST_MIB + 1}),
                            f"is more than this host's {HOST_MIB} MiB of memory", 422,
                            "invalid_spec")
        self.assert_refused(self.daemon.request("PATCH", "/v1/machines/r0",
                                                {"cpus": HOST_CPUS + 1}),
                            "online CPUs", 422, "invalid_spec")
        self.assert_refused(self.create_as(1001, "big", cpus=HOST_CPUS + 1),
                            "online CPUs", 422, "invalid_spec")

    def test_images(self):
        src = self.tarball(1001)
        s, img = self.as_user(1001, "POST", "/v1/images?wait=true", {"name": "i1", "source": src})
        self.assertEqual((s, img.get("owner")), (201, 1001), img)
        self.assert_refused(
            self.as_user(1001, "POST", "/v1/images?wait=true", {"name": "i2", "source": src}),
            "uid 1001 would have 2 images (pulls in flight included); the quota is 1 "
            "(--quota-images)")
        s, info = self.as_user(1001, "GET", "/v1")
        self.assertEqual(info["quota"]["images"], {"limit": 1, "used": 1})
        self.assertEqual(info["quota"]["disk_bytes"]["used"], img["size"])
        # Root is not limited.
        s, img = self.daemon.request("POST", "/v1/images?wait=true",
                                     {"name": "r1", "source": src})
        self.assertEqual(s, 201, img)
        s, img = self.daemon.request("POST", "/v1/images?wait=true",
                                     {"name": "r2", "source": src})
        self.assertEqual(s, 201, img)
        # Deleting frees the place.
        self.assertEqual(self.as_user(1001, "DELETE", "/v1/images/i1")[0], 200)
        s, img = self.as_user(1001, "POST", "/v1/images?wait=true", {"name": "i2", "source": src})
        self.assertEqual(s, 201, img)

    def test_pulls_in_flight_count(self):
        s, op = self.as_user(1001, "POST", "/v1/images", {"name": "slow", "source": {
            "type": "simplestreams", "server": "silent", "alias": "busybox/1.36"}})
        self.assertIn(s, (201, 202), op)
        s, info = self.as_user(1001, "GET", "/v1")
        self.assertEqual(info["quota"]["images"], {"limit": 1, "used": 1})
        self.assertEqual(self.as_user(1002, "GET", "/v1")[1]["quota"]["images"]["used"], 0)
        self.assert_refused(
            self.as_user(1001, "POST", "/v1/images?wait=true",
                         {"name": "i1", "source": self.tarball(1001)}),
            "uid 1001 would have 2 images (pulls in flight included); the quota is 1")


class DiskQuota(UserTest):
    extra = ("--quota-disk-gib", "0")

    def test_images_and_containers_count_on_disk(self):
        src = self.tarball(1001)
        self.assert_refused(
            self.as_user(1001, "POST", "/v1/images?wait=true", {"name": "u1", "source": src}),
            "uid 1001 uses 0 bytes of disk; the quota is 0 (--quota-disk-gib)")
        s, img = self.daemon.request("POST", "/v1/images?wait=true",
                                     {"name": "base", "source": src})
        self.assertEqual(s, 201, img)
        # A container's root file system is a copy of its image: it counts for its owner.
        self.assert_refused(self.create_as(1001, "ct", type="container", image="base"),
                            f"uid 1001 would use {img['size']} bytes of disk; the quota is 0 "
                            "(--quota-disk-gib)")
        s, info = self.as_user(1001, "GET", "/v1")
        self.assertEqual(info["quota"]["disk_bytes"], {"limit": 0, "used": 0})
        # VMs use no disk of hangard's.
        self.assertEqual(self.create_as(1001, "vm")[0], 201)
        self.create("rootct", type="container", image="base")
        s, info = self.daemon.request("GET", "/v1")
        self.assertEqual(info["quota"]["disk_bytes"]["used"], 2 * img["size"])


class DiskVolumeQuota(UserTest):
    extra = ("--quota-disk-gib", "2")

    def test_disks_count_at_their_size(self):
        gib = 1 << 30
        s, d = self.as_user(1001, "POST", "/v1/disks", {"name": "u-one", "size_gib": 1})
        self.assertEqual(s, 201, d)
        # Grown to the quota: allowed; past it: refused, the disk as it was.
        s, d = self.as_user(1001, "PATCH", "/v1/disks/u-one", {"size_gib": 2})
        self.assertEqual(s, 200, d)
        self.assert_refused(self.as_user(1001, "PATCH", "/v1/disks/u-one", {"size_gib": 3}),
                            f"uid 1001 would use {3 * gib} bytes of disk; the quota is {2 * gib} "
                            "(--quota-disk-gib)")
        self.assert_refused(self.as_user(1001, "POST", "/v1/disks",
                                         {"name": "u-two", "size_gib": 1}),
                            f"uid 1001 would use {3 * gib} bytes of disk; the quota is {2 * gib}")
        # A copy counts like a new disk.
        self.assert_refused(self.as_user(1001, "POST", "/v1/disks",
                                         {"name": "u-copy", "source": {"disk": "u-one"}}),
                            f"uid 1001 would use {4 * gib} bytes of disk")
        s, info = self.as_user(1001, "GET", "/v1")
        self.assertEqual(info["quota"]["disk_bytes"], {"limit": 2 * gib, "used": 2 * gib})
        self.assertEqual(self.as_user(1001, "GET", "/v1/disks/u-one")[1]["size_bytes"], 2 * gib)
        self.assertEqual(self.as_user(1001, "GET", "/v1/disks/u-two")[0], 404)
        # Root is exempt; deleting frees the use.
        s, _ = self.daemon.request("POST", "/v1/disks", {"name": "r-big", "size_gib": 8})
        self.assertEqual(s, 201)
        s, _ = self.as_user(1001, "DELETE", "/v1/disks/u-one")
        self.assertEqual(s, 200)
        s, d = self.as_user(1001, "POST", "/v1/disks", {"name": "u-two", "size_gib": 2})
        self.assertEqual(s, 201, d)


class DBusFace(BusTest):
    """D-Bus serves root and admins only (others are refused before the core): the host's bound
    holds there too."""

    def test_create_machine_bigger_than_the_host(self):
        out = self.busctl("call", "org.hangar", "/org/hangar", "org.hangar.Manager1",
                          "CreateMachine", "sa{sv}", "big", "1", "cpus", "u", str(HOST_CPUS + 1),
                          check=False)
        self.assertNotEqual(out.returncode, 0)
        self.assertIn(f"is more than this host's {HOST_CPUS} online CPUs", out.stderr)
        self.assertEqual(self.daemon.request("GET", "/v1/machines/big")[0], 404)


if __name__ == "__main__":
    harness.main()
