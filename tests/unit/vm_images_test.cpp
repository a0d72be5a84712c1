// What a file is by its first bytes, what qemu-img info may say of an image, and the -blockdev
// chain of a VM's root disk.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <gtest/gtest.h>

#include "core/images.hpp"
#include "drivers/qemu/argv.hpp"
#include "drivers/qemu/firmware.hpp"

using namespace hangar;

namespace {
// An unnamed file holding `bytes` at `at`, `size` long.
int file_with(const std::string& bytes, off_t at, off_t size = 65536) {
    int fd = ::open("/tmp", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, size), 0);
    EXPECT_EQ(pwrite(fd, bytes.data(), bytes.size(), at), static_cast<ssize_t>(bytes.size()));
    return fd;
}

core::ImageContent detect(const std::string& bytes, off_t at, const std::string& hint,
                          Status* st = nullptr) {
    int fd = file_with(bytes, at);
    core::ImageContent c;
    Status s = core::detect_image_content(fd, hint, c);
    ::close(fd);
    if (st) {
        *st = s;
    }
    return s ? c : core::ImageContent{"error", s.message()};
}
}  // namespace

TEST(ImageContent, ToldByTheFirstBytes) {
    auto kf = [](const core::ImageContent& c) { return c.kind + "/" + c.format; };
    EXPECT_EQ(kf(detect("QFI\xfb", 0, "")), "disk/qcow2");
    EXPECT_EQ(kf(detect("QFI\xfb", 0, "disk")), "disk/qcow2");
    EXPECT_EQ(kf(detect("CD001", 32769, "")), "iso/raw");
    EXPECT_EQ(kf(detect("CD001", 32769, "disk")), "disk/raw");  // a hybrid ISO as a disk
    EXPECT_EQ(kf(detect("hsqs", 0, "")), "rootfs/squashfs");
    EXPECT_EQ(kf(detect("ustar", 257, "")), "rootfs/tar");
    EXPECT_EQ(kf(detect("\x1f\x8b", 0, "rootfs")), "rootfs/tar");
    EXPECT_EQ(kf(detect("\xfd"
                        "7zXZ",
                        0, "")),
              "rootfs/tar");
    EXPECT_EQ(kf(detect("anything", 0, "disk")), "disk/raw");
    EXPECT_EQ(kf(detect("anything", 0, "")), "rootfs/tar");  // tar decides
    Status st;
    detect("anything", 0, "iso", &st);
    EXPECT_EQ(st.code(), Errc::invalid_spec);
    detect("QFI\xfb", 0, "rootfs", &st);
    EXPECT_NE(st.message().find("a qcow2 disk image, not of kind \"rootfs\""), std::string::npos);
    detect("hsqs", 0, "disk", &st);
    EXPECT_EQ(st.code(), Errc::invalid_spec);
    detect("QFI\xfb", 0, "floppy", &st);
    EXPECT_EQ(st.code(), Errc::bad_request);
}

TEST(ImageContent, QemuImgInfoIsChecked) {
    uint64_t size = 0;
    EXPECT_TRUE(core::check_disk_info(
        R"({"virtual-size": 1073741824, "format": "qcow2", "format-specific": {"type": "qcow2",
            "data": {"compat": "1.1"}}})",
        "qcow2", size));
    EXPECT_EQ(size, 1073741824u);
    auto refusal = [](const char* json, const char* format = "qcow2") {
        uint64_t s = 0;
        Status st = core::check_disk_info(json, format, s);
        EXPECT_FALSE(st) << json;
        return st.message();
    };
    EXPECT_NE(refusal(R"({"virtual-size": 1024, "format": "qcow2",
                          "backing-filename": "/etc/shadow"})")
                  .find("backing file (\"/etc/shadow\")"),
              std::string::npos);
    EXPECT_NE(refusal(R"({"virtual-size": 1024, "format": "qcow2",
                          "full-backing-filename": "json:{}"})")
                  .find("backing file"),
              std::string::npos);
    EXPECT_NE(refusal(R"({"virtual-size": 1024, "format": "qcow2", "format-specific":
                          {"type": "qcow2", "data": {"data-file": "x.raw"}}})")
                  .find("external file"),
              std::string::npos);
    EXPECT_NE(refusal(R"({"virtual-size": 109951162777600, "format": "qcow2"})")
                  .find("larger than 64 TiB"),
              std::string::npos);
    EXPECT_NE(refusal(R"({"virtual-size": 1024, "format": "raw"})").find("not qcow2"),
              std::string::npos);
    refusal(R"({"format": "qcow2"})");
    refusal(R"({"virtual-size": 0, "format": "qcow2"})");
    refusal("not json");
}

