"""UEFI VMs: "firmware": "uefi" boots the built-in guest under Debian's OVMF, chosen from QEMU's
firmware descriptors; each VM gets its own copy of the variables store, which goes with the
machine; the BIOS stays the default; specs UEFI cannot run are refused."""
import json
import os

import harness
from harness import DaemonTest, wait_for


class Uefi(DaemonTest):
    def test_uefi_guest_with_its_own_variables(self):
        descriptor = "/usr/share/qemu/firmware/60-edk2-x86_64.json"
        with open(descriptor) as f:
            mapping = json.load(f)["mapping"]
        template = mapping["nvram-template"]["filename"]
        m = self.create("efi", firmware="uefi", memory_mib=256)
        self.assertEqual(m["firmware"], "uefi")
        self.create("efi2", firmware="uefi", memory_mib=256)
        self.assertEqual(self.create("plain")["firmware"], "bios")
        m = self.daemon.action("efi", "start")
        self.daemon.action("efi2", "start")
        self.daemon.action("plain", "start")
        with open(f"/proc/{m['pid']}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        self.assertIn(b"pflash0=fw-code,pflash1=fw-vars", argv)
        self.assertIn(mapping["executable"]["filename"].encode(), b" ".join(argv))
        for name, fw in (("efi", "uefi"), ("efi2", "uefi"), ("plain", "bios")):
            wait_for(lambda: "HANGAR-GUEST-READY" in self.console(name), 120, f"{name}'s boot")
            self.assertIn(f"HANGAR-FIRMWARE: {fw}", self.console(name))
        self.assertIn("efi: EFI v", self.console("efi"))
        # Each UEFI VM has its own variables file, a copy of the template; none for the BIOS.
        vars_of = lambda n: os.path.join(self.state_dir, "machines", n, "uefi-vars.fd")
        for name in ("efi", "efi2"):
            self.assertEqual(os.path.getsize(vars_of(name)), os.path.getsize(template))
        self.assertFalse(os.path.exists(vars_of("plain")))
        self.refused(self.daemon.request("PATCH", "/v1/machines/efi", {"firmware": "bios"}),
                     409, "invalid_state")
        s, _ = self.daemon.request("DELETE", "/v1/machines/efi?force=true")
        self.assertEqual(s, 200)
        self.assertFalse(os.path.exists(vars_of("efi")))
        self.assertTrue(os.path.exists(vars_of("efi2")))
        # The firmware changes while stopped; kept across a restart of hangard.
        self.daemon.action("plain", "kill")
        self.daemon.wait_state("plain", "stopped")
        s, m = self.daemon.request("PATCH", "/v1/machines/plain",
                                   {"firmware": "uefi", "memory_mib": 256})
        self.assertEqual((s, m.get("firmware")), (200, "uefi"), m)
        self.daemon.kill()
        self.daemon.start()
        self.assertEqual(self.daemon.machine("plain")["firmware"], "uefi")

    def test_specs_uefi_cannot_run_are_refused(self):
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "e1", "firmware": "uefi", "memory_mib": 128}),
                     422, "invalid_spec", "256 or more")
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "e1", "firmware": "coreboot"}),
                     422, "invalid_spec", '"bios" or "uefi"')
        s, body = self.daemon.request("POST", "/v1/machines", {"name": "e1", "firmware": 1})
        self.assertEqual(s, 400, body)
        self.refused(self.daemon.request("POST", "/v1/machines",
                                         {"name": "c1", "type": "container", "image": "x",
                                          "firmware": "uefi"}),
                     422, "invalid_spec", "for VMs")
        s, _ = self.daemon.request("GET", "/v1/machines")
        self.assertEqual(s, 200)


if __name__ == "__main__":
    harness.main()
