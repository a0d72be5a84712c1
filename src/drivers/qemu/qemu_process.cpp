#include "drivers/qemu/qemu_process.hpp"

#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "util/file_tail.hpp"

namespace hangar::qemu {

namespace {
using Socket = qmp::Client::Socket;

// A listening unix socket at `path` (replacing a stale one); -1 with a message on failure.
int listen_unix(const std::filesystem::path& path, std::string& err) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.native().size() >= sizeof addr.sun_path) {
        err = "socket path too long: " + path.string();
        return -1;
    }
    strcpy(addr.sun_path, path.c_str());
    int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        err = std::string("socket: ") + strerror(errno);
        return -1;
    }
    unlink(path.c_str());
    if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 || listen(fd, 8) != 0) {
        err = "bind " + path.string() + ": " + strerror(errno);
        close(fd);
        return -1;
    }
    return fd;
}
}  // namespace

QemuProcess::QemuProcess(boost::asio::io_context& io, const Settings& settings, MachinePaths paths,
                         pid_t pid, int pidfd, Callbacks callbacks)
    : io_(io),
      settings_(settings),
      paths_(std::move(paths)),
      callbacks_(std::move(callbacks)),
      watch_(std::make_unique<PidWatch>(io, pid, pidfd)) {}

QemuProcess::~QemuProcess() {
    if (qmp_) {
        qmp_->on_close(nullptr);
        qmp_->close("machine released");
    }
}

// QEMU's last words: the last non-empty line of the end of qemu.log (a bounded read).
std::string QemuProcess::qemu_log_tail() const {
    std::string tail;
    if (!read_file_tail(paths_.qemu_log().string(), 8192, tail)) {
        return {};
    }
    while (!tail.empty() && (tail.back() == '\n' || tail.back() == '\r')) {
        tail.pop_back();
    }
    size_t nl = tail.rfind('\n');
    std::string last = nl == std::string::npos ? tail : tail.substr(nl + 1);
    return last.size() > 500 ? last.substr(0, 500) : last;
}

void QemuProcess::watch_exit() {
    watch_->wait([weak = weak_from_this()](ExitInfo info) {
        auto self = weak.lock();
        if (!self) {
            return;
        }
        self->exited_ = true;
        self->exit_info_ = info;
        if (self->qmp_) {
            self->qmp_->on_close(nullptr);
            self->qmp_->close("QEMU exited (" + info.describe() + ")");
        }
        self->paths_.remove_runtime_files();
        if (self->after_exit_) {
            auto cb = std::move(self->after_exit_);
            self->after_exit_ = nullptr;
            cb();
            return;
        }
        if (self->callbacks_.on_exit) {
            self->callbacks_.on_exit(info);
        }
    });
}

void QemuProcess::attach_qmp(Socket socket, std::function<void(const Status&)> done) {
    qmp::Options opts;
    opts.handshake_timeout = settings_.handshake_timeout;
    qmp_ = qmp::Client::create(std::move(socket), opts);
    std::weak_ptr<QemuProcess> weak = weak_from_this();
    qmp_->on_event([weak](std::string_view event, simdjson::dom::element msg) {
        if (auto self = weak.lock(); self && self->callbacks_.on_event) {
            self->callbacks_.on_event(event, msg);
        }
    });
    qmp_->on_responsive([weak](bool responsive) {
        if (auto self = weak.lock(); self && self->callbacks_.on_responsive) {
            self->callbacks_.on_responsive(
                responsive, responsive ? "QMP answers again" : "a QMP command missed its deadline");
        }
    });
    qmp_->on_close([weak](const std::string& reason) {
        auto self = weak.lock();
        if (!self || self->exited_) {
            return;
        }
        // An exiting QEMU closes QMP just before it is gone: report a dropped connection only
        // if QEMU is still alive a moment later.
        auto timer = std::make_shared<boost::asio::steady_timer>(self->io_);
        timer->expires_after(std::chrono::milliseconds(500));
        timer->async_wait([weak, timer, reason](boost::system::error_code) {
            auto self = weak.lock();
            if (self && !self->exited_ && self->callbacks_.on_responsive) {
                spdlog::warn("qmp: connection to QEMU pid {} dropped: {}", self->pid(), reason);
                self->callbacks_.on_responsive(false, "QMP connection dropped: " + reason);
            }
        });
    });
    qmp_->handshake(std::move(done));
}

