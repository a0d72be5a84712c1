#include "core/machines.hpp"

#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "drivers/qemu/qemu_process.hpp"
#include "hangar/names.hpp"
#include "store/db.hpp"
#include "util/json.hpp"
#include "util/time.hpp"

namespace hangar::core {

namespace {
std::string new_uuid() {
    unsigned char b[16];
    if (getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b)) {
        throw std::runtime_error("getrandom failed");
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    static constexpr char kHex[] = "0123456789abcdef";
    std::string s;
    for (int i = 0; i < 16; ++i) {
        if (i == 4 || i == 6 || i == 8 || i == 10) {
            s += '-';
        }
        s += kHex[b[i] >> 4];
        s += kHex[b[i] & 0xf];
    }
    return s;
}

bool is_active(MachineState s) {
    return s == MachineState::starting || s == MachineState::running || s == MachineState::paused ||
           s == MachineState::stopping;
}

Status check_file(const char* what, const std::string& path) {
    if (path.empty()) {
        return {};
    }
    if (path[0] != '/') {
        return {Errc::invalid_spec, std::string(what) + " must be an absolute path"};
    }
    struct stat st {};
    if (stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) {
        return {Errc::invalid_spec,
                std::string(what) + " " + json::quote(path) + " is not a readable regular file"};
    }
    return {};
}

std::string state_conflict(const Machine& m, std::string_view action) {
    return "cannot " + std::string(action) + " machine " + m.spec.name + ": it is " +
           std::string(to_string(m.state));
}
}  // namespace

std::optional<Action> parse_action(std::string_view s) {
    if (s == "start")
        return Action::start;
    if (s == "stop")
        return Action::stop;
    if (s == "kill")
        return Action::kill;
    if (s == "restart")
        return Action::restart;
    if (s == "pause")
        return Action::pause;
    if (s == "resume")
        return Action::resume;
    return std::nullopt;
}

Machines::Machines(boost::asio::io_context& io, store::Db& db, EventBus& events, MachinesConfig cfg)
    : io_(io), db_(db), events_(events), cfg_(std::move(cfg)) {}

Machines::~Machines() = default;

// ---- queries ---------------------------------------------------------------------------

Machine* Machines::find_visible(const Caller& caller, const std::string& name) const {
    auto it = machines_.find(name);
    if (it == machines_.end() || (!caller.admin && it->second->spec.owner != caller.uid)) {
        return nullptr;  // others' machines do not exist for this caller
    }
    return it->second.get();
}

Status Machines::lookup(const Caller& caller, const std::string& name, Machine** out) const {
    if (Status st = check_name("machine", name); !st) {
        return st;
    }
    *out = find_visible(caller, name);
    return *out ? Status{} : Status{Errc::not_found, "no machine named " + name};
}

Status Machines::get(const Caller& caller, const std::string& name, const Machine** out) const {
    Machine* m = nullptr;
    Status st = lookup(caller, name, &m);
    *out = m;
    return st;
}

std::vector<const Machine*> Machines::list(const Caller& caller, std::optional<MachineState> state,
                                           const std::string& type) const {
    std::vector<const Machine*> out;
    for (const auto& [name, m] : machines_) {
        if ((caller.admin || m->spec.owner == caller.uid) && (!state || m->state == *state) &&
            (type.empty() || m->spec.type == type)) {
            out.push_back(m.get());
        }
    }
    return out;
}

const std::string& Machines::to_json(const Machine& m) const {
    auto& c = m.json_cache;
    if (c.spec_rev == m.spec_rev && c.state == m.state && c.unresponsive == m.unresponsive &&
        c.pid == m.pid && c.state_reason == m.state_reason && c.op == m.op) {
        return c.json;
    }
    const auto& s = m.spec;
    json::Writer w;
    w.begin_object()
        .field("name", s.name)
        .field("uuid", s.uuid)
        .field("type", s.type)
        .field("state", to_string(m.state))
        .field("state_reason", m.state_reason)
        .field("unresponsive", m.unresponsive)
        .field("owner", s.owner)
        .field("created_at", s.created_at)
        .field("cpus", s.cpus)
        .field("memory_mib", s.memory_mib)
        .key("boot")
        .begin_object();
    if (!s.boot.kernel.empty()) {
        w.field("kernel", s.boot.kernel).field("initrd", s.boot.initrd);
        w.field("cmdline", s.boot.cmdline);
    }
    if (!s.boot.disk.empty()) {
        w.field("disk", s.boot.disk);
    }
    if (!s.boot.command.empty()) {
        w.key("command").begin_array();
        for (const auto& arg : s.boot.command) {
            w.value(arg);
        }
        w.end_array();
    }
    w.end_object();
    if (s.type == "container") {
        w.field("image", s.image);
    }
    w.key("disks")
        .begin_array()
        .end_array()
        .key("ports")
        .begin_array()
        .end_array()
        .field("autostart", s.autostart)
        .field("description", s.description)
        .field("pid", static_cast<int64_t>(m.pid));
    if (!m.op.empty()) {
        w.field("operation", m.op);
    }
    w.end_object();
    c = {w.take(), m.spec_rev, m.state, m.state_reason, m.op, m.unresponsive, m.pid};
    return c.json;
}

// ---- create / delete -------------------------------------------------------------------

Status Machines::validate(MachineSpec& spec) const {
    if (Status st = check_name("machine", spec.name); !st) {
        return st;
    }
    if (spec.type != "vm" && spec.type != "container") {
        return {Errc::invalid_spec,
                "type " + json::quote(spec.type) + " is not one of \"vm\", \"container\""};
    }
    if (spec.cpus < 1 || spec.cpus > kMaxCpus) {
        return {Errc::invalid_spec, "cpus must be between 1 and " + std::to_string(kMaxCpus)};
    }
    if (spec.memory_mib < kMinMemoryMib || spec.memory_mib > kMaxMemoryMib) {
        return {Errc::invalid_spec, "memory_mib must be between " + std::to_string(kMinMemoryMib) +
                                        " and " + std::to_string(kMaxMemoryMib)};
    }
    if (spec.description.size() > kMaxDescription) {
        return {Errc::invalid_spec,
                "description is longer than " + std::to_string(kMaxDescription) + " bytes"};
    }
    if (spec.type == "container") {
        return validate_container(spec);
    }
    if (!spec.image.empty() || !spec.boot.command.empty()) {
        return {Errc::invalid_spec, "image and boot.command are for containers"};
    }
    if (spec.boot.cmdline.size() > kMaxCmdline) {
        return {Errc::invalid_spec,
                "boot.cmdline is longer than " + std::to_string(kMaxCmdline) + " bytes"};
    }
    if (spec.boot.kernel.empty() && spec.boot.disk.empty()) {
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
    for (auto [what, path] : {std::pair{"boot.kernel", &spec.boot.kernel},
                              {"boot.initrd", &spec.boot.initrd},
                              {"boot.disk", &spec.boot.disk}}) {
        if (Status st = check_file(what, *path); !st) {
            return st;
        }
    }
    return {};
}

Status Machines::create(const Caller& caller, MachineSpec spec, const Machine** out) {
    if (Status st = validate(spec); !st) {
        return st;
    }
    if (spec.type == "container") {
        std::string rootfs;
        Status st = image_lookup_ ? image_lookup_(spec.image, rootfs)
                                  : Status{Errc::unavailable, "this hangard has no image store"};
        if (!st) {
            return {st.code() == Errc::not_found ? Errc::invalid_spec : st.code(),
                    st.message() + " (GET /v1/images lists the local images)"};
        }
    }
    if (machines_.count(spec.name)) {
        return {Errc::conflict, "a machine named " + spec.name + " already exists"};
    }
    size_t owned = 0;
    for (const auto& [n, m] : machines_) {
        owned += m->spec.owner == caller.uid;
    }
    if (owned >= cfg_.max_machines_per_owner) {
        return {Errc::conflict, "uid " + std::to_string(caller.uid) + " already owns " +
                                    std::to_string(owned) + " machines (the limit)"};
    }
    spec.owner = caller.uid;
    spec.uuid = new_uuid();
    spec.created_at = now_rfc3339();

    std::error_code ec;
    auto dir = machine_dir(spec.name);
    std::filesystem::create_directories(dir, ec);
    if (!ec) {
        std::filesystem::permissions(dir, std::filesystem::perms::owner_all, ec);
    }
    if (ec) {
        return {Errc::internal, "cannot create " + dir.string() + ": " + ec.message()};
    }
    auto m = std::make_unique<Machine>();
    m->spec = std::move(spec);
    ++m->spec_rev;
    m->state_reason = "api:create";
    db_.insert_machine({m->spec, m->state, m->state_reason, 0});
    auto& ref = *m;
    machines_.emplace(ref.spec.name, std::move(m));
    events_.publish("machine.created", ref.spec.name, ref.spec.owner, to_json(ref));
    if (!db_.flush()) {
        machines_.erase(ref.spec.name);
        return {Errc::internal, "the store could not record the machine"};
    }
    spdlog::info("{}: created (uid {})", ref.spec.name, ref.spec.owner);
    *out = &ref;
    return {};
}

Status Machines::update(const Caller& caller, const std::string& name, MachineSpec spec,
                        const std::set<std::string>& changed, const Machine** out) {
    Machine* m = nullptr;
    if (Status st = lookup(caller, name, &m); !st) {
        return st;
    }
    if (spec.name != m->spec.name || spec.type != m->spec.type || spec.image != m->spec.image) {
        return {Errc::bad_request, "name, type and image cannot be changed"};
    }
    for (const char* field : {"cpus", "memory_mib", "boot"}) {
        if (changed.count(field) && (is_live(*m) || !m->op.empty())) {
            return {Errc::invalid_state, std::string(field) + " can be changed only while " +
                                             m->spec.name + " is stopped (it is " +
                                             std::string(to_string(m->state)) + ")"};
        }
    }
    if (Status st = validate(spec); !st) {
        return st;
    }
    m->spec = std::move(spec);
    ++m->spec_rev;
    db_.update_spec(m->spec);
    json::Writer w;
    w.begin_object().key("changed").begin_array();
    for (const auto& f : changed) {
        w.value(f);
    }
    w.end_array().key("machine").raw(to_json(*m)).end_object();
    events_.publish("machine.updated", m->spec.name, m->spec.owner, w.str());
    if (!db_.flush()) {
        return {Errc::internal, "the store could not record the change"};
    }
    *out = m;
    return {};
}

void Machines::remove(const Caller& caller, const std::string& name, bool force,
                      std::function<void(const Status&)> done) {
    auto fail = [&](Status st) {
        boost::asio::post(io_, [done = std::move(done), st = std::move(st)] { done(st); });
    };
    Machine* m = nullptr;
    if (Status st = lookup(caller, name, &m); !st) {
        return fail(st);
    }
    if (m->delete_after_exit) {
        return fail({Errc::busy, "machine " + name + " is already being deleted"});
    }
    if (is_live(*m)) {
        if (!force) {
            return fail({Errc::invalid_state,
                         state_conflict(*m, "delete") + " (stop it first, or use ?force=true)"});
        }
        // Kill it; the exit completes the delete.
        m->delete_after_exit = true;
        m->restart_pending = false;
        m->exit_reason = "api:delete force";
        m->exit_is_crash = false;
        m->waiters.emplace_back("delete", std::move(done));
        if (m->op.empty()) {
            m->op = "delete";
        }
        kill_now(*m);
        return;
    }
    if (!m->op.empty()) {
        return fail({Errc::busy, "machine " + name + " is busy: " + m->op + " in progress"});
    }
    erase(*m);
    boost::asio::post(io_, [done = std::move(done)] { done({}); });
}

void Machines::erase(Machine& m) {
    std::string name = m.spec.name;
    remove_tree(machine_dir(name));
    db_.delete_machine(name);
    events_.publish("machine.deleted", name, m.spec.owner, "{}");
    db_.flush();
    machines_.erase(name);
    spdlog::info("{}: deleted", name);
}

// ---- operations ------------------------------------------------------------------------

void Machines::begin_op(Machine& m, const std::string& op,
                        std::function<void(const Status&)> done) {
    m.op = op;
    m.waiters.emplace_back(op, std::move(done));
}

void Machines::finish_op(Machine& m, const Status& st) {
    db_.flush();  // acknowledge only what is stored
    auto waiters = std::move(m.waiters);
    m.waiters.clear();
    m.op.clear();
    for (auto& [op, done] : waiters) {
        done(st);
    }
}

void Machines::set_state(Machine& m, MachineState to, const std::string& reason) {
    if (m.state == to) {
        return;
    }
    MachineState from = m.state;
    m.state = to;
    m.state_reason = reason;
    db_.update_state(m.spec.name, to, reason, m.pid);
    json::Writer w;
    w.begin_object()
        .field("from", to_string(from))
        .field("to", to_string(to))
        .field("reason", reason)
        .end_object();
    events_.publish("machine.state", m.spec.name, m.spec.owner, w.str());
    spdlog::info("{}: {} -> {} ({})", m.spec.name, to_string(from), to_string(to), reason);
}

Status Machines::act(const Caller& caller, const std::string& name, Action action, ActionArgs args,
                     Done done) {
    // Completion hands back the machine if it still exists.
    auto complete = [this, name, done = std::move(done)](const Status& st) {
        auto it = machines_.find(name);
        done(st, it == machines_.end() ? nullptr : it->second.get());
    };
    Machine* m = nullptr;
    if (Status st = lookup(caller, name, &m); !st) {
        return st;
    }
    if (action == Action::kill) {
        // kill preempts any operation in flight (a hung stop, a start...).
        if (!is_live(*m)) {
            return {Errc::invalid_state, state_conflict(*m, "kill")};
        }
        m->exit_reason = "api:kill";
        m->exit_is_crash = false;
        m->restart_pending = false;
        if (m->op.empty()) {
            m->op = "kill";
        }
        m->waiters.emplace_back("kill", std::move(complete));
        kill_now(*m);
        return {};
    }
    if (!m->op.empty()) {
        return {Errc::busy, "machine " + name + " is busy: " + m->op + " in progress"};
    }
    if (m->spec.type == "container" &&
        (action == Action::pause || action == Action::resume || args.reset)) {
        return {Errc::invalid_spec,
                std::string(action == Action::restart ? "restart with reset" : "pause and resume") +
                    " are for VMs; containers restart gracefully"};
    }
    switch (action) {
        case Action::start:
            if (m->state != MachineState::stopped && m->state != MachineState::crashed) {
                return {Errc::invalid_state, state_conflict(*m, "start")};
            }
            begin_op(*m, "start", std::move(complete));
            launch(*m, args.reason.empty() ? "api:start" : args.reason);
            return {};
        case Action::stop:
            if (m->state != MachineState::running && m->state != MachineState::paused) {
                return {Errc::invalid_state, state_conflict(*m, "stop")};
            }
            begin_op(*m, "stop", std::move(complete));
            graceful_stop(*m, args.stop_timeout);
            return {};
        case Action::restart:
            if (m->state != MachineState::running && m->state != MachineState::paused) {
                return {Errc::invalid_state, state_conflict(*m, "restart")};
            }
            begin_op(*m, "restart", std::move(complete));
            if (args.reset) {
                m->proc->execute(
                    "system_reset", {},
                    [this, name, gen = m->generation](const Status& st, std::string_view) {
                        with_machine(name, gen, [&](Machine& m) {
                            if (m.op == "restart") {
                                finish_op(m, st);
                            }
                        });
                    });
            } else {
                m->restart_pending = true;
                graceful_stop(*m, args.stop_timeout);
            }
            return {};
        case Action::pause:
        case Action::resume: {
            bool pause = action == Action::pause;
            if (m->state != (pause ? MachineState::running : MachineState::paused)) {
                return {Errc::invalid_state, state_conflict(*m, pause ? "pause" : "resume")};
            }
            begin_op(*m, pause ? "pause" : "resume", std::move(complete));
            // The STOP / RESUME event completes the operation; a failed command fails it.
            m->proc->execute(
                pause ? "stop" : "cont", {},
                [this, name, gen = m->generation, op = m->op](const Status& st, std::string_view) {
                    with_machine(name, gen, [&](Machine& m) {
                        if (!st && m.op == op) {
                            finish_op(m, st);
                        }
                    });
                });
            return {};
        }
        case Action::kill:
            break;
    }
    return {};
}

qemu::QemuProcess::Callbacks Machines::callbacks(const std::string& name, uint64_t gen) {
    qemu::QemuProcess::Callbacks cb;
    cb.on_event = [this, name, gen](std::string_view event, simdjson::dom::element msg) {
        std::string detail;
        if (event == "SHUTDOWN") {
            bool guest = false;
            std::string_view why;
            json::try_get(msg.at_pointer("/data/guest"), guest);
            json::try_get(msg.at_pointer("/data/reason"), why);
            detail = std::string("guest=") + (guest ? "true" : "false");
            if (!why.empty()) {
                detail += " reason=" + std::string(why);
            }
        }
        with_machine(name, gen, [&](Machine& m) { on_qmp_event(m, event, detail); });
    };
    cb.on_exit = [this, name, gen](const ExitInfo& info) {
        // An adopted QEMU is not our child: its status is unknown, so never "clean".
        bool clean = info.known && info.signal == 0 && info.code == 0;
        with_machine(name, gen,
                     [&](Machine& m) { on_exit(m, "pidfd:exit " + info.describe(), clean); });
    };
    cb.on_responsive = [this, name, gen](bool ok, const std::string& why) {
        with_machine(name, gen, [&](Machine& m) { on_responsive(m, ok, why); });
    };
    return cb;
}

void Machines::autostart(std::function<void(size_t started, size_t failed)> done) {
    auto names = std::make_shared<std::vector<std::string>>();
    for (const auto& [name, m] : machines_) {
        if (m->spec.autostart &&
            (m->state == MachineState::stopped || m->state == MachineState::crashed)) {
            names->push_back(name);  // the map is ordered by name
        }
    }
    if (!names->empty()) {
        spdlog::info("autostart: {} machines", names->size());
    }
    auto started = std::make_shared<size_t>(0), failed = std::make_shared<size_t>(0);
    auto next = std::make_shared<std::function<void(size_t)>>();
    // The step holds itself only through the pending start's callback.
    std::weak_ptr<std::function<void(size_t)>> weak_next = next;
    *next = [this, names, started, failed, done, weak_next](size_t i) {
        auto self = weak_next.lock();
        for (; i < names->size(); ++i) {
            Caller root{0, true, true, "autostart"};
            ActionArgs args;
            args.reason = "autostart";
            const std::string& name = (*names)[i];
            Status st = act(root, name, Action::start, args,
                            [self, name, i, started, failed](const Status& st, const Machine*) {
                                if (st) {
                                    ++*started;
                                } else {
                                    ++*failed;
                                    spdlog::warn("autostart: {}: {}", name, st.message());
                                }
                                (*self)(i + 1);
                            });
            if (st) {
                return;  // the next one when this start has completed
            }
            // Deleted, started by a user meanwhile, or busy: not autostart's to do.
            spdlog::info("autostart: skipping {}: {}", name, st.message());
        }
        done(*started, *failed);
    };
    (*next)(0);
}

void Machines::launch(Machine& m, const std::string& reason) {
    m.quit_sent = false;
    m.exit_reason.clear();
    m.exit_is_crash = false;
    m.unresponsive = false;
    set_state(m, MachineState::starting, reason);
    if (m.spec.type == "container") {
        return launch_container(m);
    }
    uint64_t gen = ++m.generation;
    std::string name = m.spec.name;
    qemu::QemuProcess::launch(
        io_, cfg_.qemu, m.spec, qemu::MachinePaths(machine_dir(name)), callbacks(name, gen),
        [this, name, gen](const Status& st, std::shared_ptr<qemu::QemuProcess> proc) {
            auto it = machines_.find(name);
            if (it == machines_.end() || it->second->generation != gen) {
                if (proc) {
                    proc->signal(SIGKILL);
                }
                return;
            }
            Machine& m = *it->second;
            if (!st) {
                m.restart_pending = false;
                set_state(m, MachineState::stopped, "api:start failed: " + st.message());
                finish_op(m, st);
                return;
            }
            m.proc = std::move(proc);
            m.pid = m.proc->pid();
            db_.update_state(name, m.state, m.state_reason, m.pid);
            // The RESUME event that follows moves the machine to running.
            m.proc->execute("cont", {}, [this, name, gen](const Status& st, std::string_view) {
                with_machine(name, gen, [&](Machine& m) {
                    if (!st && m.state == MachineState::starting && m.proc) {
                        spdlog::warn("{}: cont failed: {}", name, st.message());
                        m.exit_reason = "api:start failed: " + st.message();
                        m.proc->signal(SIGKILL);
                    }
                });
            });
        });
}

void Machines::graceful_stop(Machine& m, std::chrono::seconds timeout) {
    set_state(m, MachineState::stopping, m.restart_pending ? "api:restart" : "api:stop");
    if (m.spec.type == "container") {
        return stop_container(m, timeout);
    }
    std::string name = m.spec.name;
    uint64_t gen = m.generation;
    m.stop_timer = std::make_unique<boost::asio::steady_timer>(io_);
    m.stop_timer->expires_after(timeout);
    m.stop_timer->async_wait([this, name, gen, timeout](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        with_machine(name, gen, [&](Machine& m) {
            force_quit(m, "api:stop: guest did not power off within " +
                              std::to_string(timeout.count()) + " s");
        });
    });
    // A paused guest cannot see the power button: it stays paused until the timeout.
    m.proc->execute("system_powerdown", {}, [this, name, gen](const Status& st, std::string_view) {
        if (st) {
            return;
        }
        with_machine(name, gen, [&](Machine& m) {
            force_quit(m, "api:stop: system_powerdown failed (" + st.message() + ")");
        });
    });
}

void Machines::force_quit(Machine& m, const std::string& why) {
    if (!m.proc || m.proc->exited()) {
        return;
    }
    if (m.exit_reason.empty()) {
        m.exit_reason = why;
    }
    if (m.quit_sent) {
        return;
    }
    m.quit_sent = true;
    std::string name = m.spec.name;
    uint64_t gen = m.generation;
    // quit, and SIGKILL if QEMU does not exit within the command deadline.
    m.stop_timer = std::make_unique<boost::asio::steady_timer>(io_);
    m.stop_timer->expires_after(cfg_.qemu.command_timeout);
    m.stop_timer->async_wait([this, name, gen](boost::system::error_code ec) {
        if (ec) {
            return;
        }
        with_machine(name, gen, [&](Machine& m) {
            if (m.proc) {
                spdlog::warn("{}: QEMU did not quit; sending SIGKILL", name);
                m.exit_reason += ", killed";
                m.proc->signal(SIGKILL);
            }
        });
    });
    m.proc->execute("quit", {}, [](const Status&, std::string_view) {});
}

void Machines::on_qmp_event(Machine& m, std::string_view event, const std::string& detail) {
    if (event == "STOP") {
        if (m.state == MachineState::running) {
            set_state(m, MachineState::paused, "qmp:STOP");
        }
        if (m.op == "pause") {
            finish_op(m, {});
        }
    } else if (event == "RESUME") {
        if (m.state == MachineState::starting || m.state == MachineState::paused) {
            set_state(m, MachineState::running, "qmp:RESUME");
        }
        if (m.op == "start" || m.op == "resume" || (m.op == "restart" && !m.restart_pending)) {
            finish_op(m, {});
        }
    } else if (event == "SHUTDOWN") {
        // With -no-shutdown QEMU stays alive after a guest shutdown; hangar ends it.
        std::string reason = "qmp:SHUTDOWN " + detail;
        if (m.exit_reason.empty() || m.exit_reason.rfind("api:stop", 0) == 0) {
            if (detail.find("reason=host-qmp-quit") == std::string::npos) {
                m.exit_reason = reason;
            }
        }
        set_state(m, MachineState::stopping, m.exit_reason.empty() ? reason : m.exit_reason);
        if (explainer_ && !m.explaining && detail.find("reason=host-signal") != std::string::npos) {
            m.explaining = true;
            explainer_(m, [this, name = m.spec.name, gen = m.generation](std::string why) {
                with_machine(name, gen, [&](Machine& m) {
                    if (!why.empty()) {
                        m.exit_reason = std::move(why);
                    }
                    explained(m);
                });
            });
        }
        force_quit(m, reason);
    } else if (event == "GUEST_PANICKED") {
        m.exit_reason = "qmp:GUEST_PANICKED";
        m.exit_is_crash = true;
        force_quit(m, m.exit_reason);
    } else if (event == "RESET" || event == "POWERDOWN") {
        spdlog::info("{}: QEMU reports {}", m.spec.name, event);
    }
}

void Machines::on_responsive(Machine& m, bool responsive, const std::string& why) {
    if (m.unresponsive == !responsive) {
        return;
    }
    m.unresponsive = !responsive;
    json::Writer w;
    w.begin_object().field("unresponsive", m.unresponsive).field("reason", why).end_object();
    events_.publish("machine.updated", m.spec.name, m.spec.owner, w.str());
    spdlog::log(responsive ? spdlog::level::info : spdlog::level::warn, "{}: {}", m.spec.name, why);
}

void Machines::explained(Machine& m) {
    m.explaining = false;
    if (auto exit = std::exchange(m.deferred_exit, std::nullopt)) {
        on_exit(m, exit->first, exit->second);
    }
}

void Machines::on_exit(Machine& m, const std::string& how, bool clean) {
    if (m.explaining) {
        m.deferred_exit.emplace(how, clean);
        return;
    }
    m.proc.reset();
    m.unit_live = false;
    m.pid = 0;
    m.stop_timer.reset();
    m.quit_sent = false;
    m.unresponsive = false;
    ++m.generation;
    if (m.exit_is_crash) {
        set_state(m, MachineState::crashed, m.exit_reason + " " + how);
    } else if (!m.exit_reason.empty()) {
        set_state(m, MachineState::stopped, m.exit_reason);
    } else {
        set_state(m, clean ? MachineState::stopped : MachineState::crashed, how);
    }
    db_.update_state(m.spec.name, m.state, m.state_reason, 0);
    m.exit_reason.clear();
    m.exit_is_crash = false;

    if (m.delete_after_exit) {
        auto waiters = std::move(m.waiters);
        m.waiters.clear();
        erase(m);  // `m` is gone after this
        for (auto& [op, done] : waiters) {
            done(op == "delete" || op == "kill" || op == "stop"
                     ? Status{}
                     : Status{Errc::conflict, "the machine was deleted"});
        }
        return;
    }
    if (m.restart_pending && m.state == MachineState::stopped) {
        m.restart_pending = false;
        launch(m, m.state_reason == kContainerReboot ? kContainerReboot : "api:restart");
        return;
    }
    m.restart_pending = false;
    db_.flush();
    auto waiters = std::move(m.waiters);
    m.waiters.clear();
    m.op.clear();
    for (auto& [op, done] : waiters) {
        if (op == "stop" || op == "kill") {
            done({});
        } else {
            done({Errc::conflict, "the machine ended during " + op + ": it is " +
                                      std::string(to_string(m.state)) + " (" + m.state_reason +
                                      ")"});
        }
    }
}

// ---- adoption --------------------------------------------------------------------------

void Machines::load_and_adopt(std::function<void(size_t, size_t)> done) {
    auto rows = db_.load_machines();
    auto remaining = std::make_shared<size_t>(1);
    auto adopted_count = std::make_shared<size_t>(0);
    size_t total = rows.size();
    auto settle = [remaining, adopted_count, total, done = std::move(done)] {
        if (--*remaining == 0) {
            done(*adopted_count, total);
        }
    };
    for (auto& row : rows) {
        auto m = std::make_unique<Machine>();
        m->spec = std::move(row.spec);
        m->state = row.state;
        m->state_reason = std::move(row.state_reason);
        m->pid = static_cast<pid_t>(row.pid);
        Machine& ref = *m;
        machines_.emplace(ref.spec.name, std::move(m));
        if (ref.spec.type == "container") {
            // Its unit is looked up once the container host connects (on_unit).
            ref.unit_live = is_active(ref.state);
            if (ref.unit_live && !host_) {
                ref.unresponsive = true;
                ref.state_reason += " (unknown: hangard has no systemd connection)";
            }
            continue;
        }
        qemu::MachinePaths paths(machine_dir(ref.spec.name));
        if (!is_active(ref.state) && !std::filesystem::exists(paths.pidfile())) {
            paths.remove_runtime_files();
            ref.pid = 0;
            continue;
        }
        ref.op = "adopt";
        ++*remaining;
        std::string name = ref.spec.name;
        uint64_t gen = ++ref.generation;
        qemu::QemuProcess::adopt(
            io_, cfg_.qemu, ref.spec, paths, callbacks(name, gen),
            [this, name, gen, adopted_count, settle](const Status& st,
                                                     std::shared_ptr<qemu::QemuProcess> proc,
                                                     const std::string& status) {
                with_machine(name, gen, [&](Machine& m) {
                    m.op.clear();
                    if (!st) {
                        m.pid = 0;
                        if (m.state == MachineState::stopping) {
                            set_state(m, MachineState::stopped, "adopt: " + st.message());
                        } else if (is_active(m.state)) {
                            set_state(
                                m, MachineState::crashed,
                                "adopt: " + st.message() + " (exited while hangard was down)");
                        }
                        db_.update_state(m.spec.name, m.state, m.state_reason, 0);
                        return;
                    }
                    ++*adopted_count;
                    m.proc = std::move(proc);
                    m.pid = m.proc->pid();
                    adopted(m, status);
                });
                settle();
            });
    }
    boost::asio::post(io_, settle);
}

void Machines::adopted(Machine& m, const std::string& status) {
    spdlog::info("{}: adopted QEMU pid {} (status {})", m.spec.name, m.pid,
                 status.empty() ? "unknown" : status);
    if (status.empty()) {
        on_responsive(m, false, "QMP unreachable after adoption");
        return;
    }
    if (status == "running") {
        set_state(m, MachineState::running, "adopt:qmp status=running");
    } else if (status == "shutdown") {
        m.exit_reason = "qmp:SHUTDOWN guest=true (while hangard was down)";
        set_state(m, MachineState::stopping, m.exit_reason);
        force_quit(m, m.exit_reason);
    } else if (status == "guest-panicked" || status == "internal-error") {
        m.exit_reason = "adopt:qmp status=" + status;
        m.exit_is_crash = true;
        force_quit(m, m.exit_reason);
    } else if (status == "prelaunch" || m.state == MachineState::starting) {
        // An interrupted start: finish it.
        set_state(m, MachineState::starting, "adopt:qmp status=" + status);
        m.proc->execute("cont", {}, [](const Status&, std::string_view) {});
    } else {
        set_state(m, MachineState::paused, "adopt:qmp status=" + status);
    }
    db_.update_state(m.spec.name, m.state, m.state_reason, m.pid);
}

void Machines::detach_all() {
    for (auto& [name, m] : machines_) {
        if (m->proc) {
            m->proc->detach();
            m->proc.reset();
        }
        m->stop_timer.reset();
    }
    db_.flush();
}

}  // namespace hangar::core
