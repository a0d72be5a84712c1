#include "drivers/qemu/runtime.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "hangar/names.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/sha256.hpp"
#include "util/user_files.hpp"

namespace hangar::qemu {

namespace {
constexpr uint64_t kMaxKernelBytes = 512ull << 20;
constexpr uint64_t kMaxInitrdBytes = 4ull << 30;
constexpr uint64_t kMaxDiskBytes = 64ull << 40;
constexpr uint64_t kGiB = 1ull << 30;
}  // namespace

struct QemuRuntime::BootFiles {
    OpenedFile kernel, initrd, disk;
    std::string disk_format = "raw";
    UniqueFd incoming;  // the memory file of a snapshot restored with it (hangard's own)
};

AdoptPlan plan_adoption(const std::string& status, MachineState stored) {
    AdoptPlan p;
    if (status.empty()) {
        p.fact = core::AdoptFact::unresponsive;
        p.reason = "QMP unreachable after adoption";
    } else if (status == "running") {
        p.fact = core::AdoptFact::running;
        p.reason = "adopt:qmp status=running";
    } else if (status == "shutdown") {
        p.fact = core::AdoptFact::stopping;
        p.reason = "qmp:SHUTDOWN guest=true (while hangard was down)";
        p.quit = true;
    } else if (status == "guest-panicked" || status == "internal-error") {
        p.fact = core::AdoptFact::failing;
        p.reason = "adopt:qmp status=" + status;
        p.quit = p.crash = true;
    } else if (status == "prelaunch" || stored == MachineState::starting) {
        p.fact = core::AdoptFact::starting;  // an interrupted start: finish it
        p.reason = "adopt:qmp status=" + status;
        p.cont = true;
    } else {
        p.fact = core::AdoptFact::paused;
        p.reason = "adopt:qmp status=" + status;
    }
    return p;
}

QemuRuntime::QemuRuntime(boost::asio::io_context& io, RuntimeConfig cfg)
    : io_(io), cfg_(std::move(cfg)) {
    uefi_status_ = find_uefi_firmware(cfg_.firmware_dirs, uefi_);
    if (uefi_status_) {
        spdlog::info("UEFI firmware: {} ({})", uefi_.code, uefi_.descriptor);
    } else {
        spdlog::info("UEFI VMs unavailable: {}", uefi_status_.message());
    }
}

QemuRuntime::~QemuRuntime() = default;

void QemuRuntime::post(Done done, Status st) {
    boost::asio::post(io_, [done = std::move(done), st = std::move(st)] { done(st); });
}

QemuRuntime::Vm* QemuRuntime::find(const core::InstanceRef& ref) {
    auto it = vms_.find(ref.machine);
    return it != vms_.end() && it->second.generation == ref.generation ? &it->second : nullptr;
}

// ---- specs -----------------------------------------------------------------------------

Status QemuRuntime::lookup_image(const std::string& name, const std::string& kind,
                                 DiskImage& out) const {
    Status st = image_lookup_ ? image_lookup_(name, kind, out)
                              : Status{Errc::unavailable, "this hangard has no image store"};
    if (!st) {
        return {st.code() == Errc::not_found ? Errc::invalid_spec : st.code(),
                std::string(kind == "iso" ? "cdrom: " : "image: ") + st.message() +
                    " (GET /v1/images lists the local images)"};
    }
    return {};
}

Status QemuRuntime::validate(MachineSpec& spec, const core::Privilege& who) const {
    if (!spec.boot.command.empty()) {
        return {Errc::invalid_spec, "boot.command is for containers"};
    }
    if (!spec.firmware.empty() && spec.firmware != "bios" && spec.firmware != "uefi") {
        return {Errc::invalid_spec, "firmware must be \"bios\" or \"uefi\""};
    }
    if (spec.firmware == "uefi") {
        if (!uefi_status_) {
            return uefi_status_;
        }
        if (spec.memory_mib < kMinUefiMemoryMib) {
            return {Errc::invalid_spec, "a UEFI VM needs memory_mib " +
                                            std::to_string(kMinUefiMemoryMib) +
                                            " or more (OVMF fails in less)"};
        }
    }
    if (!spec.image.empty()) {
        if (Status st = check_name("image", spec.image); !st) {
            return st;
        }
        if (!spec.boot.disk.empty()) {
            return {Errc::invalid_spec,
                    "a VM made from an image boots from its root disk: give image or boot.disk, "
                    "not both"};
        }
        DiskImage img;
        if (Status st = lookup_image(spec.image, "disk", img); !st) {
            return st;
        }
        uint64_t need = (img.virtual_size + kGiB - 1) / kGiB;
        if (spec.disk_gib == 0) {
            spec.disk_gib = static_cast<uint32_t>(std::max<uint64_t>(need, 1));
        }
        if (spec.disk_gib < need || spec.disk_gib > kMaxDiskGib) {
            return {Errc::invalid_spec,
                    "disk_gib must be at least the image's size (" + std::to_string(need) +
                        " GiB: a disk is never shrunk) and at most " + std::to_string(kMaxDiskGib)};
        }
    } else if (spec.disk_gib != 0) {
        return {Errc::invalid_spec, "disk_gib is the size of a root disk made from an image"};
    }
    if (spec.boot.cmdline.size() > kMaxCmdline) {
        return {Errc::invalid_spec,
                "boot.cmdline is longer than " + std::to_string(kMaxCmdline) + " bytes"};
    }
    if (!spec.cdrom.empty()) {
        if (Status st = check_name("cdrom", spec.cdrom); !st) {
            return st;
        }
        DiskImage iso;
        if (Status st = lookup_image(spec.cdrom, "iso", iso); !st) {
            return st;
        }
    }
    // No boot source at all: the built-in guest (a CD-ROM alone boots from the CD).
    if (spec.boot.kernel.empty() && spec.boot.disk.empty() && spec.image.empty() &&
        spec.cdrom.empty()) {
        if (!spec.boot.initrd.empty()) {
            return {Errc::invalid_spec, "boot.initrd needs boot.kernel"};
        }
        if (cfg_.default_boot.kernel.empty()) {
            return {Errc::unavailable,
                    "no boot source given and the built-in guest was not found (build it with "
                    "scripts/build-guest.sh, or pass --guest-dir)"};
        }
        std::string cmdline = spec.boot.cmdline;
        spec.boot = cfg_.default_boot;
        if (!cmdline.empty()) {
            spec.boot.cmdline = cmdline;
        }
    }
    BootFiles files;
    return open_boot_files(spec, who, files);
}

Status QemuRuntime::open_boot_files(const MachineSpec& spec, const core::Privilege& who,
                                    BootFiles& out) const {
    FileAccess user{who.owner, who.privileged};
    struct File {
        const char* what;
        const std::string& path;
        const std::string& builtin;
        bool writable;
        uint64_t max;
        OpenedFile& out;
    };
    for (const File& f : {File{"boot.kernel", spec.boot.kernel, cfg_.default_boot.kernel, false,
                               kMaxKernelBytes, out.kernel},
                          File{"boot.initrd", spec.boot.initrd, cfg_.default_boot.initrd, false,
                               kMaxInitrdBytes, out.initrd},
                          File{"boot.disk", spec.boot.disk, cfg_.default_boot.disk, true,
                               kMaxDiskBytes, out.disk}}) {
        if (f.path.empty()) {
            continue;
        }
        FileAccess as = user;
        as.as_daemon = user.as_daemon || f.path == f.builtin;
        if (Status st = open_user_file(f.what, f.path, as, f.writable, f.max, f.out); !st) {
            return st;
        }
    }
    out.disk_format = disk_format(spec.boot.disk);
    if (out.disk.fd && out.disk_format == "qcow2") {
        Qcow2Refs refs;
        if (Status st = read_qcow2_refs(out.disk.fd.get(), refs); !st) {
            return {Errc::invalid_spec,
                    "boot.disk " + json::quote(spec.boot.disk) + ": " + st.message()};
        }
        if ((!refs.backing_file.empty() || refs.data_file) && !user.as_daemon) {
            return {Errc::invalid_spec,
                    "boot.disk " + json::quote(spec.boot.disk) + " names " +
                        (refs.data_file ? std::string("an external data file")
                                        : "a backing file " + json::quote(refs.backing_file)) +
                        ": refused, since QEMU would open it with hangard's rights (use a "
                        "self-contained image: qemu-img convert -O qcow2)"};
        }
        if (!refs.backing_file.empty() || refs.data_file) {
            // An admin's image chain: QEMU opens it by name, resolving the chain itself.
            out.disk.fd.reset();
        }
    }
    return {};
}

Status QemuRuntime::admit(const MachineSpec& spec) const {
    if (spec.image.empty()) {
        return {};
    }
    DiskImage img;
    if (Status st = lookup_image(spec.image, "disk", img); !st) {
        return st;
    }
    // The root disk grows to disk_gib: there must be room for all of it.
    struct statvfs fs {};
    if (statvfs(cfg_.machines_dir.c_str(), &fs) == 0) {
        uint64_t free = static_cast<uint64_t>(fs.f_bavail) * fs.f_frsize;
        uint64_t size = uint64_t(spec.disk_gib) * kGiB;
        if (size > free) {
            return {Errc::invalid_spec, "the root disk (" + std::to_string(spec.disk_gib) +
                                            " GiB) does not fit in the free space of " +
                                            cfg_.machines_dir.string() + " (" +
                                            std::to_string(free / kGiB) + " GiB free)"};
        }
    }
    return {};
}

void QemuRuntime::prepare_uefi_vars(const MachineSpec& spec,
                                    std::function<void(const Status&, const UefiFlash&)> done) {
    UefiFlash flash;
    if (spec.firmware != "uefi") {
        return boost::asio::post(io_, [done, flash] { done({}, flash); });
    }
    if (!uefi_status_) {
        return boost::asio::post(io_, [done, flash, st = uefi_status_] { done(st, flash); });
    }
    flash = {uefi_.code, uefi_.code_format,
             MachineFiles(cfg_.machines_dir / spec.name).uefi_vars().string(), uefi_.vars_format};
    if (::access(flash.vars.c_str(), F_OK) == 0) {
        return boost::asio::post(io_, [done, flash] { done({}, flash); });
    }
    std::string tmp = flash.vars + ".new";
    run_command(io_, {"cp", "--", uefi_.vars_template, tmp}, 64 * 1024,
                [tmp, flash, done](const Status& st, const ExitInfo& exit, std::string out) {
                    if (!st || exit.code != 0 || exit.signal != 0 ||
                        ::rename(tmp.c_str(), flash.vars.c_str()) != 0) {
                        ::unlink(tmp.c_str());
                        return done({Errc::internal, "copying the UEFI variables template: " +
                                                         (st ? tail_of(out) : st.message())},
                                    flash);
                    }
                    done({}, flash);
                });
}

void QemuRuntime::prepare_root_disk(const MachineSpec& spec,
                                    std::function<void(const Status&, const RootDisk&)> done) {
    RootDisk root;
    if (spec.image.empty()) {
        return boost::asio::post(io_, [done, root] { done({}, root); });
    }
    DiskImage img;
    if (Status st = lookup_image(spec.image, "disk", img); !st) {
        return boost::asio::post(io_, [done, st, root] { done(st, root); });
    }
    MachineFiles files(cfg_.machines_dir / spec.name);
    if (std::string top = root_disk_ ? root_disk_(spec.name) : ""; !top.empty()) {
        // A top that snapshots made: QEMU opens the chain its headers name (hangard's files).
        root.overlay = top;
        if (::access(top.c_str(), F_OK) != 0) {
            Status st{Errc::internal, "the root disk " + top + " is missing"};
            return boost::asio::post(io_, [done, st, root] { done(st, root); });
        }
        return boost::asio::post(io_, [done, root] { done({}, root); });
    }
    root.overlay = files.root_disk().string();
    root.base = img.path;
    root.base_format = img.format;
    if (::access(root.overlay.c_str(), F_OK) == 0) {
        return boost::asio::post(io_, [done, root] { done({}, root); });
    }
    // The backing file is named relative to the overlay, so the state dir may move; QEMU is
    // given the chain by hangard, and qemu-img reads the name only here, to check it.
    std::string rel = std::filesystem::path(img.path)
                          .lexically_relative(files.root_disk().parent_path())
                          .string();
    std::string tmp = root.overlay + ".new";
    ::unlink(tmp.c_str());
    run_command(
        io_,
        {"qemu-img", "create", "-q", "-f", "qcow2", "-F", img.format, "-b", rel, tmp,
         std::to_string(uint64_t(spec.disk_gib) * kGiB)},
        64 * 1024,
        [name = spec.name, tmp, root, done](const Status& st, const ExitInfo& exit,
                                            std::string out) {
            if (!st || exit.code != 0 || exit.signal != 0) {
                ::unlink(tmp.c_str());
                return done({Errc::internal, "making the root disk (qemu-img create): " +
                                                 (st ? tail_of(out) : st.message())},
                            root);
            }
            if (::rename(tmp.c_str(), root.overlay.c_str()) != 0) {
                return done({Errc::internal, "rename " + tmp + ": " + strerror(errno)}, root);
            }
            spdlog::info("{}: root disk {} made on {}", name, root.overlay, root.base);
            done({}, root);
        });
}

Status QemuRuntime::supports(core::Capability c, const std::string& machine) const {
    if (c == core::Capability::exec) {
        return {Errc::invalid_spec, "exec runs commands in containers; " + machine + " is a VM"};
    }
    return {};
}

// ---- start / stop ----------------------------------------------------------------------

QemuProcess::Callbacks QemuRuntime::callbacks(const core::InstanceRef& ref) {
    QemuProcess::Callbacks cb;
    cb.on_event = [this, ref](std::string_view event, simdjson::dom::element msg) {
        if (event == "BLOCK_JOB_COMPLETED" || event == "BLOCK_JOB_CANCELLED") {
            std::string_view id, error;
            json::try_get(msg.at_pointer("/data/device"), id);
            json::try_get(msg.at_pointer("/data/error"), error);
            Vm* vm = find(ref);
            if (!vm) {
                return;
            }
            auto it = vm->jobs.find(std::string(id));
            if (it == vm->jobs.end()) {
                return;
            }
            auto job = std::move(it->second);
            vm->jobs.erase(it);
            if (event == "BLOCK_JOB_CANCELLED") {
                return job({Errc::internal, "block job " + std::string(id) + " was cancelled"});
            }
            return job(error.empty()
                           ? Status{}
                           : Status{Errc::internal, "block-stream: " + std::string(error)});
        }
        std::string detail;
        if (event == "DEVICE_DELETED") {
            std::string_view device;
            json::try_get(msg.at_pointer("/data/device"), device);
            detail = device;  // "" for objects without an id (their path only)
        } else if (event == "MIGRATION") {
            std::string_view status;
            json::try_get(msg.at_pointer("/data/status"), status);
            detail = status;
        } else if (event == "SHUTDOWN" || event == "RESET") {
            bool guest = false;
            std::string_view why;
            json::try_get(msg.at_pointer("/data/guest"), guest);
            json::try_get(msg.at_pointer("/data/reason"), why);
            detail = std::string("guest=") + (guest ? "true" : "false");
            if (!why.empty()) {
                detail += " reason=" + std::string(why);
            }
        }
        on_event(ref, event, detail);
    };
    cb.on_exit = [this, ref](const ExitInfo& info) {
        Vm* vm = find(ref);
        if (!vm) {
            return;
        }
        if (auto then = std::exchange(vm->migration, nullptr)) {
            boost::asio::post(io_, [then = std::move(then)] { then("failed"); });
        }
        for (auto& [id, job] : std::exchange(vm->jobs, {})) {
            boost::asio::post(io_, [job = std::move(job)] {
                job({Errc::unavailable, "QEMU ended during the block job"});
            });
        }
        core::ExitFact f;
        f.how = "pidfd:exit " + info.describe();
        // An adopted QEMU is not our child: its status is unknown, so never "clean".
        f.clean = info.known && info.signal == 0 && info.code == 0;
        f.reason = std::move(vm->reason);
        if (vm->incoming && f.reason.empty()) {
            f.reason = "qemu: the snapshot's memory could not be loaded (see qemu.log)";
        }
        f.crash = vm->crash;
        auto keep = std::move(vm->proc);  // its callback is running
        vms_.erase(ref.machine);
        if (sink_) {
            sink_->on_exited(ref, f);
        }
    };
    cb.on_responsive = [this, ref](bool ok, const std::string& why) {
        if (find(ref) && sink_) {
            sink_->on_responsive(ref, ok, why);
        }
    };
    return cb;
}

Status QemuRuntime::start(const MachineSpec& spec, const core::InstanceRef& ref,
                          const core::Privilege& who, Done failed) {
    auto files = std::make_shared<BootFiles>();
    if (Status st = open_boot_files(spec, who, *files); !st) {
        return st;
    }
    std::string resume = resume_from_ ? resume_from_(spec.name) : "";
    if (!resume.empty()) {
        files->incoming = UniqueFd(::open(resume.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
        if (!files->incoming) {
            return {Errc::internal, "open " + resume + ": " + std::strerror(errno)};
        }
    }
    Vm& vm = vms_[ref.machine];
    vm = Vm{};
    vm.generation = ref.generation;
    vm.incoming = !resume.empty();
    // The VM's own files first (its UEFI variables, its root disk), then QEMU.
    auto fail = [this, ref, failed](const Status& st) {
        if (find(ref)) {
            vms_.erase(ref.machine);
            failed(st);
        }
    };
    prepare_uefi_vars(
        spec, [this, spec, ref, files, fail, failed](const Status& st, const UefiFlash& uefi) {
            if (!find(ref) || !st) {
                return fail(st);
            }
            prepare_root_disk(spec, [this, spec, ref, files, uefi, fail, failed](
                                        const Status& st, const RootDisk& root) {
                if (!find(ref) || !st) {
                    return fail(st);  // not found: killed or forgotten meanwhile
                }
                // A kill meanwhile (kill_pending) ends QEMU as soon as it is launched.
                launch(spec, ref, *files, root, uefi, failed);
            });
        });
    return {};
}

void QemuRuntime::launch(const MachineSpec& spec, const core::InstanceRef& ref,
                         const BootFiles& files, const RootDisk& root, const UefiFlash& uefi,
                         Done failed) {
    std::string cdrom;
    if (DiskImage iso; !spec.cdrom.empty() && lookup_image(spec.cdrom, "iso", iso)) {
        cdrom = iso.path;
    }
    QemuProcess::BootFiles fds{
        files.kernel.fd.get(),
        files.initrd.fd.get(),
        files.disk.fd.get(),
        files.incoming.get(),
        files.disk_format,
        root,
        uefi,
        attached_disks_ ? attached_disks_(spec.name) : std::vector<core::DiskAttachment>{},
        cdrom};
    QemuProcess::launch(
        io_, cfg_.qemu, spec, MachinePaths(cfg_.machines_dir / spec.name), fds, callbacks(ref),
        [this, ref, failed = std::move(failed)](const Status& st,
                                                std::shared_ptr<QemuProcess> proc) {
            Vm* vm = find(ref);
            if (!vm) {
                if (proc) {
                    proc->signal(SIGKILL);
                }
                return;
            }
            if (!st) {
                vms_.erase(ref.machine);
                return failed(st);
            }
            vm->proc = std::move(proc);
            vm->console = ConsoleLink(
                io_, MachinePaths(cfg_.machines_dir / ref.machine).console_socket(), ref.machine);
            if (sink_) {
                sink_->on_pid(ref, vm->proc->pid());
            }
            if (vm->kill_pending) {
                vm->proc->signal(SIGKILL);
                return;
            }
            // The RESUME event that follows is `running`.
            vm->proc->execute("cont", {}, [this, ref](const Status& st, std::string_view) {
                Vm* vm = find(ref);
                // A lost connection is QEMU going away (its exit says how) or QMP dropping
                // (reported as unresponsive): neither is this start's failure to tell.
                if (!st && st.code() != Errc::unavailable && vm && vm->proc) {
                    spdlog::warn("{}: cont failed: {}", ref.machine, st.message());
                    vm->reason = "api:start failed: " + st.message();
                    vm->proc->signal(SIGKILL);
                }
            });
        });
}

void QemuRuntime::stop(const core::InstanceRef& ref, std::chrono::seconds timeout,
                       const std::string&) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return;
    }
    vm->timer = std::make_unique<boost::asio::steady_timer>(io_);
    vm->timer->expires_after(timeout);
    vm->timer->async_wait([this, ref, timeout](boost::system::error_code ec) {
        Vm* vm = ec ? nullptr : find(ref);
        if (vm) {
            force_quit(*vm, ref,
                       "api:stop: guest did not power off within " +
                           std::to_string(timeout.count()) + " s");
        }
    });
    // A paused guest cannot see the power button: it stays paused until the timeout.
    vm->proc->execute("system_powerdown", {}, [this, ref](const Status& st, std::string_view) {
        Vm* vm = st ? nullptr : find(ref);
        if (vm) {
            force_quit(*vm, ref, "api:stop: system_powerdown failed (" + st.message() + ")");
        }
    });
}

void QemuRuntime::force_quit(Vm& vm, const core::InstanceRef& ref, const std::string& why) {
    if (!vm.proc || vm.proc->exited()) {
        return;
    }
    if (vm.reason.empty()) {
        vm.reason = why;
    }
    if (vm.quit_sent) {
        return;
    }
    vm.quit_sent = true;
    // quit, and SIGKILL if QEMU does not exit within the command deadline.
    vm.timer = std::make_unique<boost::asio::steady_timer>(io_);
    vm.timer->expires_after(cfg_.qemu.command_timeout);
    vm.timer->async_wait([this, ref](boost::system::error_code ec) {
        Vm* vm = ec ? nullptr : find(ref);
        if (vm && vm->proc) {
            spdlog::warn("{}: QEMU did not quit; sending SIGKILL", ref.machine);
            vm->reason += ", killed";
            vm->proc->signal(SIGKILL);
        }
    });
    vm.proc->execute("quit", {}, [](const Status&, std::string_view) {});
}

void QemuRuntime::kill(const core::InstanceRef& ref, Done done) {
    if (Vm* vm = find(ref)) {
        if (vm->proc) {
            vm->proc->signal(SIGKILL);
        } else {
            vm->kill_pending = true;  // as soon as it is launched
        }
    }
    post(std::move(done), {});
}

void QemuRuntime::run_steps(const core::InstanceRef& ref,
                            std::vector<std::pair<std::string, std::string>> steps,
                            std::function<void(const Status&, size_t)> done) {
    auto left = std::make_shared<decltype(steps)>(std::move(steps));
    auto next = std::make_shared<std::function<void(size_t)>>();
    *next = [this, ref, left, next, done](size_t i) {
        auto end = [next, done](const Status& st, size_t at) {
            auto keep = *next;  // this lambda lives in *next: clear it only from a copy
            *next = nullptr;    // the cycle through the captures ends
            done(st, at);
        };
        if (i == left->size()) {
            return end({}, i);
        }
        Vm* vm = find(ref);
        if (!vm || !vm->proc) {
            return end({Errc::invalid_state, "QEMU is not running"}, i);
        }
        const auto& [cmd, args] = (*left)[i];
        vm->proc->execute(cmd, args, [next, end, i](const Status& st, std::string_view) {
            if (!st) {
                return end(st, i);
            }
            auto keep = *next;
            keep(i + 1);
        });
    };
    auto first = *next;
    first(0);
}

namespace {
// blockdev-del of `nodes`, last first (a format node before its file node).
std::vector<std::pair<std::string, std::string>> deletions(const std::vector<std::string>& nodes) {
    std::vector<std::pair<std::string, std::string>> out;
    for (auto it = nodes.rbegin(); it != nodes.rend(); ++it) {
        out.emplace_back("blockdev-del", "{\"node-name\":" + json::quote(*it) + "}");
    }
    return out;
}
// An attached disk's nodes in the order they are added.
std::vector<std::string> node_names(const std::string& disk, bool base) {
    std::string n = disk_node(disk);
    if (base) {
        return {n + "-bf", n + "-b", n + "-f", n};
    }
    return {n + "-f", n};
}
}  // namespace

void QemuRuntime::attach_disk(const core::InstanceRef& ref, const core::DiskAttachment& disk,
                              Done done) {
    std::vector<std::pair<std::string, std::string>> steps;
    for (auto& node : disk_blockdevs(disk)) {
        steps.emplace_back("blockdev-add", std::move(node));
    }
    steps.emplace_back("device_add",
                       "{\"driver\":\"scsi-hd\",\"drive\":" + json::quote(disk_node(disk.name)) +
                           ",\"id\":" + json::quote(disk_device(disk.name)) +
                           ",\"bus\":\"scsi0.0\"}");
    auto nodes = node_names(disk.name, !disk.base.empty());
    run_steps(ref, std::move(steps), [this, ref, nodes, done](const Status& st, size_t at) {
        if (st) {
            return done({});
        }
        // Undo the nodes added before the failed step.
        std::vector<std::string> added(nodes.begin(), nodes.begin() + std::min(at, nodes.size()));
        run_steps(ref, deletions(added), [done, st](const Status&, size_t) {
            done({st.code() == Errc::internal ? Errc::invalid_state : st.code(),
                  "hot-plugging the disk: " + st.message()});
        });
    });
}

void QemuRuntime::detach_disk(const core::InstanceRef& ref, const std::string& disk,
                              std::chrono::seconds deadline, Done done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return post(std::move(done), {Errc::invalid_state, "QEMU is not running"});
    }
    std::string device = disk_device(disk);
    auto finished = std::make_shared<bool>(false);
    auto timer = std::make_shared<boost::asio::steady_timer>(io_);
    // Once the device is gone: its nodes, then its base image's if it has them (deleting
    // nodes that do not exist fails harmlessly).
    vm->unplugging[device] = [this, ref, disk, done, finished, timer] {
        timer->cancel();
        run_steps(ref, deletions(node_names(disk, false)),
                  [this, ref, disk, done, finished](const Status& st, size_t) {
                      auto base = node_names(disk, true);
                      run_steps(
                          ref, deletions({base[0], base[1]}),
                          [this, ref, disk, done, finished, st](const Status&, size_t) {
                              if (*finished) {
                                  // Released after the detach's deadline: told now.
                                  if (sink_ && find(ref)) {
                                      sink_->on_disk_released(ref, disk);
                                  }
                                  return;
                              }
                              *finished = true;
                              done(st ? Status{}
                                      : Status{Errc::internal, "blockdev-del: " + st.message()});
                          });
                  });
    };
    timer->expires_after(deadline);
    timer->async_wait([done, finished, deadline](boost::system::error_code ec) {
        if (ec || *finished) {
            return;
        }
        // device_del stays asked: when the guest releases the disk later, DEVICE_DELETED
        // still completes the detach (on_disk_released).
        *finished = true;
        done({Errc::timeout, "the guest did not release the disk within " +
                                 std::to_string(deadline.count()) +
                                 " s; the detach stays pending until it does"});
    });
    vm->proc->execute(
        "device_del", "{\"id\":" + json::quote(device) + "}",
        [this, ref, device, done, finished, timer](const Status& st, std::string_view) {
            if (st || *finished) {
                return;  // DEVICE_DELETED follows
            }
            *finished = true;
            timer->cancel();
            if (Vm* vm = find(ref)) {
                vm->unplugging.erase(device);
            }
            done({Errc::invalid_state, "device_del: " + st.message()});
        });
}