void QemuProcess::launch(boost::asio::io_context& io, const Settings& settings,
                         const MachineSpec& spec, const MachinePaths& paths, const BootFiles& files,
                         Callbacks callbacks, Ready ready) {
    auto fail_now = [&](Errc code, std::string msg) {
        boost::asio::post(io, [ready = std::move(ready), code, msg = std::move(msg)] {
            ready({code, msg}, nullptr);
        });
    };
    std::error_code fec;
    std::filesystem::create_directories(paths.dir, fec);
    if (fec) {
        return fail_now(Errc::internal, "create " + paths.dir.string() + ": " + fec.message());
    }
    paths.remove_runtime_files();
    std::string err;
    int lfd = listen_unix(paths.qmp_socket(), err);
    if (lfd < 0) {
        return fail_now(Errc::internal, err);
    }
    // Connect before QEMU exists: the connection waits in the backlog until QEMU accepts it.
    Socket client(io);
    boost::system::error_code ec;
    client.connect(boost::asio::local::stream_protocol::endpoint(paths.qmp_socket().string()), ec);
    int logfd = open(paths.qemu_log().c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (ec || logfd < 0) {
        close(lfd);
        if (logfd >= 0) {
            close(logfd);
        }
        return fail_now(Errc::internal,
                        ec ? "connect QMP socket: " + ec.message()
                           : "open " + paths.qemu_log().string() + ": " + strerror(errno));
    }
    SpawnOptions so;
    // QEMU's fd numbers: 3 QMP, then the boot files it reads by descriptor.
    so.fds = {{lfd, 3}};
    BootFds fds;
    fds.disk_format = files.disk_format;
    int next = 4;
    for (auto [parent, child] : {std::pair{files.kernel, &fds.kernel},
                                 {files.initrd, &fds.initrd},
                                 {files.disk, &fds.disk},
                                 {files.incoming, &fds.incoming}}) {
        if (parent >= 0) {
            *child = next++;
            so.fds.push_back({parent, *child});
        }
    }
    // The read-only member of the disk's fd set: the same inode, opened again through the
    // descriptor (never by its name).
    int disk_ro = -1;
    if (files.disk >= 0) {
        disk_ro =
            open(("/proc/self/fd/" + std::to_string(files.disk)).c_str(), O_RDONLY | O_CLOEXEC);
        if (disk_ro >= 0) {
            fds.disk_ro = next++;
            so.fds.push_back({disk_ro, fds.disk_ro});
        }
    }
    so.argv =
        build_argv(settings, spec, paths, 3, fds, files.root, files.uefi, files.disks, files.cdrom);
    so.output_fd = logfd;
    so.new_session = true;
    pid_t pid = -1;
    Status st = spawn_process(so, pid);
    close(lfd);
    close(logfd);
    if (disk_ro >= 0) {
        close(disk_ro);
    }
    if (!st) {
        return fail_now(st.code(), st.message());
    }
    int pidfd = open_pidfd(pid);
    if (pidfd < 0) {
        kill(pid, SIGKILL);
        reap_later(io, pid);
        return fail_now(Errc::internal, std::string("pidfd_open: ") + strerror(errno));
    }
    spdlog::info("{}: QEMU started, pid {}", spec.name, pid);
    auto self = std::shared_ptr<QemuProcess>(
        new QemuProcess(io, settings, paths, pid, pidfd, std::move(callbacks)));
    // Until QMP is ready, an exit or a failure completes the launch instead of on_exit.
    auto pending = std::make_shared<Ready>(std::move(ready));
    self->after_exit_ = [weak = std::weak_ptr<QemuProcess>(self), pending] {
        auto s = weak.lock();
        if (!s || !*pending) {
            return;
        }
        auto r = std::move(*pending);
        *pending = nullptr;
        std::string tail = s->qemu_log_tail();
        r({Errc::unavailable, "QEMU exited during start (" + s->exit_info_.describe() + ")" +
                                  (tail.empty() ? "" : ": " + tail)},
          nullptr);
    };
    self->watch_exit();
    // The handshake's completion owns the process until the launch is decided.
    self->attach_qmp(std::move(client), [s = self, pending](const Status& st) {
        if (!*pending || s->exited_) {
            return;  // the exit path reports
        }
        if (st) {
            s->after_exit_ = nullptr;
            auto r = std::move(*pending);
            *pending = nullptr;
            r({}, s);
            return;
        }
        // No usable QMP: stop the process, and report once it is really gone.
        spdlog::warn("QEMU pid {}: {}; killing it", s->pid(), st.message());
        // QMP closing first is also how a QEMU that exits by itself looks: the exit
        // status tells which it was.
        s->after_exit_ = [s, pending, st] {
            if (!*pending) {
                return;
            }
            auto r = std::move(*pending);
            *pending = nullptr;
            if (s->exit_info_.known && s->exit_info_.signal == SIGKILL) {
                r({Errc::timeout, "QEMU did not become ready: " + st.message()}, nullptr);
                return;
            }
            std::string tail = s->qemu_log_tail();
            r({Errc::unavailable, "QEMU exited during start (" + s->exit_info_.describe() + ")" +
                                      (tail.empty() ? "" : ": " + tail)},
              nullptr);
        };
        // Give a QEMU that is exiting by itself a moment to be seen doing so.
        auto grace = std::make_shared<boost::asio::steady_timer>(s->io_);
        grace->expires_after(std::chrono::milliseconds(st.code() == Errc::timeout ? 0 : 200));
        grace->async_wait([s, grace](boost::system::error_code) {
            if (!s->exited_) {
                s->signal(SIGKILL);
            }
        });
    });
}

void QemuProcess::adopt(boost::asio::io_context& io, const Settings& settings,
                        const MachineSpec& spec, const MachinePaths& paths, Callbacks callbacks,
                        Adopted adopted) {
    auto gone = [&](std::string why) {
        paths.remove_runtime_files();
        boost::asio::post(io, [adopted = std::move(adopted), why = std::move(why)] {
            adopted({Errc::not_found, why}, nullptr, {});
        });
    };
    pid_t pid = 0;
    {
        std::ifstream in(paths.pidfile());
        if (!(in >> pid) || pid <= 1) {
            return gone("no QEMU pidfile");
        }
    }
    int pidfd = open_pidfd(pid);
    if (pidfd < 0) {
        return gone("QEMU pid " + std::to_string(pid) + " is gone");
    }
    // The PID may have been recycled: the process must be QEMU with this machine's UUID.
    if (!process_has_argument(pid, spec.uuid)) {
        close(pidfd);
        return gone("pid " + std::to_string(pid) + " is no longer this machine's QEMU");
    }
    auto self = std::shared_ptr<QemuProcess>(
        new QemuProcess(io, settings, paths, pid, pidfd, std::move(callbacks)));
    self->watch_exit();
    auto pending = std::make_shared<Adopted>(std::move(adopted));
    self->after_exit_ = [weak = std::weak_ptr<QemuProcess>(self), pending] {
        auto s = weak.lock();
        if (s && *pending) {
            auto a = std::move(*pending);
            *pending = nullptr;
            a({Errc::not_found,
               "QEMU exited while being adopted (" + s->exit_info_.describe() + ")"},
              nullptr, {});
        }
    };
    Socket sock(io);
    boost::system::error_code ec;
    sock.connect(boost::asio::local::stream_protocol::endpoint(paths.qmp_socket().string()), ec);
    auto finish = [weak = std::weak_ptr<QemuProcess>(self), pending](const Status& st,
                                                                     std::string status) {
        auto s = weak.lock();
        if (!s || !*pending || s->exited_) {
            return;
        }
        s->after_exit_ = nullptr;
        auto a = std::move(*pending);
        *pending = nullptr;
        if (!st) {
            spdlog::warn("adopting QEMU pid {}: {}", s->pid(), st.message());
        }
        a({}, s, status);
    };
    if (ec) {
        return boost::asio::post(io, [self, finish, msg = ec.message()] {
            finish({Errc::unavailable, "connect QMP socket: " + msg}, {});
        });
    }
    // The handshake's and query-status's completions own the process until it is adopted.
    self->attach_qmp(std::move(sock), [s = self, finish](const Status& st) {
        if (!st) {
            return finish(st, {});
        }
        s->execute("query-status", {}, [s, finish](const Status& st, std::string_view result) {
            std::string status;
            simdjson::dom::parser parser;
            simdjson::dom::element e;
            std::string_view v;
            if (st && parser.parse(result.data(), result.size()).get(e) == simdjson::SUCCESS &&
                e["status"].get(v) == simdjson::SUCCESS) {
                status = v;
            }
            finish(st, status);
        });
    });
}

void QemuProcess::execute(std::string_view command, std::string_view arguments_json,
                          qmp::Client::ReplyHandler done) {
    execute(command, arguments_json, settings_.command_timeout, std::move(done));
}

void QemuProcess::execute(std::string_view command, std::string_view arguments_json,
                          std::chrono::milliseconds deadline, qmp::Client::ReplyHandler done) {
    if (!qmp_ || !qmp_->is_open()) {
        boost::asio::post(io_, [done = std::move(done), c = std::string(command)] {
            done({Errc::unavailable, "no QMP connection to QEMU; cannot send " + c}, {});
        });
        return;
    }
    qmp_->execute(command, arguments_json, deadline, std::move(done));
}

void QemuProcess::execute_with_fd(std::string_view command, std::string_view arguments_json, int fd,
                                  qmp::Client::ReplyHandler done) {
    if (!qmp_ || !qmp_->is_open()) {
        boost::asio::post(io_, [done = std::move(done), c = std::string(command)] {
            done({Errc::unavailable, "no QMP connection to QEMU; cannot send " + c}, {});
        });
        return;
    }
    qmp_->execute_with_fd(command, arguments_json, fd, settings_.command_timeout, std::move(done));
}

bool QemuProcess::signal(int sig) {
    return watch_->signal(sig);
}

void QemuProcess::detach() {
    callbacks_ = {};
    after_exit_ = nullptr;
    if (qmp_) {
        qmp_->on_close(nullptr);
        qmp_->close("daemon shutting down");
    }
}

}  // namespace hangar::qemu
