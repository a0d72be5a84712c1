#include "core/machines.hpp"

#include <signal.h>
#include <sys/random.h>
#include <sys/stat.h>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>

#include "core/spec_codec.hpp"
#include "hangar/names.hpp"
#include "store/db.hpp"
#include "util/json.hpp"
#include "util/process.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"
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

std::string_view to_string(Op op) {
    switch (op) {
        case Op::none:
            return "";
        case Op::start:
            return "start";
        case Op::stop:
            return "stop";
        case Op::kill:
            return "kill";
        case Op::restart:
            return "restart";
        case Op::pause:
            return "pause";
        case Op::resume:
            return "resume";
        case Op::remove:
            return "delete";
        case Op::exec:
            return "exec";
        case Op::adopt:
            return "adopt";
        case Op::snapshot:
            return "snapshot";
        case Op::clone:
            return "clone";
    }
    return "";
}

std::string_view to_string(MachineType t) {
    return t == MachineType::vm ? "vm" : "container";
}

std::optional<MachineType> parse_machine_type(std::string_view s) {
    if (s == "vm") {
        return MachineType::vm;
    }
    if (s == "container") {
        return MachineType::container;
    }
    return std::nullopt;
}

Machines::Machines(boost::asio::io_context& io, store::Db& db, EventBus& events, MachinesConfig cfg,
                   std::vector<Runtime*> runtimes)
    : io_(io), db_(db), events_(events), cfg_(std::move(cfg)), runtimes_(std::move(runtimes)) {
    for (Runtime* rt : runtimes_) {
        rt->set_sink(this);
    }
}

Machines::~Machines() {
    for (Runtime* rt : runtimes_) {
        rt->set_sink(nullptr);
    }
}

// The one place a machine's type chooses anything: its runtime.
Runtime* Machines::runtime_for(MachineType t) const {
    for (Runtime* rt : runtimes_) {
        if (rt->type() == t) {
            return rt;
        }
    }
    return nullptr;
}

Privilege Machines::privilege(uid_t owner) const {
    return {owner, owner == 0 || (cfg_.admins && cfg_.admins->is_admin(owner))};
}

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
        .key("boot");
    encode_boot(w, s.boot);
    if (!s.image.empty()) {
        w.field("image", s.image);
    }
    if (!s.template_name.empty()) {
        w.field("template", s.template_name);
    }
    if (m.type == MachineType::vm) {
        w.field("firmware", s.firmware.empty() ? "bios" : s.firmware);
        if (!s.cdrom.empty()) {
            w.field("cdrom", s.cdrom);
        }
    }
    w.key("disks").begin_array();
    if (m.type == MachineType::vm && !s.image.empty()) {
        // The root disk: an overlay on the image, in the machine's directory.
        w.begin_object()
            .field("name", "root")
            .field("boot", true)
            .field("image", s.image)
            .field("size_gib", s.disk_gib)
            .end_object();
    }
    if (disks_json_) {
        for (const auto& d : disks_json_(s.name)) {
            w.raw(d);
        }
    }
    w.end_array()
        .key("ports")
        .begin_array()
        .end_array()
        .field("autostart", s.autostart)
        .field("description", s.description)
        .field("pid", static_cast<int64_t>(m.pid))
        .key("console")
        .begin_object()
        .key("viewers")
        .raw(m.console_viewers)
        .end_object();
    if (m.op != Op::none) {
        w.field("operation", to_string(m.op));
    }
    w.end_object();
    c = {w.take(), m.spec_rev, m.state, m.state_reason, m.op, m.unresponsive, m.pid};
    return c.json;
}

// ---- console ---------------------------------------------------------------------------

Status Machines::console_input(const std::string& name, std::string_view bytes) {
    HANGAR_ASSERT_REACTOR();
    auto it = machines_.find(name);
    if (it == machines_.end()) {
        return {Errc::not_found, "no machine named " + json::quote(name)};
    }
    Machine& m = *it->second;
    if (!m.live || !is_active(m.state)) {
        return {Errc::invalid_state,
                name + " is " + std::string(to_string(m.state)) + ": console input goes nowhere"};
    }
    m.runtime->console_input(m.instance(), bytes);
    return {};
}