void QemuRuntime::top_nodes(
    const core::InstanceRef& ref,
    std::function<void(const Status&, std::map<std::string, std::string>)> done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return boost::asio::post(io_, [done] {
            done({Errc::invalid_state, "QEMU is not running"}, {});
        });
    }
    vm->proc->execute("query-block", "", [done](const Status& st, std::string_view result) {
        std::map<std::string, std::string> out;
        if (!st) {
            return done({Errc::invalid_state, "query-block: " + st.message()}, out);
        }
        simdjson::dom::parser parser;
        simdjson::dom::array devices;
        if (parser.parse(result.data(), result.size()).get(devices) != simdjson::SUCCESS) {
            return done({Errc::internal, "query-block: an answer that is not an array"}, out);
        }
        constexpr std::string_view kPeripheral = "/machine/peripheral/";
        for (auto d : devices) {
            std::string_view qdev, node;
            if (d["qdev"].get(qdev) != simdjson::SUCCESS ||
                d["inserted"]["node-name"].get(node) != simdjson::SUCCESS) {
                continue;
            }
            // A device's id, or the QOM path of its backend ("/machine/peripheral/ID/...").
            if (qdev.substr(0, kPeripheral.size()) == kPeripheral) {
                qdev.remove_prefix(kPeripheral.size());
                qdev = qdev.substr(0, qdev.find('/'));
            }
            out[std::string(qdev)] = node;
        }
        done({}, std::move(out));
    });
}

