// Files opened as a user (util/user_files): the user's rights decide, one error for missing and
// unreadable, non-regular files refused without being opened, the thread's identity restored;
// QEMU's command line for descriptors; what a qcow2 header says about other files.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "drivers/qemu/argv.hpp"
#include "util/user_files.hpp"

namespace fs = std::filesystem;
using namespace hangar;

namespace {

constexpr uid_t kUser = 4242;  // no passwd entry: nogroup, no other group

struct TempDir {
    fs::path dir;
    TempDir() {
        char tmpl[] = "/tmp/hangar-user-files-test-XXXXXX";
        dir = mkdtemp(tmpl);
        chmod(dir.c_str(), 0755);
    }
    ~TempDir() { fs::remove_all(dir); }
    std::string file(const std::string& name, mode_t mode, uid_t owner) const {
        auto p = dir / name;
        std::ofstream(p) << "data";
        chmod(p.c_str(), mode);
        if (chown(p.c_str(), owner, owner) != 0) {
            ADD_FAILURE() << "chown " << p;
        }
        return p.string();
    }
};

bool root() {
    return geteuid() == 0;
}

}  // namespace

TEST(UserFiles, TheUsersRightsDecideAndTheThreadIsRestored) {
    if (!root()) {
        GTEST_SKIP() << "needs root to act as another uid";
    }
    TempDir t;
    std::string mine = t.file("mine", 0600, kUser);
    std::string roots = t.file("roots", 0600, 0);
    FileAccess user{kUser, false};
    OpenedFile f;
    ASSERT_TRUE(open_user_file("boot.disk", mine, user, true, 1 << 20, f));
    EXPECT_GE(f.fd.get(), 0);
    EXPECT_EQ(f.st.st_uid, kUser);
    // Read-write asked, read-write given.
    EXPECT_EQ(fcntl(f.fd.get(), F_GETFL) & O_ACCMODE, O_RDWR);

    OpenedFile g;
    Status denied = open_user_file("boot.disk", roots, user, false, 1 << 20, g);
    Status missing = open_user_file("boot.disk", t.dir / "nope", user, false, 1 << 20, g);
    ASSERT_FALSE(denied);
    ASSERT_FALSE(missing);
    EXPECT_EQ(denied.code(), missing.code());
    std::string a = denied.message(), b = missing.message();
    a.replace(a.find(roots), roots.size(), "P");
    std::string nope = (t.dir / "nope").string();
    b.replace(b.find(nope), nope.size(), "P");
    EXPECT_EQ(a, b);
    // A symlink is followed with the user's rights.
    fs::create_symlink(roots, t.dir / "link");
    EXPECT_FALSE(open_user_file("boot.disk", (t.dir / "link").string(), user, false, 1 << 20, g));
    // As the daemon (root, admins), the same paths open.
    EXPECT_TRUE(open_user_file("boot.disk", roots, {kUser, true}, false, 1 << 20, g));
    EXPECT_TRUE(
        open_user_file("boot.disk", (t.dir / "link").string(), {0, true}, false, 1 << 20, g));
    // Nothing of the user's identity is left on this thread.
    int fd = ::open(roots.c_str(), O_RDONLY | O_CLOEXEC);
    EXPECT_GE(fd, 0);
    close(fd);
}

TEST(UserFiles, OnlyRegularFilesOfBoundedSize) {
    TempDir t;
    FileAccess self{geteuid(), true};
    OpenedFile f;
    std::string fifo = (t.dir / "fifo").string();
    ASSERT_EQ(mkfifo(fifo.c_str(), 0600), 0);
    Status st = open_user_file("source.path", fifo, self, false, 1 << 20, f);
    EXPECT_NE(st.message().find("is a FIFO"), std::string::npos) << st.message();
    st = open_user_file("source.path", t.dir.string(), self, false, 1 << 20, f);
    EXPECT_NE(st.message().find("is a directory"), std::string::npos) << st.message();
    st = open_user_file("source.path", "/dev/null", self, false, 1 << 20, f);
    EXPECT_NE(st.message().find("character device"), std::string::npos) << st.message();
    st = open_user_file("source.path", "relative", self, false, 1 << 20, f);
    EXPECT_NE(st.message().find("absolute path"), std::string::npos) << st.message();
    std::string big = t.file("big", 0644, geteuid());
    ASSERT_EQ(truncate(big.c_str(), 3 << 20), 0);
    st = open_user_file("source.path", big, self, false, 1 << 20, f);
    EXPECT_NE(st.message().find("larger than 1 MiB"), std::string::npos) << st.message();
    EXPECT_FALSE(f.fd);
}