Status Machines::console_resize(const std::string& name, unsigned cols, unsigned rows) {
    HANGAR_ASSERT_REACTOR();
    auto it = machines_.find(name);
    if (it == machines_.end()) {
        return {Errc::not_found, "no machine named " + json::quote(name)};
    }
    Machine& m = *it->second;
    if (m.live) {
        m.runtime->console_resize(m.instance(), cols, rows);
    }
    return {};
}

void Machines::set_console_viewers(const std::string& name, std::string viewers_json) {
    auto it = machines_.find(name);
    if (it != machines_.end() && it->second->console_viewers != viewers_json) {
        it->second->console_viewers = std::move(viewers_json);
        ++it->second->spec_rev;  // the JSON is made again
    }
}

// ---- create / delete -------------------------------------------------------------------

Status Machines::validate(MachineSpec& spec, uid_t owner, Runtime** rt) const {
    if (Status st = check_name("machine", spec.name); !st) {
        return st;
    }
    auto type = parse_machine_type(spec.type);
    *rt = type ? runtime_for(*type) : nullptr;
    if (!type) {
        return {Errc::invalid_spec,
                "type " + json::quote(spec.type) + " is not one of \"vm\", \"container\""};
    }
    if (!*rt) {
        return {Errc::unavailable, "this hangard runs no " + spec.type + " machines"};
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
    return (*rt)->validate(spec, privilege(owner));
}

Status Machines::create(const Caller& caller, MachineSpec spec, const Machine** out) {
    HANGAR_ASSERT_REACTOR();
    if (!spec.template_name.empty()) {
        if (!cfg_.templates) {
            return {Errc::bad_request, "this host has no templates"};
        }
        if (Status st = cfg_.templates->apply(spec); !st) {
            return st;
        }
    }
    Runtime* rt = nullptr;
    if (Status st = validate(spec, caller.uid, &rt); !st) {
        return st;
    }
    if (const Quotas* q = cfg_.quotas) {
        if (Status st = q->check_host(spec.cpus, spec.memory_mib); !st) {
            return st;
        }
    }
    if (Status st = rt->admit(spec); !st) {
        return st;
    }
    if (machines_.count(spec.name)) {
        return {Errc::conflict, "a machine named " + spec.name + " already exists"};
    }
    if (const Quotas* q = cfg_.quotas; q && !caller.admin && !q->exempt(caller.uid)) {
        QuotaUsage before = q->usage(caller.uid), after = before;
        ++after.machines;
        after.vcpus += spec.cpus;
        after.memory_mib += spec.memory_mib;
        if (!spec.image.empty()) {
            after.disk_bytes += q->image_bytes(spec.image);  // its copy of the image
        }
        if (Status st = q->check(caller.uid, before, after); !st) {
            return st;
        }
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
    m->type = rt->type();
    m->runtime = rt;
    ++m->spec_rev;
    m->state_reason = "api:create";
    db_.insert_machine({m->spec, m->state, m->state_reason, 0});
    auto& ref = *m;
    machines_.emplace(ref.spec.name, std::move(m));
    events_.publish(MachineCreated{to_json(ref)}, ref.spec.name, ref.spec.owner);
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
    return update_checked(caller, name, std::move(spec), changed, false, out);
}

void Machines::update_live(const Caller& caller, const std::string& name, MachineSpec spec,
                           std::set<std::string> changed, Done done) {
    HANGAR_ASSERT_REACTOR();
    Machine* m = nullptr;
    Status st = lookup(caller, name, &m);
    if (!st || !changed.count("cdrom") || !m->live) {
        const Machine* out = nullptr;
        if (st) {
            st = update_checked(caller, name, std::move(spec), changed, false, &out);
        }
        return boost::asio::post(io_, [done = std::move(done), st, out] { done(st, out); });
    }
    if (m->op != Op::none) {
        return boost::asio::post(io_, [done = std::move(done), name, op = m->op] {
            done({Errc::busy, name + " is busy (" + std::string(to_string(op)) + ")"}, nullptr);
        });
    }
    // The whole spec is checked before the drive changes.
    MachineSpec probe = spec;
    Runtime* rt = nullptr;
    if (Status vst = validate(probe, m->spec.owner, &rt); !vst) {
        return boost::asio::post(io_, [done = std::move(done), vst] { done(vst, nullptr); });
    }
    m->runtime->change_cdrom(
        m->instance(), spec, [this, caller, name, spec, changed, done](const Status& st) {
            const Machine* out = nullptr;
            Status result = st;
            if (result) {
                result = update_checked(caller, name, spec, changed, true, &out);
            }
            done(result, out);
        });
}

Status Machines::update_checked(const Caller& caller, const std::string& name, MachineSpec spec,
                                const std::set<std::string>& changed, bool applied,
                                const Machine** out) {
    HANGAR_ASSERT_REACTOR();
    Machine* m = nullptr;
    if (Status st = lookup(caller, name, &m); !st) {
        return st;
    }
    if (changed.count("cdrom") && m->live && !applied) {
        return {Errc::invalid_state, "the CD-ROM of the running " + name +
                                         " changes through PATCH /v1/machines/" + name};
    }
    if (spec.name != m->spec.name || spec.type != m->spec.type || spec.image != m->spec.image ||
        spec.template_name != m->spec.template_name || spec.disk_gib != m->spec.disk_gib) {
        return {Errc::bad_request, "name, type, image, disk_gib and template cannot be changed"};
    }
    for (const char* field : {"cpus", "memory_mib", "boot", "firmware"}) {
        if (changed.count(field) && (m->live || m->op != Op::none)) {
            return {Errc::invalid_state, std::string(field) + " can be changed only while " +
                                             m->spec.name + " is stopped (it is " +
                                             std::string(to_string(m->state)) + ")"};
        }
    }
    Runtime* rt = nullptr;
    if (Status st = validate(spec, m->spec.owner, &rt); !st) {
        return st;
    }
    if (const Quotas* q = cfg_.quotas;
        q && (changed.count("cpus") || changed.count("memory_mib"))) {
        if (Status st = q->check_host(spec.cpus, spec.memory_mib); !st) {
            return st;
        }
        // The owner's quota, whoever asks; the machine's old size is replaced, not added to.
        if (!q->exempt(m->spec.owner)) {
            QuotaUsage before = q->usage(m->spec.owner), after = before;
            after.vcpus = after.vcpus - m->spec.cpus + spec.cpus;
            after.memory_mib = after.memory_mib - m->spec.memory_mib + spec.memory_mib;
            if (Status st = q->check(m->spec.owner, before, after); !st) {
                return st;
            }
        }
    }
    m->spec = std::move(spec);
    ++m->spec_rev;
    db_.update_spec(m->spec);
    events_.publish(MachineUpdated{{changed.begin(), changed.end()}, "api:update", to_json(*m)},
                    m->spec.name, m->spec.owner);
    if (!db_.flush()) {
        return {Errc::internal, "the store could not record the change"};
    }
    *out = m;
    return {};
}

void Machines::remove(const Caller& caller, const std::string& name, bool force,
                      std::function<void(const Status&)> done) {
    HANGAR_ASSERT_REACTOR();
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
    if (m->live) {
        if (!force) {
            return fail({Errc::invalid_state,
                         state_conflict(*m, "delete") + " (stop it first, or use ?force=true)"});
        }
        // Kill it; the exit completes the delete.
        m->delete_after_exit = true;
        m->restart_pending = false;
        m->exit_reason = "api:delete force";
        m->waiters.emplace_back(Op::remove, std::move(done));
        if (m->op == Op::none) {
            m->op = Op::remove;
        }
        kill_now(*m);
        return;
    }
    if (m->op != Op::none) {
        return fail({Errc::busy, "machine " + name + " is busy: " + std::string(to_string(m->op)) +
                                     " in progress"});
    }
    erase(*m);
    boost::asio::post(io_, [done = std::move(done)] { done({}); });
}

void Machines::disks_changed(const std::string& name, const std::string& reason) {
    auto it = machines_.find(name);
    if (it == machines_.end()) {
        return;
    }
    Machine& m = *it->second;
    ++m.spec_rev;
    events_.publish(MachineUpdated{{"disks"}, reason, to_json(m)}, name, m.spec.owner);
}

void Machines::on_disk_released(const InstanceRef& ref, const std::string& disk) {
    with_instance(ref, [&](Machine& m) {
        if (disk_released_) {
            disk_released_(m.spec.name, disk);
        }
    });
}

void Machines::erase(Machine& m) {
    std::string name = m.spec.name;
    m.runtime->forget(name);
    remove_tree(machine_dir(name));
    db_.delete_machine(name);
    events_.publish(MachineDeleted{}, name, m.spec.owner);
    db_.flush();
    machines_.erase(name);
    spdlog::info("{}: deleted", name);
}

void Machines::remove_tree(const std::filesystem::path& dir) {
    std::string trash =
        dir.parent_path() / (".trash-" + dir.filename().string() + "-" + random_hex(4));
    if (Status st = remove_tree_async(io_, dir.string(), trash); !st) {
        spdlog::warn("{}", st.message());
    }
}

// ---- operations ------------------------------------------------------------------------

void Machines::begin_op(Machine& m, Op op, std::function<void(const Status&)> done) {
    m.op = op;
    m.waiters.emplace_back(op, std::move(done));
}

void Machines::finish_op(Machine& m, const Status& st) {
    db_.flush();  // acknowledge only what is stored
    auto waiters = std::move(m.waiters);
    m.waiters.clear();
    m.op = Op::none;
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
    events_.publish(MachineStateChanged{from, to, reason}, m.spec.name, m.spec.owner);
    spdlog::info("{}: {} -> {} ({})", m.spec.name, to_string(from), to_string(to), reason);
}

Status Machines::act(const Caller& caller, const std::string& name, Action action, ActionArgs args,
                     Done done) {
    HANGAR_ASSERT_REACTOR();
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
        if (!m->live) {
            return {Errc::invalid_state, state_conflict(*m, "kill")};
        }
        m->exit_reason = "api:kill";
        m->restart_pending = false;
        if (m->op == Op::none) {
            m->op = Op::kill;
        }
        m->waiters.emplace_back(Op::kill, std::move(complete));
        kill_now(*m);
        return {};
    }
    if (m->op != Op::none) {
        return {Errc::busy,
                "machine " + name + " is busy: " + std::string(to_string(m->op)) + " in progress"};
    }
    if (action == Action::pause || action == Action::resume) {
        if (Status st = m->runtime->supports(Capability::pause, name); !st) {
            return st;
        }
    } else if (action == Action::restart && args.reset) {
        if (Status st = m->runtime->supports(Capability::reset, name); !st) {
            return st;
        }
    }
    // A request the runtime could not carry out fails the operation it holds.
    auto failed = [this, name, gen = m->generation](Op op) {
        return [this, name, gen, op](const Status& st) {
            with_machine(name, gen, [&](Machine& m) {
                if (!st && m.op == op) {
                    finish_op(m, st);
                }
            });
        };
    };
    switch (action) {
        case Action::start:
            if (m->state != MachineState::stopped && m->state != MachineState::crashed) {
                return {Errc::invalid_state, state_conflict(*m, "start")};
            }
            begin_op(*m, Op::start, std::move(complete));
            launch(*m, args.reason.empty() ? "api:start" : args.reason);
            return {};
        case Action::stop:
            if (m->state != MachineState::running && m->state != MachineState::paused) {
                return {Errc::invalid_state, state_conflict(*m, "stop")};
            }
            begin_op(*m, Op::stop, std::move(complete));
            graceful_stop(*m, args.stop_timeout);
            return {};
        case Action::restart:
            if (m->state != MachineState::running && m->state != MachineState::paused) {
                return {Errc::invalid_state, state_conflict(*m, "restart")};
            }
            begin_op(*m, Op::restart, std::move(complete));
            if (args.reset) {
                m->runtime->reset(m->instance(),
                                  [this, name, gen = m->generation](const Status& st) {
                                      with_machine(name, gen, [&](Machine& m) {
                                          if (m.op == Op::restart) {
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
            begin_op(*m, pause ? Op::pause : Op::resume, std::move(complete));
            // The runtime's paused / running report completes the operation.
            if (pause) {
                m->runtime->pause(m->instance(), failed(Op::pause));
            } else {
                m->runtime->resume(m->instance(), failed(Op::resume));
            }
            return {};
        }
        case Action::kill:
            break;
    }
    return {};
}

void Machines::autostart(std::function<void(size_t started, size_t failed)> done) {
    HANGAR_ASSERT_REACTOR();
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
    uint64_t gen = m.generation + 1;
    std::string name = m.spec.name;
    // Boot files are opened again at every start, with the owner's rights as they are now.
    Status st = m.runtime->start(
        m.spec, {name, gen}, privilege(m.spec.owner), [this, name, gen](const Status& st) {
            with_machine(name, gen, [&](Machine& m) { start_failed(m, st); });
        });
    if (!st) {
        m.restart_pending = false;
        spdlog::warn("{}: not started: {}", name, st.message());
        // Answered later: act() never calls back from inside itself.
        auto waiters = std::exchange(m.waiters, {});
        m.op = Op::none;
        boost::asio::post(io_, [waiters = std::move(waiters), st]() {
            for (auto& [op, done] : waiters) {
                done(st);
            }
        });
        return;
    }
    m.generation = gen;
    m.live = true;
    m.exit_reason.clear();
    m.unresponsive = false;
    set_state(m, MachineState::starting, reason);
}

void Machines::start_failed(Machine& m, const Status& st) {
    if (!m.exit_reason.empty()) {
        // Killed or deleted while it was being started: that end is what happened.
        ExitFact f;
        f.how = "api:start failed: " + st.message();
        f.clean = true;
        return exited(m, f);
    }
    m.live = false;
    m.pid = 0;
    ++m.generation;
    m.restart_pending = false;
    set_state(m, MachineState::stopped, "api:start failed: " + st.message());
    db_.update_state(m.spec.name, m.state, m.state_reason, 0);
    finish_op(m, st);
}

void Machines::graceful_stop(Machine& m, std::chrono::seconds timeout) {
    const char* reason = m.restart_pending ? "api:restart" : "api:stop";
    set_state(m, MachineState::stopping, reason);
    m.runtime->stop(m.instance(), timeout, reason);
}

void Machines::kill_now(Machine& m) {
    m.runtime->kill(m.instance(), [this, name = m.spec.name, gen = m.generation](const Status& st) {
        if (st) {
            return;  // the instance's end completes what waits
        }
        spdlog::warn("{}: cannot kill it: {}", name, st.message());
        // Nothing will end: what waits for the kill fails now.
        with_machine(name, gen, [&](Machine& m) {
            m.delete_after_exit = false;
            m.exit_reason.clear();
            if (m.op != Op::none) {
                finish_op(m,
                          {Errc::unavailable, "the machine could not be killed: " + st.message()});
            }
        });
    });
}

// ---- what the runtime reports ----------------------------------------------------------

void Machines::on_pid(const InstanceRef& ref, pid_t pid) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) {
        if (m.pid != pid) {
            m.pid = pid;
            db_.update_state(m.spec.name, m.state, m.state_reason, m.pid);
        }
    });
}

void Machines::on_running(const InstanceRef& ref, const std::string& reason) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) {
        m.live = true;
        if (m.state != MachineState::running && m.state != MachineState::stopping) {
            set_state(m, MachineState::running, reason);
        }
        if (m.op == Op::start || m.op == Op::resume ||
            (m.op == Op::restart && !m.restart_pending)) {
            finish_op(m, {});
        }
    });
}