void QemuRuntime::merge_layers(const core::InstanceRef& ref,
                               const std::vector<core::LayerMerge>& merges, MergeDone done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return boost::asio::post(io_, [done] {
            done({Errc::invalid_state, "QEMU is not running"}, {});
        });
    }
    // A merge that a hangard before this one started may still run in QEMU (jobs outlive the
    // monitor connection): it is waited for, by its events, before the graph is read.
    vm->proc->execute(
        "query-block-jobs", "",
        [this, ref, merges, done](const Status& st, std::string_view result) {
            Vm* vm = find(ref);
            if (!vm || !vm->proc) {
                return done({Errc::invalid_state, "QEMU is not running"}, {});
            }
            simdjson::dom::parser parser;
            simdjson::dom::array jobs;
            std::vector<std::string> running;
            if (st && parser.parse(result.data(), result.size()).get(jobs) == simdjson::SUCCESS) {
                for (auto j : jobs) {
                    std::string_view id;
                    if (j["device"].get(id) == simdjson::SUCCESS && id.rfind("merge", 0) == 0 &&
                        !vm->jobs.count(std::string(id))) {
                        running.emplace_back(id);
                    }
                }
            }
            if (running.empty()) {
                return merge_now(ref, merges, done);
            }
            spdlog::info("{}: waiting for {} block job(s) an earlier hangard started", ref.machine,
                         running.size());
            auto left = std::make_shared<size_t>(running.size());
            for (const auto& id : running) {
                vm->jobs[id] = [this, ref, merges, done, left](const Status&) {
                    if (--*left == 0) {
                        merge_now(ref, merges, done);
                    }
                };
            }
        });
}