TEST(QemuArgv, RootDiskChainNodeByNode) {
    MachineSpec spec;
    spec.name = "web";
    spec.uuid = "u";
    qemu::MachinePaths paths("/var/lib/hangar/machines/web");
    qemu::RootDisk root{"/var/lib/hangar/machines/web/root.qcow2",
                        "/var/lib/hangar/images/deb \"12\"/disk.raw", "raw"};
    auto argv = qemu::build_argv({}, spec, paths, 3, {}, root);
    std::vector<std::string> nodes;
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
        if (argv[i] == "-blockdev") {
            nodes.push_back(argv[i + 1]);
        }
    }
    ASSERT_EQ(nodes.size(), 4u);
    EXPECT_EQ(
        nodes[0],
        R"({"driver":"file","node-name":"base0-file","filename":"/var/lib/hangar/images/deb \"12\"/disk.raw","read-only":true})");
    EXPECT_EQ(nodes[1],
              R"({"driver":"raw","node-name":"base0","file":"base0-file","read-only":true})");
    EXPECT_EQ(
        nodes[2],
        R"({"driver":"file","node-name":"root-file","filename":"/var/lib/hangar/machines/web/root.qcow2"})");
    EXPECT_EQ(nodes[3],
              R"({"driver":"qcow2","node-name":"root","file":"root-file","backing":"base0"})");
    EXPECT_NE(std::find(argv.begin(), argv.end(), "virtio-blk-pci,drive=root,id=root,bootindex=1"),
              argv.end());
    // Without a root disk, no -blockdev at all.
    argv = qemu::build_argv({}, spec, paths, 3);
    EXPECT_EQ(std::count(argv.begin(), argv.end(), "-blockdev"), 0);
}

TEST(UefiFirmware, DescriptorsAreReadNotNamesGuessed) {
    auto descriptor = [](const std::string& features, const std::string& machines,
                         const std::string& code = "/usr/share/OVMF/OVMF_CODE_4M.fd") {
        return R"({"interface-types": ["uefi"], "mapping": {"device": "flash",
            "executable": {"filename": ")" +
               code + R"(", "format": "raw"},
            "nvram-template": {"filename": "/usr/share/OVMF/OVMF_VARS_4M.fd", "format": "raw"}},
            "targets": [{"architecture": "x86_64", "machines": [)" +
               machines + R"(]}], "features": [)" + features + "]}";
    };
    if (access("/usr/share/OVMF/OVMF_CODE_4M.fd", R_OK) != 0) {
        GTEST_SKIP() << "Debian's ovmf is not installed";
    }
    qemu::Firmware fw;
    std::string why;
    EXPECT_TRUE(qemu::uefi_descriptor_fits(descriptor(R"("acpi-s3")", R"("pc-q35-*")"), fw, why))
        << why;
    EXPECT_EQ(fw.code, "/usr/share/OVMF/OVMF_CODE_4M.fd");
    EXPECT_EQ(fw.vars_template, "/usr/share/OVMF/OVMF_VARS_4M.fd");
    EXPECT_FALSE(qemu::uefi_descriptor_fits(
        descriptor(R"("requires-smm", "secure-boot")", R"("pc-q35-*")"), fw, why));
    EXPECT_EQ(why, "needs requires-smm");
    EXPECT_FALSE(qemu::uefi_descriptor_fits(descriptor("", R"("pc-i440fx-*")"), fw, why));
    EXPECT_EQ(why, "not for x86_64 q35");
    EXPECT_FALSE(
        qemu::uefi_descriptor_fits(descriptor("", R"("pc-q35-*")", "/nonexistent"), fw, why));
    EXPECT_EQ(why, "its files are missing");
    EXPECT_FALSE(qemu::uefi_descriptor_fits(R"({"interface-types": ["bios"]})", fw, why));
    EXPECT_FALSE(qemu::uefi_descriptor_fits("{", fw, why));
    // Nothing in a directory without descriptors: a clear "unavailable".
    Status st = qemu::find_uefi_firmware({"/nonexistent"}, fw);
    EXPECT_EQ(st.code(), Errc::unavailable);
    EXPECT_NE(st.message().find("install Debian's ovmf"), std::string::npos);
    // Debian's own descriptors pick the plain (no Secure Boot) 4M pair.
    ASSERT_TRUE(qemu::find_uefi_firmware(qemu::kFirmwareDirs, fw));
    EXPECT_EQ(fw.code, "/usr/share/OVMF/OVMF_CODE_4M.fd");
}