void Machines::on_paused(const InstanceRef& ref, const std::string& reason) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) {
        if (m.state == MachineState::running) {
            set_state(m, MachineState::paused, reason);
        }
        if (m.op == Op::pause) {
            finish_op(m, {});
        }
    });
}

void Machines::on_stopping(const InstanceRef& ref, const StoppingFact& fact) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) {
        if (m.state == MachineState::running || m.state == MachineState::paused ||
            m.state == MachineState::starting) {
            set_state(m, MachineState::stopping,
                      m.exit_reason.empty() ? fact.reason : m.exit_reason);
        }
        if (fact.from_outside && m.exit_reason.empty() && !m.explaining && explainer_) {
            m.explaining = true;
            explainer_(m, [this, ref](std::string why) {
                with_instance(ref, [&](Machine& m) {
                    if (!why.empty() && m.exit_reason.empty()) {
                        m.exit_reason = std::move(why);
                    }
                    explained(m);
                });
            });
        }
    });
}

void Machines::on_exited(const InstanceRef& ref, const ExitFact& fact) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) { exited(m, fact); });
}

void Machines::on_responsive(const InstanceRef& ref, bool responsive, const std::string& why) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) { set_responsive(m, responsive, why); });
}

void Machines::on_reset(const InstanceRef& ref, const std::string& reason) {
    HANGAR_ASSERT_REACTOR();
    with_instance(ref, [&](Machine& m) {
        if (reset_listener_) {
            reset_listener_(m.spec.name, reason);
        }
    });
}

