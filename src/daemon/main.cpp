// hangard: one thread, one io_context for QMP, process exits, and the API.
#include <fcntl.h>
#include <grp.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <map>
#include <optional>

#include <spdlog/spdlog.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/signal_set.hpp>

#include "api/browser_access.hpp"
#include "api/console_routes.hpp"
#include "api/event_stream.hpp"
#include "api/handlers.hpp"
#include "api/http_server.hpp"
#include "api/test_routes.hpp"
#include "api/tls.hpp"
#include "core/credentials.hpp"
#include "core/event_bus.hpp"
#include "core/health.hpp"
#include "core/host_boot.hpp"
#include "core/machines.hpp"
#include "core/operations.hpp"
#include "daemon/logging.hpp"
#include "daemon/options.hpp"
#include "daemon/systemd.hpp"
#include "dbus/machined.hpp"
#include "dbus/service.hpp"
#include "dbus/units.hpp"
#include "drivers/nspawn/runtime.hpp"
#include "drivers/qemu/argv.hpp"
#include "drivers/qemu/runtime.hpp"
#include "images/fetch.hpp"
#include "qmp/client.hpp"
#include "spool/spool.hpp"
#include "store/db.hpp"
#include "util/metrics.hpp"
#include "util/reactor.hpp"

namespace fs = std::filesystem;
using namespace hangar;

namespace {

// The built-in guest: --guest-dir, else share/hangar/guest next to or above the executable,
// else the installed locations.
BootSpec find_guest(const std::string& configured) {
    std::vector<fs::path> candidates;
    if (!configured.empty()) {
        candidates.push_back(configured);
    } else {
        std::error_code ec;
        fs::path exe = fs::read_symlink("/proc/self/exe", ec).parent_path();
        candidates = {exe / "share/hangar/guest", exe.parent_path() / "share/hangar/guest",
                      "/usr/local/share/hangar/guest", "/usr/share/hangar/guest"};
    }
    for (const auto& dir : candidates) {
        if (fs::is_regular_file(dir / "vmlinuz") && fs::is_regular_file(dir / "initrd.img")) {
            auto abs = fs::absolute(dir).lexically_normal();
            BootSpec boot;
            boot.kernel = (abs / "vmlinuz").string();
            boot.initrd = (abs / "initrd.img").string();
            boot.cmdline = "console=ttyS0 panic=-1";
            return boot;
        }
    }
    return {};
}

// Without --foreground (and outside systemd) the daemon detaches; the parent exits only once
// the child reports that it serves, or with the child's error.
int g_ready_fd = -1;

void report_ready(const std::string& msg) {
    if (g_ready_fd >= 0) {
        (void)!write(g_ready_fd, msg.data(), msg.size());
        close(g_ready_fd);
        g_ready_fd = -1;
    }
}

[[noreturn]] void fatal(const std::string& msg) {
    spdlog::critical("{}", msg);
    report_ready("hangard: " + msg + "\n");
    std::cerr << "hangard: " << msg << "\n";
    _exit(1);
}

// A descriptor 0, 1 or 2 that is not open would be the next file hangard opens (the store, a
// socket), and stdio or a child would then read or write it: each gets /dev/null first.
void open_standard_fds() {
    for (int fd = 0; fd <= 2; ++fd) {
        if (fcntl(fd, F_GETFD) == -1 && errno == EBADF) {
            int n = open("/dev/null", O_RDWR);
            if (n >= 0 && n != fd) {  // lower ones are open by now, so n == fd
                close(n);
            }
        }
    }
}

void daemonize() {
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) {
        std::cerr << "hangard: pipe: " << strerror(errno) << "\n";
        exit(1);
    }
    pid_t pid = fork();
    if (pid < 0) {
        std::cerr << "hangard: fork: " << strerror(errno) << "\n";
        exit(1);
    }
    if (pid > 0) {
        close(p[1]);
        std::string msg;
        char buf[512];
        ssize_t n;
        while ((n = read(p[0], buf, sizeof buf)) > 0) {
            msg.append(buf, static_cast<size_t>(n));
        }
        bool ok = msg.rfind("OK ", 0) == 0;
        std::cerr << (ok            ? msg.substr(3)
                      : msg.empty() ? "hangard: exited before it was ready\n"
                                    : msg);
        _exit(ok ? 0 : 1);
    }
    close(p[0]);
    g_ready_fd = p[1];
    setsid();
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    dup2(devnull, 2);
    if (devnull > 2) {
        close(devnull);
    }
}

}  // namespace