TEST(QemuArgv, BootFilesByDescriptor) {
    MachineSpec spec;
    spec.name = "web";
    spec.uuid = "u";
    spec.boot.kernel = "/home/u/vmlinuz";
    spec.boot.initrd = "/home/u/initrd";
    spec.boot.disk = "/home/u/disk.qcow2";
    qemu::MachinePaths paths("/var/lib/hangar/machines/web");
    qemu::BootFds fds{4, 5, 6, 7, "qcow2"};
    auto argv = qemu::build_argv({}, spec, paths, 3, fds);
    auto after = [&](const std::string& opt) {
        auto it = std::find(argv.begin(), argv.end(), opt);
        return it == argv.end() || it + 1 == argv.end() ? std::string() : *(it + 1);
    };
    EXPECT_EQ(after("-kernel"), "/dev/fd/4");
    EXPECT_EQ(after("-initrd"), "/dev/fd/5");
    EXPECT_EQ(after("-drive"), "file=/dev/fdset/1,if=none,id=disk0,format=qcow2");
    EXPECT_EQ(std::count(argv.begin(), argv.end(), "fd=6,set=1"), 1);
    EXPECT_EQ(std::count(argv.begin(), argv.end(), "fd=7,set=1"), 1);
    for (const auto& a : argv) {
        EXPECT_EQ(a.find("/home/u"), std::string::npos) << a;
    }
    // Without descriptors (an admin's chained image), the path, with commas escaped.
    spec.boot.disk = "/srv/a,b.img";
    argv = qemu::build_argv({}, spec, paths, 3, {4, 5, -1, -1, "raw"});
    EXPECT_EQ(after("-drive"), "file=/srv/a,,b.img,if=none,id=disk0,format=raw");
    EXPECT_EQ(qemu::disk_format("/x/y.qcow2"), "qcow2");
    EXPECT_EQ(qemu::disk_format("/x/y.qcow2.raw"), "raw");
}

namespace {
// A qcow2 header in a memfd: version, backing file name, incompatible features, extensions.
int qcow2(uint32_t version, const std::string& backing, uint64_t incompatible,
          bool data_extension) {
    std::string h(4096, '\0');
    auto put = [&](size_t at, uint64_t v, int n) {
        for (int i = n - 1; i >= 0; --i, v >>= 8) {
            h[at + static_cast<size_t>(i)] = static_cast<char>(v & 0xff);
        }
    };
    std::memcpy(h.data(), "QFI\xfb", 4);
    put(4, version, 4);
    size_t ext = version >= 3 ? 112 : 72;
    if (version >= 3) {
        put(72, incompatible, 8);
        put(100, 112, 4);  // header_length
    }
    if (data_extension) {
        put(ext, 0x44415441, 4);
        put(ext + 4, 5, 4);
        std::memcpy(h.data() + ext + 8, "/data", 5);
        ext += 16;
    }
    if (!backing.empty()) {
        put(8, 1024, 8);
        put(16, backing.size(), 4);
        std::memcpy(h.data() + 1024, backing.data(), backing.size());
    }
    int fd = memfd_create("qcow2", MFD_CLOEXEC);
    EXPECT_EQ(write(fd, h.data(), h.size()), ssize_t(h.size()));
    return fd;
}
}  // namespace

TEST(QemuArgv, Qcow2HeaderNamesOtherFiles) {
    qemu::Qcow2Refs refs;
    int fd = qcow2(2, "/etc/shadow", 0, false);
    ASSERT_TRUE(qemu::read_qcow2_refs(fd, refs));
    EXPECT_EQ(refs.backing_file, "/etc/shadow");
    EXPECT_FALSE(refs.data_file);
    close(fd);
    fd = qcow2(3, "", 1u << 2, false);
    ASSERT_TRUE(qemu::read_qcow2_refs(fd, refs));
    EXPECT_TRUE(refs.data_file);
    EXPECT_TRUE(refs.backing_file.empty());
    close(fd);
    fd = qcow2(3, "", 0, true);
    ASSERT_TRUE(qemu::read_qcow2_refs(fd, refs));
    EXPECT_TRUE(refs.data_file);
    close(fd);
    fd = qcow2(3, "", 0, false);
    ASSERT_TRUE(qemu::read_qcow2_refs(fd, refs));
    EXPECT_FALSE(refs.data_file);
    EXPECT_TRUE(refs.backing_file.empty());
    close(fd);
    fd = memfd_create("raw", MFD_CLOEXEC);
    EXPECT_EQ(write(fd, "RAWDATA", 7), 7);
    EXPECT_FALSE(qemu::read_qcow2_refs(fd, refs));
    close(fd);
}