void Machines::set_responsive(Machine& m, bool responsive, const std::string& why) {
    if (m.unresponsive == !responsive) {
        return;
    }
    m.unresponsive = !responsive;
    events_.publish(MachineUpdated{{"unresponsive"}, why, to_json(m)}, m.spec.name, m.spec.owner);
    spdlog::log(responsive ? spdlog::level::info : spdlog::level::warn, "{}: {}", m.spec.name, why);
}

void Machines::explained(Machine& m) {
    m.explaining = false;
    if (auto exit = std::exchange(m.deferred_exit, std::nullopt)) {
        exited(m, *exit);
    }
}

void Machines::exited(Machine& m, const ExitFact& fact) {
    if (m.explaining) {
        m.deferred_exit = fact;
        return;
    }
    m.live = false;
    m.pid = 0;
    m.unresponsive = false;
    ++m.generation;
    // hangard's own reason (kill, delete, machined) wins over what the runtime knows.
    const std::string& reason = m.exit_reason.empty() ? fact.reason : m.exit_reason;
    if (fact.crash && m.exit_reason.empty()) {
        set_state(m, MachineState::crashed, reason + " " + fact.how);
    } else if (!reason.empty()) {
        set_state(m, MachineState::stopped, reason);
    } else {
        set_state(m, fact.clean ? MachineState::stopped : MachineState::crashed, fact.how);
    }
    db_.update_state(m.spec.name, m.state, m.state_reason, 0);
    bool reboot = fact.reboot && m.exit_reason.empty();
    m.exit_reason.clear();

    if (m.delete_after_exit) {
        auto waiters = std::move(m.waiters);
        m.waiters.clear();
        erase(m);  // `m` is gone after this
        for (auto& [op, done] : waiters) {
            done(op == Op::remove || op == Op::kill || op == Op::stop
                     ? Status{}
                     : Status{Errc::conflict, "the machine was deleted"});
        }
        return;
    }
    if ((m.restart_pending || reboot) && m.state == MachineState::stopped) {
        m.restart_pending = false;
        launch(m, reboot ? fact.reason : "api:restart");
        return;
    }
    m.restart_pending = false;
    db_.flush();
    auto waiters = std::move(m.waiters);
    m.waiters.clear();
    m.op = Op::none;
    for (auto& [op, done] : waiters) {
        if (op == Op::stop || op == Op::kill) {
            done({});
        } else {
            done({Errc::conflict, "the machine ended during " + std::string(to_string(op)) +
                                      ": it is " + std::string(to_string(m.state)) + " (" +
                                      m.state_reason + ")"});
        }
    }
}