int main(int argc, char** argv) {
    open_standard_fds();
    daemon::Options opts;
    std::string err;
    int rc = daemon::parse_options(argc, argv, opts, err);
    if (rc == 1) {
        return 0;
    }
    if (rc == 2) {
        std::cerr << "hangard: " << err << "\n" << daemon::usage();
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    // Each running machine holds a pidfd and a QMP socket: use the whole hard limit.
    if (struct rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }

    std::error_code ec;
    fs::create_directories(opts.state_dir, ec);
    if (ec) {
        std::cerr << "hangard: cannot create state dir " << opts.state_dir << ": " << ec.message()
                  << "\n";
        return 1;
    }
    opts.state_dir = fs::canonical(opts.state_dir).string();
    // The state dir is hangard's alone (its mode is set below, once the socket is known).
    if (struct stat st{}; stat(opts.state_dir.c_str(), &st) != 0 || st.st_uid != geteuid() ||
                          (st.st_mode & S_ISVTX) != 0) {
        std::cerr << "hangard: state dir " << opts.state_dir
                  << " must be a directory of hangard's own user, not a shared one\n";
        return 1;
    }
    bool under_systemd = getenv("NOTIFY_SOCKET") || getenv("JOURNAL_STREAM");
    mode_t state_dir_mode = 0700;
    // Before any fork: LISTEN_PID names this process.
    daemon::ActivatedSockets activated = daemon::activated_sockets();
    if (!activated.unix_fds.empty()) {
        sockaddr_un addr{};
        socklen_t len = sizeof addr;
        if (getsockname(activated.unix_fds[0], reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
            addr.sun_path[0] != '\0') {
            opts.socket = addr.sun_path;
        }
    }
    // Others may pass through the state dir (0711: no listing) only when the socket is in it
    // and open to them; everything else in it is 0700/0600 either way.
    {
        struct stat sock_st {};
        bool open_to_others =
            activated.unix_fds.empty()
                ? (opts.socket_mode & 0077) != 0
                : stat(opts.socket.c_str(), &sock_st) == 0 && (sock_st.st_mode & 0077) != 0;
        fs::path sock_dir = fs::weakly_canonical(fs::absolute(opts.socket).parent_path(), ec);
        bool inside = !ec && sock_dir == fs::path(opts.state_dir);
        state_dir_mode = inside && open_to_others ? 0711 : 0700;
        chmod(opts.state_dir.c_str(), state_dir_mode);
    }
    if (!opts.foreground && !under_systemd) {
        daemonize();
    }
    daemon::setup_logging(opts.state_dir, opts.log_level, opts.foreground);
    reactor::install_terminate_handler();
    for (const auto& w : activated.warnings) {
        spdlog::warn("{}", w);
    }
    if (!activated.unix_fds.empty() || !activated.tcp_fds.empty()) {
        spdlog::info("socket activation: {} unix and {} TCP listening sockets",
                     activated.unix_fds.size(), activated.tcp_fds.size());
    }

    // One hangard per state dir.
    std::string lock_path = opts.state_dir + "/hangard.lock";
    int lock_fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd < 0 || flock(lock_fd, LOCK_EX | LOCK_NB) != 0) {
        fatal("another hangard is already using " + opts.state_dir);
    }
    fchmod(lock_fd, 0600);
    fs::create_directories(opts.state_dir + "/machines", ec);
    chmod((opts.state_dir + "/machines").c_str(), 0700);

    boost::asio::io_context io(1);
    store::Db db;
    if (Status st =
            db.open(opts.state_dir + "/hangar.db",
                    [&io](std::function<void()> fn) { boost::asio::post(io, std::move(fn)); });
        !st) {
        fatal(st.message());
    }
    core::EventBus events(db, opts.event_ring);
    const std::string boot_id = core::read_boot_id();

    qemu::RuntimeConfig vm_cfg;
    vm_cfg.machines_dir = opts.state_dir + "/machines";
    vm_cfg.qemu.binary = opts.qemu;
    vm_cfg.default_boot = find_guest(opts.guest_dir);
    core::AccelChoice accel = core::choose_accel(
        db, boot_id, opts.accel, opts.qemu,
        [&](std::string& why) { return qemu::detect_accel(opts.qemu, vm_cfg.default_boot, why); });
    vm_cfg.qemu.accel = accel.accel;
    spdlog::info("accelerator {}: {}", vm_cfg.qemu.accel, accel.why);
    vm_cfg.qemu.command_timeout = std::chrono::milliseconds(opts.qmp_timeout_ms);
    vm_cfg.qemu.handshake_timeout =
        std::chrono::milliseconds(std::max<uint32_t>(opts.qmp_timeout_ms, 10000));
    if (vm_cfg.default_boot.kernel.empty()) {
        spdlog::warn("built-in guest not found; machines need an explicit boot source");
    }
    std::optional<unsigned> admin_gid;
    if (struct group* g = getgrnam(opts.admin_group.c_str())) {
        admin_gid = g->gr_gid;
    }
    core::AdminGroup admins(admin_gid);
    core::Quotas quotas(opts.quotas, core::HostSize::probe(), &admins);
    core::MachinesConfig cfg;
    cfg.machines_dir = vm_cfg.machines_dir;
    cfg.admins = &admins;
    cfg.quotas = &quotas;
    core::Templates templates(db, events);
    templates.load();
    cfg.templates = &templates;
    spdlog::info(
        "quotas per owner: {} machines, {} vCPUs, {} MiB, {} images, {} bytes of disk; "
        "one machine at most {} CPUs, {} MiB (this host)",
        opts.quotas.machines, opts.quotas.vcpus, opts.quotas.memory_mib, opts.quotas.images,
        opts.quotas.disk_bytes, quotas.host().cpus, quotas.host().memory_mib);
    qemu::QemuRuntime vms(io, vm_cfg);
    nspawn::NspawnRuntime containers(io, cfg.machines_dir);
    core::Machines machines(io, db, events, cfg, {&vms, &containers});
    core::Operations operations(io, events, db, machines);

    // Default: the system bus when one is reachable, else none (one warning).
    std::string dbus_mode = opts.dbus;
    if (dbus_mode.empty()) {
        const char* sys = getenv("DBUS_SYSTEM_BUS_ADDRESS");
        bool reachable = (sys && *sys) || access("/run/dbus/system_bus_socket", F_OK) == 0;
        dbus_mode = reachable ? "system" : "none";
        if (!reachable) {
            spdlog::warn("dbus: no system bus reachable; org.hangar is not served (--dbus)");
        }
    }
    std::optional<dbus::Service> bus;
    std::optional<dbus::Machined> machined;
    std::optional<dbus::Units> units;
    if (dbus_mode != "none") {
        bus.emplace(io, machines, events, operations, dbus_mode, &admins);
        if (opts.machined) {
            machined.emplace(io, machines, events, dbus_mode);
        }
        units.emplace(io, containers, dbus_mode);
        containers.set_host(units->host());
        if (!opts.machined) {
            // Without hangard's machined connection, the containers' host tells who ended one.
            machines.set_exit_explainer(
                [host = units->host()](const core::Machine& m, std::function<void(std::string)> a) {
                    host->machined_closing(m.spec.name, [a](bool closing) {
                        a(closing ? core::kMachinedTerminated : "");
                    });
                });
        }
    }

    core::Credentials credentials(db, &admins);
    api::Router router;
    core::Health health(vm_cfg.qemu.binary, vm_cfg.default_boot.kernel, opts.state_dir);
    api::ServerInfo info;
    info.state_dir = opts.state_dir;
    info.accelerator = vm_cfg.qemu.accel;
    info.quotas = &quotas;
    info.health = &health;
    api::Probes probes;
    images::FetchOptions fetch_opts;
    fetch_opts.ca_file = opts.image_ca;
    auto transfer = images::make_transfer(io, fetch_opts);
    core::Images image_store(io, db, events, operations, core::Images::dir_in(opts.state_dir),
                             transfer.get(), opts.image_remotes);
    image_store.load();
    image_store.set_quotas(&quotas);
    quotas.attach(&machines, &image_store);
    containers.set_image_lookup([&image_store](const std::string& name, std::string& rootfs) {
        return image_store.rootfs(name, rootfs);
    });
    vms.set_image_lookup(
        [&image_store](const std::string& name, const std::string& kind, qemu::DiskImage& out) {
            const core::Image* img = nullptr;
            Status st = image_store.file_of(name, kind, &img, out.path);
            if (st) {
                out.format = img->format;
                out.virtual_size = img->virtual_size;
            }
            return st;
        });
    std::unique_ptr<core::Disks> disks;  // made once the pools are loaded
    // A disk image stays while VMs and disks are overlays on it.
    image_store.set_users([&machines, &disks](const std::string& image) {
        std::string who;
        for (const auto& [name, m] : machines.all()) {
            if (m->type == core::MachineType::vm &&
                (m->spec.image == image || m->spec.cdrom == image)) {
                who += (who.empty() ? "machine " : ", ") + name;
            }
        }
        std::string of_disks = disks ? disks->users_of_image(image) : "";
        return who.empty() || of_disks.empty() ? who + of_disks : who + "; " + of_disks;
    });
    api::register_routes(router, machines, credentials, operations, image_store, info, probes);
    api::register_template_routes(router, templates);
    core::Pools pools(db, opts.state_dir);
    if (Status st = pools.load(); !st) {
        fatal("pools: " + st.message());
    }
    api::register_pool_routes(router, pools);
    disks = std::make_unique<core::Disks>(io, db, events, pools, image_store, machines);
    disks->load();
    disks->set_quotas(&quotas);
    quotas.set_disk_usage([&disks](uint32_t uid) { return disks ? disks->bytes_of(uid) : 0; });
    api::register_disk_routes(router, *disks, machines);
    vms.set_attached_disks([&disks](const std::string& m) { return disks->attached(m); });
    machines.set_disks_json([&disks](const std::string& m) { return disks->machine_items(m); });
    machines.set_disk_names([&disks](const std::string& m) {
        std::vector<std::string> names;
        for (const auto& a : disks->attached(m)) {
            names.push_back(a.name);
        }
        return names;
    });
    machines.set_disk_released(
        [&disks](const std::string& m, const std::string& d) { disks->released(m, d); });
    core::Snapshots snapshots(io, db, events, machines, *disks, image_store);
    snapshots.load();
    api::register_snapshot_routes(router, snapshots, machines, operations);
    core::Clones clones(io, machines, *disks, snapshots, image_store, cfg.machines_dir);
    api::register_clone_route(router, clones, machines, operations);
    vms.set_root_disk([&snapshots](const std::string& m) { return snapshots.root_disk(m); });
    vms.set_resume_from([&snapshots](const std::string& m) { return snapshots.take_resume(m); });
    disks->set_snapshot_users(
        [&snapshots](const std::string& d) { return snapshots.users_of_disk(d); });
    probes.more.push_back([&snapshots](std::string& out) { snapshots.render_metrics(out); });
    probes.more.push_back([&disks](std::string& out) { disks->render_metrics(out); });
    probes.more.push_back([&pools](std::string& out) { pools.render_metrics(out); });
    probes.more.push_back(
        [&templates](std::string& out) { api::template_metrics(templates, out); });
    core::ConsoleLimits console_limits;
    console_limits.max_viewers = opts.console_viewers;
    core::Consoles consoles(io, machines, events, console_limits);
    api::register_console_routes(router, consoles, machines);
    probes.more.push_back([&consoles](std::string& out) { consoles.render_metrics(out); });
    api::Tickets tickets;  // browsers' ?ticket= for the console and VNC WebSockets
    api::register_display_routes(router, machines, io, tickets);
    if (opts.test_hooks) {
        api::register_test_routes(router, io);
        spdlog::warn("--test-hooks: serving the test suite's fault routes (POST /v1/test/throw)");
    }
    api::EventStreams streams(events, {});
    api::Authenticate authenticate{
        [&credentials](std::string_view t) { return credentials.authenticate_token(t); },
        [&credentials](std::string_view fp) { return credentials.authenticate_certificate(fp); },
        [&tickets](std::string_view t, std::string_view path) { return tickets.redeem(t, path); }};
    api::ServerLimits limits;
    limits.auth_timeout = std::chrono::milliseconds(opts.auth_timeout_ms);
    limits.unix_per_uid = limits.tcp_per_uid = opts.connections_per_uid;
    api::HttpServer server(io, router, limits, &streams, authenticate);
    probes.subscribers = [&streams] { return streams.subscribers(); };
    probes.subscribers_dropped = [&streams] { return streams.dropped_slow(); };
    probes.connections = [&server] { return server.connections(); };
    probes.connections_refused = [&server] {
        std::vector<api::Probes::Refused> out;
        for (const auto& r : server.refused()) {
            out.push_back({r.listener, r.reason, r.count});
        }
        return out;
    };
    probes.images = [&image_store] { return image_store.list().size(); };
    probes.image_pulls_running = [&image_store] { return image_store.pulling(); };
    probes.image_pulls_succeeded = [&image_store] { return image_store.succeeded(); };
    probes.image_pulls_failed = [&image_store] { return image_store.failed(); };
    health.set_bus([&bus, &machined, &units, dbus_mode](std::string& detail) {
        if (!bus) {
            detail = "not served (--dbus " + dbus_mode + ")";
            return false;
        }
        bool ok = bus->healthy(detail);
        if (machined) {
            std::string m;
            machined->healthy(m);  // machined may be absent: the service is still fine
            detail += "; machined: " + m;
        }
        if (units) {
            std::string u;
            units->healthy(u);  // without systemd only containers are unavailable
            detail += "; systemd: " + u;
        }
        return ok;
    });
    server.set_allowed_origins(opts.allowed_origins);
    if (admin_gid) {
        server.set_admins(&admins);
        spdlog::info("members of group {} ({}) are admins", opts.admin_group, *admin_gid);
    }
    std::optional<unsigned> socket_gid;
    if (!opts.socket_group.empty()) {
        struct group* g = getgrnam(opts.socket_group.c_str());
        if (!g) {
            fatal("--socket-group " + opts.socket_group + ": no such group");
        }
        socket_gid = g->gr_gid;
    }
    if (Status st = activated.unix_fds.empty()
                        ? server.listen_unix(opts.socket, opts.socket_mode, socket_gid)
                        : server.adopt_unix(activated.unix_fds[0]);
        !st) {
        fatal(st.message());
    }
    if (struct stat sock_st{}; stat(opts.socket.c_str(), &sock_st) == 0) {
        spdlog::info("unix socket {} (mode {:04o}, gid {}); state dir mode {:04o}", opts.socket,
                     sock_st.st_mode & 07777, sock_st.st_gid, state_dir_mode);
    }
    std::optional<boost::asio::ssl::context> tls;
    std::string tcp_url;
    if (opts.listen != "none" || !activated.tcp_fds.empty()) {
        if (!opts.insecure_http) {
            std::string cert = opts.tls_cert, key = opts.tls_key;
            if (cert.empty()) {
                fs::create_directories(opts.state_dir + "/tls", ec);
                chmod((opts.state_dir + "/tls").c_str(), 0700);
                cert = opts.state_dir + "/tls/cert.pem";
                key = opts.state_dir + "/tls/key.pem";
                if (Status st = api::ensure_self_signed(cert, key); !st) {
                    fatal(st.message());
                }
            }
            tls.emplace(boost::asio::ssl::context::tls_server);
            if (Status st = api::configure_server_tls(*tls, cert, key); !st) {
                fatal(st.message());
            }
        } else {
            spdlog::warn("--insecure-http: the API is served over plain HTTP on {}", opts.listen);
        }
        Status st = activated.tcp_fds.empty()
                        ? server.listen_tcp(opts.listen, tls ? &*tls : nullptr)
                        : server.adopt_tcp(activated.tcp_fds[0], tls ? &*tls : nullptr);
        if (!st) {
            fatal(st.message());
        }
        std::string host = activated.tcp_fds.empty() ? opts.listen.substr(0, opts.listen.rfind(':'))
                                                     : server.bound_address();
        tcp_url = (tls ? "https://" : "http://") + host + ":" + std::to_string(server.bound_port());
    }

    boost::asio::signal_set stop_signals(io, SIGTERM, SIGINT);
    stop_signals.async_wait([&](boost::system::error_code e, int sig) {
        if (e) {
            return;
        }
        spdlog::info("signal {}: shutting down, leaving machines running", strsignal(sig));
        daemon::notify_stopping();
        server.close();
        machines.detach_all();
        io.stop();
    });
    boost::asio::signal_set hup(io, SIGHUP);
    std::function<void()> wait_hup = [&] {
        hup.async_wait([&](boost::system::error_code e, int) {
            if (!e) {
                daemon::reopen_logs();
                wait_hup();
            }
        });
    };
    wait_hup();

    std::optional<spool::Spool> spool;  // --spool-dir: once the machines are settled
    auto t0 = std::chrono::steady_clock::now();
    machines.load_and_adopt([&](size_t adopted, size_t total) {
        if (!opts.spool_dir.empty()) {
            spool.emplace(io, machines, events, admins, opts.spool_dir);
            if (Status st = spool->start(); !st) {
                fatal(st.message());
            }
        }
        operations.adoption_settled();
        snapshots.recover([] {});
        clones.load();
        double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                        .count();
        spdlog::info(
            "ready: {} machines, {} running QEMU adopted in {:.1f} ms; accelerator {}; "
            "socket {} {}",
            total, adopted, ms, vm_cfg.qemu.accel, opts.socket, tcp_url);
        report_ready("OK hangard: running (pid " + std::to_string(getpid()) + "), socket " +
                     opts.socket + (tcp_url.empty() ? "" : ", " + tcp_url) + ", log " +
                     opts.state_dir + "/hangard.log\n");
        daemon::notify_ready(std::to_string(total) + " machines, " + std::to_string(adopted) +
                             " running QEMU adopted; socket " + opts.socket +
                             (tcp_url.empty() ? "" : ", " + tcp_url));
        // Autostart waits until systemd has reported every container's unit, so that a
        // container found running is not started again and one found gone is.
        auto autostart = [&db, &machines, &boot_id] {
            core::autostart_once_per_boot(machines, db, boot_id);
        };
        if (units) {
            units->start(autostart);  // containers' units are looked up: adopted from systemd
        }
        if (machined) {
            machined->start();  // only now: it reconciles machined with the adopted VMs
        }
        if (!units) {
            autostart();
        }
    });
    daemon::Watchdog watchdog(io);
    if (bus) {
        bus->start();
    }

    // A handler that throws is a bug: the daemon ends with one line and status 70, leaving
    // its machines running (systemd restarts it; adoption recovers them), rather than run on
    // with half-updated state (util/reactor.hpp).
    reactor::mark_this_thread();
    try {
        io.run();
    } catch (...) {
        std::exception_ptr e = std::current_exception();
        report_ready("hangard: " + reactor::describe(e) + " escaped a handler during start-up\n");
        reactor::die(e);
    }
    db.flush();
    spdlog::info("stopped");
    return 0;
}