void QemuRuntime::merge_now(const core::InstanceRef& ref,
                            const std::vector<core::LayerMerge>& merges, MergeDone done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return done({Errc::invalid_state, "QEMU is not running"}, {});
    }
    vm->proc->execute(
        "query-named-block-nodes", "{\"flat\":true}",
        [this, ref, merges, done](const Status& st, std::string_view result) {
            if (!st) {
                return done({Errc::invalid_state, "query-named-block-nodes: " + st.message()}, {});
            }
            simdjson::dom::parser parser;
            simdjson::dom::array nodes;
            if (parser.parse(result.data(), result.size()).get(nodes) != simdjson::SUCCESS) {
                return done({Errc::internal, "query-named-block-nodes: not an array"}, {});
            }
            // Format nodes by their file (QEMU joins a backing name to its overlay's
            // directory: compared as canonical paths), and every node of a file.
            auto canon = [](std::string_view f) {
                std::error_code ec;
                return std::filesystem::weakly_canonical(std::string(f), ec).string();
            };
            std::map<std::string, std::string> format_node;
            std::map<std::string, std::vector<std::string>> all_nodes;
            for (auto n : nodes) {
                std::string_view drv, name, file;
                if (n["drv"].get(drv) != simdjson::SUCCESS ||
                    n["node-name"].get(name) != simdjson::SUCCESS ||
                    n["file"].get(file) != simdjson::SUCCESS) {
                    continue;
                }
                // A node whose backing hangard set (blockdev-snapshot) names itself in a
                // "json:{...}" filename: its file is that object's file.filename.
                std::string pseudo;
                if (file.rfind("json:", 0) == 0) {
                    simdjson::dom::parser inner;
                    simdjson::dom::element o;
                    std::string_view name_of;
                    pseudo = std::string(file.substr(5));
                    if (inner.parse(pseudo).get(o) == simdjson::SUCCESS &&
                        o.at_pointer("/file/filename").get(name_of) == simdjson::SUCCESS) {
                        pseudo = std::string(name_of);
                        file = pseudo;
                    }
                }
                std::string c = canon(file);
                if (drv != "file") {
                    format_node[c] = name;
                }
                all_nodes[c].emplace_back(name);
            }
            auto offline = std::make_shared<std::vector<size_t>>();
            auto todo = std::make_shared<std::vector<size_t>>();
            for (size_t i = 0; i < merges.size(); ++i) {
                (format_node.count(canon(merges[i].child)) ? *todo : *offline).push_back(i);
            }
            auto next = std::make_shared<std::function<void(size_t)>>();
            *next = [this, ref, merges, done, offline, todo, next, format_node, all_nodes,
                     canon](size_t k) {
                auto end = [next, done, offline](const Status& st) {
                    auto keep = *next;
                    *next = nullptr;
                    done(st, st ? *offline : std::vector<size_t>{});
                };
                if (k == todo->size()) {
                    return end({});
                }
                const auto& m = merges[(*todo)[k]];
                Vm* vm = find(ref);
                if (!vm || !vm->proc) {
                    return end({Errc::invalid_state, "QEMU is not running"});
                }
                std::string job = "merge" + random_hex(4);
                json::Writer w;
                w.begin_object()
                    .field("job-id", job)
                    .field("device", format_node.at(canon(m.child)));
                if (!m.base.empty()) {
                    auto b = format_node.find(canon(m.base));
                    if (b == format_node.end()) {
                        return end({Errc::internal, "QEMU does not hold " + m.base});
                    }
                    w.field("base-node", b->second).field("backing-file", m.base_name);
                }
                w.end_object();
                auto t0 = std::chrono::steady_clock::now();
                // The layer's nodes that hangard added (the rest go with their parents).
                std::vector<std::string> layer_nodes;
                if (auto it = all_nodes.find(canon(m.layer)); it != all_nodes.end()) {
                    layer_nodes = it->second;
                    auto f = format_node.find(canon(m.layer));
                    if (f != format_node.end()) {  // the format node before its file node
                        std::erase(layer_nodes, f->second);
                        layer_nodes.insert(layer_nodes.begin(), f->second);
                    }
                }
                vm->jobs[job] = [this, ref, next, end, k, t0, layer_nodes, m](const Status& st) {
                    if (!st) {
                        return end(st);
                    }
                    spdlog::info("{}: {} merged into {} in {:.1f} ms (block-stream)", ref.machine,
                                 m.layer, m.child,
                                 std::chrono::duration<double, std::milli>(
                                     std::chrono::steady_clock::now() - t0)
                                     .count());
                    std::vector<std::pair<std::string, std::string>> dels;
                    for (const auto& n : layer_nodes) {
                        if (n.rfind("#", 0) != 0) {
                            dels.emplace_back("blockdev-del",
                                              "{\"node-name\":" + json::quote(n) + "}");
                        }
                    }
                    // Best effort, each on its own: a node still in use stays until QEMU ends.
                    for (auto& d : dels) {
                        run_steps(ref, {d}, [](const Status&, size_t) {});
                    }
                    auto keep = *next;
                    keep(k + 1);
                };
                vm->proc->execute("block-stream", w.str(),
                                  [this, ref, job, end](const Status& st, std::string_view) {
                                      if (st) {
                                          return;  // BLOCK_JOB_COMPLETED ends it
                                      }
                                      if (Vm* vm = find(ref)) {
                                          vm->jobs.erase(job);
                                      }
                                      end({Errc::invalid_state, "block-stream: " + st.message()});
                                  });
            };
            auto first = *next;
            first(0);
        });
}