// ---- exec ------------------------------------------------------------------------------

Status Machines::exec(const Caller& caller, const std::string& name, ExecRequest req,
                      ExecDone done) {
    HANGAR_ASSERT_REACTOR();
    Machine* m = nullptr;
    if (Status st = lookup(caller, name, &m); !st) {
        return st;
    }
    if (Status st = m->runtime->supports(Capability::exec, name); !st) {
        return st;
    }
    if (Status st = check_exec(req); !st) {
        return st;
    }
    if (m->state == MachineState::running && m->live) {
        m->runtime->exec(
            m->spec, m->instance(), true, std::move(req),
            [this, name, done = std::move(done)](const Status& st, const ExecResult& r) {
                if (!machines_.count(name)) {
                    return done({Errc::conflict, "the machine was deleted"}, {});
                }
                done(st, r);
            });
        return {};
    }
    if (m->state != MachineState::stopped && m->state != MachineState::crashed) {
        return {Errc::invalid_state,
                "cannot exec in " + name + ": it is " + std::string(to_string(m->state))};
    }
    if (req.interactive) {
        return {Errc::invalid_state, "an interactive exec needs " + name + " running: it is " +
                                         std::string(to_string(m->state))};
    }
    if (m->op != Op::none) {
        return {Errc::busy,
                "machine " + name + " is busy: " + std::string(to_string(m->op)) + " in progress"};
    }
    // The stopped machine's files are the command's alone: starts and deletes wait (busy).
    m->op = Op::exec;
    uint64_t gen = m->generation;
    m->runtime->exec(
        m->spec, m->instance(), false, std::move(req),
        [this, name, gen, done = std::move(done)](const Status& st, const ExecResult& r) {
            with_machine(name, gen, [&](Machine& m) {
                if (m.op == Op::exec) {
                    finish_op(m, {});
                }
            });
            done(st, r);
        });
    return {};
}

