// Container command lines and what a unit's end is called: nspawn argv for boot and for one
// command, exec argv (running: nsenter, a cwd through the container's shell; stopped: nspawn
// --pipe), the environment, init detection inside a root (symlinks never leave it), and
// UnitStatus::describe.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "drivers/nspawn/host.hpp"
#include "drivers/nspawn/nspawn.hpp"

namespace fs = std::filesystem;
using hangar::MachineSpec;
using namespace hangar::nspawn;

namespace {
bool has(const std::vector<std::string>& v, const std::string& s) {
    return std::find(v.begin(), v.end(), s) != v.end();
}

struct TempRoot {
    fs::path dir;
    TempRoot() {
        char tmpl[] = "/tmp/hangar-nspawn-test-XXXXXX";
        dir = mkdtemp(tmpl);
        fs::create_directories(dir / "sbin");
        fs::create_directories(dir / "bin");
        fs::create_directories(dir / "usr/lib/systemd");
    }
    ~TempRoot() { fs::remove_all(dir); }
};
}  // namespace

TEST(Nspawn, BootArgv) {
    MachineSpec spec;
    spec.name = "web";
    spec.uuid = "8c0e0000-0000-4000-8000-000000000001";
    InitKind busybox{"busybox", SIGUSR2, "SIGUSR2"};
    auto argv = unit_argv(spec, "/state/machines/web/rootfs", busybox);
    EXPECT_EQ(argv[0], "systemd-nspawn");
    for (const char* want :
         {"--keep-unit", "--register=yes", "--machine=web",
          "--uuid=8c0e0000-0000-4000-8000-000000000001", "--directory=/state/machines/web/rootfs",
          "--private-network", "--kill-signal=SIGUSR2", "--notify-ready=no", "--boot"}) {
        EXPECT_TRUE(has(argv, want)) << want;
    }
    InitKind systemd{"systemd", SIGRTMIN + 4, "SIGRTMIN+4"};
    argv = unit_argv(spec, "/r", systemd);
    EXPECT_TRUE(has(argv, "--notify-ready=yes"));  // systemd inside says when it has booted
    EXPECT_TRUE(has(argv, "--kill-signal=SIGRTMIN+4"));
}

TEST(Nspawn, CommandArgvKeepsArgumentsVerbatim) {
    MachineSpec spec;
    spec.name = "job";
    spec.uuid = "u";
    spec.boot.command = {"sh", "-c", "echo --boot; exit 3", "--"};
    auto argv = unit_argv(spec, "/r", InitKind{"other", SIGTERM, "SIGTERM"});
    EXPECT_FALSE(has(argv, "--boot"));
    auto dashdash = std::find(argv.begin(), argv.end(), "--");
    ASSERT_NE(dashdash, argv.end());
    EXPECT_TRUE(has(argv, "--as-pid2"));
    EXPECT_EQ(std::vector<std::string>(dashdash + 1, argv.end()), spec.boot.command);
}

TEST(Nspawn, ExecArgv) {
    auto argv = exec_running_argv(4242, "/", {"cat", "/etc/os-release"});
    EXPECT_EQ(argv, (std::vector<std::string>{"nsenter", "--target", "4242", "--all", "--root",
                                              "--wd", "--", "cat", "/etc/os-release"}));
    // Another directory is entered by the container's shell, after the chroot.
    argv = exec_running_argv(4242, "/tmp/a b", {"pwd"});
    auto sh = std::find(argv.begin(), argv.end(), "/bin/sh");
    ASSERT_NE(sh, argv.end());
    EXPECT_EQ(argv.back(), "pwd");
    EXPECT_TRUE(has(argv, "/tmp/a b"));

    argv = exec_stopped_argv("/r", "/etc", {{"A", "1"}}, {"true"});
    for (const char* want :
         {"--register=no", "--keep-unit", "--pipe", "--directory=/r", "--private-users=pick",
          "--chdir=/etc", "--setenv=A=1", "--setenv=HOME=/root"}) {
        EXPECT_TRUE(has(argv, want)) << want;
    }
    EXPECT_FALSE(has(argv, "--boot"));
    EXPECT_EQ(argv.back(), "true");
    // nspawn runs as the first process of a PID namespace of its own, ending with hangard.
    EXPECT_EQ((std::vector<std::string>(argv.begin(), argv.begin() + 11)),
              (std::vector<std::string>{"setpriv", "--pdeathsig", "KILL", "--", "unshare", "--pid",
                                        "--fork", "--kill-child", "--mount-proc", "--",
                                        "systemd-nspawn"}));
}

TEST(Nspawn, EnvironmentDefaultsAndOverrides) {
    auto env = command_env({{"PATH", "/x"}, {"FOO", "bar"}});
    EXPECT_TRUE(has(env, "PATH=/x"));
    EXPECT_TRUE(has(env, "FOO=bar"));
    EXPECT_TRUE(has(env, "HOME=/root"));
    EXPECT_EQ(std::count_if(env.begin(), env.end(),
                            [](const std::string& s) { return s.rfind("PATH=", 0) == 0; }),
              1);
}

TEST(Nspawn, DetectsInitInsideTheRoot) {
    TempRoot r;
    EXPECT_EQ(detect_init(r.dir.string()).kind, "other");  // none at all
    // busybox: a relative link.
    std::ofstream(r.dir / "bin/busybox") << "x";
    fs::create_symlink("../bin/busybox", r.dir / "sbin/init");
    auto k = detect_init(r.dir.string());
    EXPECT_EQ(k.kind, "busybox");
    EXPECT_EQ(k.poweroff_signal, SIGUSR2);
    // systemd: an absolute link, resolved inside the root (Debian: /sbin/init ->
    // /lib/systemd/systemd, here through a directory link /lib -> usr/lib).
    fs::remove(r.dir / "sbin/init");
    std::ofstream(r.dir / "usr/lib/systemd/systemd") << "x";
    fs::create_directory_symlink("usr/lib", r.dir / "lib");
    fs::create_symlink("/lib/systemd/systemd", r.dir / "sbin/init");
    k = detect_init(r.dir.string());
    EXPECT_EQ(k.kind, "systemd");
    EXPECT_EQ(k.poweroff_signal, SIGRTMIN + 4);
    EXPECT_EQ(k.signal_name, "SIGRTMIN+4");
    // A link that climbs out of the root stays inside it: /../../bin/busybox is /bin/busybox.
    fs::remove(r.dir / "sbin/init");
    fs::create_symlink("../../../../../bin/busybox", r.dir / "sbin/init");
    EXPECT_EQ(detect_init(r.dir.string()).kind, "busybox");
}

TEST(Nspawn, UnitStatusDescribe) {
    hangar::nspawn::UnitStatus st;
    EXPECT_EQ(st.describe(), "unit gone");
    EXPECT_FALSE(st.up());
    st.exists = true;
    st.active_state = "failed";
    st.result = "signal";
    st.exec_code = CLD_KILLED;
    st.exec_status = 9;
    EXPECT_EQ(st.describe(), "result=signal signal=9 (KILL)");
    st.result = "success";
    st.exec_code = CLD_EXITED;
    st.exec_status = 133;
    EXPECT_EQ(st.describe(), "result=success status=133");
    for (const char* up : {"active", "activating", "deactivating", "reloading"}) {
        st.active_state = up;
        EXPECT_TRUE(st.up()) << up;
    }
    st.active_state = "inactive";
    EXPECT_FALSE(st.up());
}