void QemuRuntime::resize_disk(const core::InstanceRef& ref, const std::string& disk, uint64_t bytes,
                              Done done) {
    // The node the device writes: the disk's own, or the top a snapshot put on it.
    top_nodes(ref, [this, ref, disk, bytes, done](const Status& st,
                                                  std::map<std::string, std::string> tops) {
        if (!st) {
            return done(st);
        }
        auto it = tops.find(disk_device(disk));
        std::string node = it == tops.end() ? disk_node(disk) : it->second;
        run_steps(ref,
                  {{"block_resize", "{\"node-name\":" + json::quote(node) +
                                        ",\"size\":" + std::to_string(bytes) + "}"}},
                  [done](const Status& st, size_t) {
                      done(st ? st : Status{Errc::invalid_state, "block_resize: " + st.message()});
                  });
    });
}

Status QemuRuntime::overlay_steps(const std::vector<core::DiskOverlay>& overlays,
                                  const std::map<std::string, std::string>& tops,
                                  OverlaySteps& out) {
    for (const auto& o : overlays) {
        std::string dev = o.disk.empty() ? "root" : disk_device(o.disk);
        auto it = tops.find(dev);
        if (it == tops.end()) {
            return {Errc::invalid_state, "QEMU has no block device " + dev + " for " +
                                             (o.disk.empty() ? "the root disk" : "disk " + o.disk)};
        }
        std::string node = "s" + random_hex(5);
        out.adds.emplace_back("blockdev-add",
                              "{\"driver\":\"qcow2\",\"node-name\":" + json::quote(node) +
                                  ",\"file\":{\"driver\":\"file\",\"filename\":" +
                                  json::quote(o.file) + "},\"backing\":null}");
        out.added.push_back(node);
        out.actions +=
            std::string(out.actions.empty() ? "" : ",") +
            "{\"type\":\"blockdev-snapshot\",\"data\":{\"node\":" + json::quote(it->second) +
            ",\"overlay\":" + json::quote(node) + "}}";
    }
    return {};
}