Status Machines::idle(const std::string& name) const {
    auto it = machines_.find(name);
    if (it == machines_.end()) {
        return {Errc::not_found, "no machine named " + name};
    }
    const Machine& m = *it->second;
    if (m.op != Op::none) {
        return {Errc::busy,
                "machine " + name + " is busy: " + std::string(to_string(m.op)) + " in progress"};
    }
    return {};
}

Status Machines::hold(const std::string& name, Op op) {
    if (Status st = idle(name); !st) {
        return st;
    }
    machines_.at(name)->op = op;
    return {};
}

void Machines::release(const std::string& name, Op op) {
    auto it = machines_.find(name);
    if (it != machines_.end() && it->second->op == op) {
        finish_op(*it->second, {});
    }
}

// ---- adoption --------------------------------------------------------------------------

void Machines::load_and_adopt(std::function<void(size_t, size_t)> done) {
    HANGAR_ASSERT_REACTOR();
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
        auto type = parse_machine_type(m->spec.type);
        m->runtime = type ? runtime_for(*type) : nullptr;
        if (!m->runtime) {
            spdlog::error("{}: stored with type {}, which this hangard does not run; left out",
                          m->spec.name, json::quote(m->spec.type));
            continue;
        }
        m->type = *type;
        Machine& ref = *m;
        machines_.emplace(ref.spec.name, std::move(m));
        ref.op = Op::adopt;
        ++*remaining;
        std::string name = ref.spec.name;
        uint64_t gen = ++ref.generation;
        ref.runtime->adopt(
            ref.spec, ref.state, ref.instance(),
            [this, name, gen, adopted_count, settle](const Status& st, const Adoption& a) {
                with_machine(name, gen, [&](Machine& m) {
                    m.op = Op::none;
                    if (!st) {
                        Adoption gone{AdoptFact::gone, st.message(), 0};
                        return adopted(m, gone);
                    }
                    if (a.fact != AdoptFact::none && a.fact != AdoptFact::gone &&
                        a.fact != AdoptFact::later) {
                        ++*adopted_count;
                    }
                    adopted(m, a);
                });
                settle();
            });
    }
    boost::asio::post(io_, settle);
}