void QemuRuntime::snapshot_disks(const core::InstanceRef& ref,
                                 const std::vector<core::DiskOverlay>& overlays, Done done) {
    top_nodes(ref, [this, ref, overlays, done](const Status& st,
                                               std::map<std::string, std::string> tops) {
        if (!st) {
            return done(st);
        }
        OverlaySteps o;
        if (Status st = overlay_steps(overlays, tops, o); !st) {
            return done(st);
        }
        auto& steps = o.adds;
        auto& added = o.added;
        auto& actions = o.actions;
        steps.emplace_back("transaction", "{\"actions\":[" + actions + "]}");
        size_t adds = added.size();
        auto t0 = std::chrono::steady_clock::now();
        run_steps(
            ref, std::move(steps), [this, ref, added, adds, done, t0](const Status& st, size_t at) {
                if (st) {
                    spdlog::info("{}: {} disk overlays added and snapshotted in {:.1f} ms (QMP)",
                                 ref.machine, adds,
                                 std::chrono::duration<double, std::milli>(
                                     std::chrono::steady_clock::now() - t0)
                                     .count());
                    return done({});
                }
                // What was added goes again; the old tops are untouched.
                std::vector<std::string> undo(added.begin(), added.begin() + std::min(at, adds));
                run_steps(ref, deletions(undo), [](const Status&, size_t) {});
                done({Errc::invalid_state, "snapshot (QMP): " + st.message()});
            });
    });
}

void QemuRuntime::snapshot_with_memory(const core::InstanceRef& ref,
                                       const std::vector<core::DiskOverlay>& overlays,
                                       int memory_fd, MemoryDone done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return boost::asio::post(io_, [done] {
            done({Errc::invalid_state, "QEMU is not running"}, {});
        });
    }
    if (vm->migration) {
        return boost::asio::post(io_, [done] {
            done({Errc::busy, "a memory save is running already"}, {});
        });
    }
    // A copy of the file for getfd, kept until the command is sent.
    auto fd = std::make_shared<UniqueFd>(::fcntl(memory_fd, F_DUPFD_CLOEXEC, 3));
    if (!*fd) {
        return boost::asio::post(io_, [done, e = errno] {
            done({Errc::internal, std::string("dup: ") + std::strerror(e)}, {});
        });
    }
    top_nodes(ref, [this, ref, overlays, done, fd](const Status& st,
                                                   std::map<std::string, std::string> tops) {
        if (!st) {
            return done(st, {});
        }
        OverlaySteps o;
        if (Status st = overlay_steps(overlays, tops, o); !st) {
            return done(st, {});
        }
        auto& adds = o.adds;
        auto& added = o.added;
        auto& actions = o.actions;
        // Set up first (the guest still runs): the save's capabilities, no bandwidth cap, the
        // overlays' nodes.
        std::vector<std::pair<std::string, std::string>> setup = {
            {"migrate-set-capabilities",
             "{\"capabilities\":[{\"capability\":\"events\",\"state\":true},"
             "{\"capability\":\"background-snapshot\",\"state\":true}]}"},
            {"migrate-set-parameters", "{\"max-bandwidth\":1099511627776}"}};
        setup.insert(setup.end(), adds.begin(), adds.end());
        run_steps(
            ref, std::move(setup),
            [this, ref, added, actions, done, fd](const Status& st, size_t at) {
                auto undo_nodes = [this, ref, added](size_t n) {
                    std::vector<std::string> undo(added.begin(),
                                                  added.begin() + std::min(n, added.size()));
                    run_steps(ref, deletions(undo), [](const Status&, size_t) {});
                };
                if (!st) {
                    undo_nodes(at < 2 ? 0 : at - 2);
                    return done({Errc::invalid_state, "memory snapshot (QMP): " + st.message()},
                                {});
                }
                Vm* vm = find(ref);
                if (!vm || !vm->proc) {
                    return done({Errc::invalid_state, "QEMU is not running"}, {});
                }
                auto t0 = std::chrono::steady_clock::now();
                vm->quiet_pause = true;
                // The guest stops for the disks' cut and the start of the save; QEMU resumes it.
                std::vector<std::pair<std::string, std::string>> cut = {{"stop", ""}};
                if (!actions.empty()) {
                    cut.emplace_back("transaction", "{\"actions\":[" + actions + "]}");
                }
                run_steps(
                    ref, std::move(cut),
                    [this, ref, added, undo_nodes, done, fd, t0](const Status& st, size_t at) {
                        if (!st) {
                            (void)at;
                            undo_nodes(added.size());
                            return end_memory_save(
                                ref, {Errc::invalid_state, "snapshot (QMP): " + st.message()}, {},
                                done);
                        }
                        Vm* vm = find(ref);
                        if (!vm || !vm->proc) {
                            return done({},
                                        {Errc::unavailable, "QEMU ended during the memory save"});
                        }
                        std::string fdname = "hangar-mem";
                        vm->proc->execute_with_fd(
                            "getfd", "{\"fdname\":\"" + fdname + "\"}", fd->get(),
                            [this, ref, done, fdname, t0](const Status& st, std::string_view) {
                                if (!st) {
                                    return end_memory_save(
                                        ref, {}, {Errc::internal, "getfd: " + st.message()}, done);
                                }
                                Vm* vm = find(ref);
                                if (!vm || !vm->proc) {
                                    return done({}, {Errc::unavailable,
                                                     "QEMU ended during the memory save"});
                                }
                                vm->migration = [this, ref, done, t0](const std::string& status) {
                                    spdlog::info("{}: guest memory saved ({}) in {:.1f} ms",
                                                 ref.machine, status,
                                                 std::chrono::duration<double, std::milli>(
                                                     std::chrono::steady_clock::now() - t0)
                                                     .count());
                                    end_memory_save(
                                        ref, {},
                                        status == "completed"
                                            ? Status{}
                                            : Status{Errc::internal,
                                                     "saving the guest's memory " + status},
                                        done);
                                };
                                vm->proc->execute(
                                    "migrate", "{\"uri\":\"fd:" + fdname + "\"}",
                                    [this, ref, done](const Status& st, std::string_view) {
                                        if (st) {
                                            return;  // MIGRATION completed ends it
                                        }
                                        if (Vm* vm = find(ref)) {
                                            vm->migration = nullptr;
                                        }
                                        end_memory_save(
                                            ref, {}, {Errc::internal, "migrate: " + st.message()},
                                            done);
                                    });
                            });
                    });
            });
    });
}

void QemuRuntime::end_memory_save(const core::InstanceRef& ref, const Status& disks,
                                  const Status& memory, MemoryDone done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return done(disks,
                    disks ? (memory ? Status{Errc::unavailable, "QEMU ended during the memory save"}
                                    : memory)
                          : Status{});
    }
    vm->proc->execute(
        "query-status", "",
        [this, ref, disks, memory, done](const Status& st, std::string_view result) {
            auto over = [this, ref, disks, memory, done] {
                if (Vm* vm = find(ref)) {
                    vm->quiet_pause = false;
                }
                done(disks, memory);
            };
            simdjson::dom::parser parser;
            simdjson::dom::element o;
            bool running = false;
            if (st && parser.parse(result.data(), result.size()).get(o) == simdjson::SUCCESS) {
                json::try_get(o["running"], running);
            }
            Vm* vm = find(ref);
            if (running || !vm || !vm->proc) {
                return over();
            }
            vm->proc->execute("cont", "", [ref, over](const Status& st, std::string_view) {
                if (!st) {
                    spdlog::warn("{}: cont after the memory save: {}", ref.machine, st.message());
                }
                over();
            });
        });
}

void QemuRuntime::memory_saved(const core::InstanceRef& ref,
                               std::function<void(const Status&, bool)> done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return boost::asio::post(io_, [done] { done({}, false); });
    }
    vm->proc->execute(
        "query-migrate", "", [this, ref, done](const Status& st, std::string_view result) {
            simdjson::dom::parser parser;
            simdjson::dom::element o;
            std::string_view status;
            if (st && parser.parse(result.data(), result.size()).get(o) == simdjson::SUCCESS) {
                json::try_get(o["status"], status);
            }
            Vm* vm = find(ref);
            if (!vm || !vm->proc) {
                return done({}, false);
            }
            auto settle = [this, ref, done](const std::string& status) {
                end_memory_save(ref, {}, {}, [done, status](const Status&, const Status&) {
                    done({}, status == "completed");
                });
            };
            if (status == "setup" || status == "active" || status == "device" ||
                status == "pre-switchover") {
                spdlog::info("{}: waiting for the memory save an earlier hangard started",
                             ref.machine);
                vm->quiet_pause = true;
                vm->migration = settle;
                return;
            }
            settle(std::string(status));
        });
}

void QemuRuntime::change_cdrom(const core::InstanceRef& ref, const MachineSpec& spec, Done done) {
    DiskImage iso;
    if (!spec.cdrom.empty()) {
        if (Status st = lookup_image(spec.cdrom, "iso", iso); !st) {
            return post(std::move(done), st);
        }
    }
    // The medium's nodes are hangard's (cd0-file, cd0): out of the drive and deleted, so QEMU
    // lets go of the old file; then the new ones in.
    auto fail = [done](const char* what) {
        return [done, what](const Status& st, size_t) {
            done(st ? st : Status{Errc::invalid_state, std::string(what) + st.message()});
        };
    };
    auto insert = [this, ref, iso, done, fail] {
        if (iso.path.empty()) {
            return run_steps(ref, {{"blockdev-close-tray", "{\"id\":\"cdrom0\"}"}},
                             fail("closing the CD-ROM tray: "));
        }
        run_steps(ref,
                  {{"blockdev-add",
                    "{\"driver\":\"file\",\"node-name\":\"cd0-file\","
                    "\"filename\":" +
                        json::quote(iso.path) + ",\"read-only\":true}"},
                   {"blockdev-add",
                    "{\"driver\":\"raw\",\"node-name\":\"cd0\",\"file\":"
                    "\"cd0-file\",\"read-only\":true}"},
                   {"blockdev-insert-medium", "{\"id\":\"cdrom0\",\"node-name\":\"cd0\"}"},
                   {"blockdev-close-tray", "{\"id\":\"cdrom0\"}"}},
                  fail("changing the CD-ROM: "));
    };
    run_steps(ref,
              {{"blockdev-open-tray", "{\"id\":\"cdrom0\",\"force\":true}"},
               {"blockdev-remove-medium", "{\"id\":\"cdrom0\"}"}},
              [this, ref, insert, fail](const Status& st, size_t at) {
                  if (!st) {
                      return fail("ejecting the CD-ROM: ")(st, at);
                  }
                  // Deleting a node that is not there (an empty drive) fails harmlessly.
                  run_steps(ref, {{"blockdev-del", "{\"node-name\":\"cd0\"}"}},
                            [this, ref, insert](const Status&, size_t) {
                                run_steps(ref, {{"blockdev-del", "{\"node-name\":\"cd0-file\"}"}},
                                          [insert](const Status&, size_t) { insert(); });
                            });
              });
}