void Machines::adopted(Machine& m, const Adoption& a) {
    switch (a.fact) {
        case AdoptFact::none:
            m.pid = 0;
            return;
        case AdoptFact::gone:
            m.pid = 0;
            if (m.state == MachineState::stopping) {
                set_state(m, MachineState::stopped, "adopt: " + a.reason);
            } else if (is_active(m.state)) {
                set_state(m, MachineState::crashed,
                          "adopt: " + a.reason + " (exited while hangard was down)");
            }
            db_.update_state(m.spec.name, m.state, m.state_reason, 0);
            return;
        case AdoptFact::later:
            // Reported when the runtime can tell; until then it is taken to run as stored.
            m.live = is_active(m.state);
            if (m.live && !a.reason.empty()) {
                m.unresponsive = true;
                m.state_reason += " (" + a.reason + ")";
            }
            return;
        default:
            break;
    }
    m.live = true;
    m.pid = a.pid;
    spdlog::info("{}: adopted pid {} ({})", m.spec.name, m.pid, a.reason);
    switch (a.fact) {
        case AdoptFact::running:
            set_state(m, MachineState::running, a.reason);
            break;
        case AdoptFact::paused:
            set_state(m, MachineState::paused, a.reason);
            break;
        case AdoptFact::starting:
            set_state(m, MachineState::starting, a.reason);
            break;
        case AdoptFact::stopping:
            set_state(m, MachineState::stopping, a.reason);
            break;
        case AdoptFact::unresponsive:
            set_responsive(m, false, a.reason);
            break;
        default:  // failing: its exit follows
            break;
    }
    db_.update_state(m.spec.name, m.state, m.state_reason, m.pid);
}

void Machines::detach_all() {
    HANGAR_ASSERT_REACTOR();
    for (Runtime* rt : runtimes_) {
        rt->detach_all();
    }
    db_.flush();
}

}  // namespace hangar::core