void QemuRuntime::command(const core::InstanceRef& ref, const char* command, Done done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return post(std::move(done), {Errc::invalid_state, "QEMU is not running"});
    }
    vm->proc->execute(command, {},
                      [done = std::move(done)](const Status& st, std::string_view) { done(st); });
}

void QemuRuntime::pause(const core::InstanceRef& ref, Done done) {
    command(ref, "stop", std::move(done));  // STOP is `paused`
}

void QemuRuntime::resume(const core::InstanceRef& ref, Done done) {
    command(ref, "cont", std::move(done));  // RESUME is `running`
}

void QemuRuntime::reset(const core::InstanceRef& ref, Done done) {
    command(ref, "system_reset", std::move(done));
}

void QemuRuntime::exec(const MachineSpec& spec, const core::InstanceRef&, bool, core::ExecRequest,
                       ExecDone done) {
    boost::asio::post(io_, [done = std::move(done),
                            st = supports(core::Capability::exec, spec.name)] { done(st, {}); });
}

void QemuRuntime::screenshot(const core::InstanceRef& ref, const std::string& path, Done done) {
    Vm* vm = find(ref);
    if (!vm || !vm->proc) {
        return post(std::move(done), {Errc::invalid_state, "QEMU is not running"});
    }
    // QEMU has written and closed the file when it answers.
    json::Writer args;
    args.begin_object().field("filename", path).field("format", "png").end_object();
    vm->proc->execute("screendump", args.str(),
                      [done = std::move(done)](const Status& st, std::string_view) { done(st); });
}

// ---- what QEMU says --------------------------------------------------------------------

void QemuRuntime::on_event(const core::InstanceRef& ref, std::string_view event,
                           const std::string& detail) {
    Vm* vm = find(ref);
    if (!vm || !sink_) {
        return;
    }
    if (event == "MIGRATION") {
        if (vm->incoming && detail == "failed") {
            vm->reason = "the snapshot's memory could not be loaded (see qemu.log)";
        }
        if (detail == "completed" || detail == "failed" || detail == "cancelled") {
            vm->incoming = false;
            if (auto then = std::exchange(vm->migration, nullptr)) {
                then(detail);
            }
        }
        return;
    }
    if ((event == "STOP" || event == "RESUME") && vm->quiet_pause) {
        if (event == "STOP") {
            vm->paused_at = std::chrono::steady_clock::now();
        } else {
            spdlog::info("{}: the guest was paused {:.1f} ms for the memory save", ref.machine,
                         std::chrono::duration<double, std::milli>(
                             std::chrono::steady_clock::now() - vm->paused_at)
                             .count());
        }
        return;
    }
    if (event == "DEVICE_DELETED") {
        auto it = vm->unplugging.find(detail);
        if (it != vm->unplugging.end()) {
            auto then = std::move(it->second);
            vm->unplugging.erase(it);
            then();
        }
    } else if (event == "STOP") {
        sink_->on_paused(ref, "qmp:STOP");
    } else if (event == "RESUME") {
        vm->incoming = false;
        sink_->on_running(ref, "qmp:RESUME");
    } else if (event == "SHUTDOWN") {
        // With -no-shutdown QEMU stays alive after a guest shutdown; hangar ends it.
        std::string reason = "qmp:SHUTDOWN " + detail;
        if ((vm->reason.empty() || vm->reason.rfind("api:stop", 0) == 0) &&
            detail.find("reason=host-qmp-quit") == std::string::npos) {
            vm->reason = reason;
        }
        core::StoppingFact f;
        f.reason = vm->reason.empty() ? reason : vm->reason;
        // Someone outside hangar signalled QEMU (machined's TerminateMachine, a kill -TERM).
        f.from_outside = detail.find("reason=host-signal") != std::string::npos;
        force_quit(*vm, ref, reason);
        sink_->on_stopping(ref, f);
    } else if (event == "GUEST_PANICKED") {
        vm->reason = "qmp:GUEST_PANICKED";
        vm->crash = true;
        force_quit(*vm, ref, vm->reason);
    } else if (event == "RESET") {
        spdlog::info("{}: QEMU reports RESET {}", ref.machine, detail);
        sink_->on_reset(ref, "qmp:RESET " + detail);
    } else if (event == "POWERDOWN") {
        spdlog::info("{}: QEMU reports {}", ref.machine, event);
    }
}

// ---- adoption --------------------------------------------------------------------------

void QemuRuntime::adopt(const MachineSpec& spec, MachineState stored, const core::InstanceRef& ref,
                        std::function<void(const Status&, const core::Adoption&)> done) {
    MachinePaths paths(cfg_.machines_dir / spec.name);
    if (!is_active(stored) && !std::filesystem::exists(paths.pidfile())) {
        paths.remove_runtime_files();
        return boost::asio::post(io_, [done = std::move(done)] { done({}, {}); });
    }
    Vm& vm = vms_[ref.machine];
    vm = Vm{};
    vm.generation = ref.generation;
    QemuProcess::adopt(
        io_, cfg_.qemu, spec, paths, callbacks(ref),
        [this, ref, stored, done = std::move(done)](
            const Status& st, std::shared_ptr<QemuProcess> proc, const std::string& status) {
            Vm* vm = find(ref);
            if (!vm) {
                return;
            }
            if (!st) {
                vms_.erase(ref.machine);
                return done(st, {});
            }
            vm->proc = std::move(proc);
            vm->console = ConsoleLink(
                io_, MachinePaths(cfg_.machines_dir / ref.machine).console_socket(), ref.machine);
            AdoptPlan p = plan_adoption(status, stored);
            core::Adoption a{p.fact, p.reason, vm->proc->pid()};
            if (p.quit) {
                vm->crash = p.crash;
                force_quit(*vm, ref, p.reason);
            } else if (p.cont) {
                vm->proc->execute("cont", {}, [](const Status&, std::string_view) {});
            }
            done({}, a);
        });
}

void QemuRuntime::console_input(const core::InstanceRef& ref, std::string_view bytes) {
    if (Vm* vm = find(ref)) {
        vm->console.write(bytes);
    }
}

void QemuRuntime::forget(const std::string& machine) {
    vms_.erase(machine);
}

void QemuRuntime::detach_all() {
    for (auto& [name, vm] : vms_) {
        if (vm.proc) {
            vm.proc->detach();
        }
    }
    vms_.clear();
}

}  // namespace hangar::qemu
