#include "dbus/machined.hpp"

#include <systemd/sd-bus.h>
#include <systemd/sd-id128.h>

#include <cstring>
#include <map>
#include <set>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "dbus/raw_client.hpp"
#include "util/reactor.hpp"

namespace hangar::dbus {

namespace {
constexpr const char* kMachined = "org.freedesktop.machine1";
constexpr const char* kManagerPath = "/org/freedesktop/machine1";
constexpr const char* kManagerIface = "org.freedesktop.machine1.Manager";
constexpr const char* kMachineIface = "org.freedesktop.machine1.Machine";
constexpr const char* kService = "hangar";  // the service name hangar's entries carry
constexpr uint64_t kCallTimeoutUsec = 5'000'000;
constexpr uint64_t kExplainTimeoutUsec = 1'000'000;

std::string machine_object(const std::string& name) {
    return object_path("/org/freedesktop/machine1/machine", name);
}
}  // namespace

struct Machined::Impl : RawClient {
    core::Machines& machines;
    core::EventBus& events;

    uint64_t epoch = 0;    // identifies one listing of machined; older replies are dropped
    bool present = false;  // machined owns its name and has been listed
    uint64_t subscription = 0;

    // What machined holds for one of hangar's names, as far as hangard knows.
    struct Entry {
        pid_t pid = 0;             // registered leader; 0 when none
        pid_t refused = 0;         // a leader machined refused or dropped: not asked again
        bool busy = false;         // a call about this name is in flight
        bool terminating = false;  // hangard asked for its end; MachineRemoved will follow
        bool creating = false;     // CreateMachine sent: machined has it before it answers
        bool removed_outside = false;
    };
    std::map<std::string, Entry> entries;
    // Machines::ExitExplainer answers owed; all are answered (with "") if the bus goes.
    std::map<uint64_t, std::function<void(std::string)>> explaining;
    uint64_t next_explain = 0;

    Impl(boost::asio::io_context& i, core::Machines& m, core::EventBus& e, std::string a)
        : RawClient(i, std::move(a), "machined"), machines(m), events(e) {}

    void connected() override;
    void closing() override;
    void list();
    void sync(const std::string& name);
    void create(const std::string& name, pid_t leader);
    void terminate(const std::string& name, const char* why);
    void removed(const std::string& name);
    void explain(const core::Machine& m, std::function<void(std::string)> answer);
    pid_t wanted(const std::string& name) const;

    sd_bus_message* call(const std::string& path, const char* iface, const char* member) {
        return method(kMachined, path, iface, member);
    }
    void get_machine_property(const std::string& name, const char* property, Reply fn,
                              uint64_t timeout_usec) {
        get_property(kMachined, machine_object(name), kMachineIface, property, std::move(fn),
                     timeout_usec);
    }
    const std::string& state() const { return state_; }
    void left() {
        state_ = std::string(kMachined) + " left " + address_;
        spdlog::warn("machined: {}", state_);
    }
};

namespace {
// Matched signals; userdata is the Impl, which outlives its bus.
int on_signal(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* impl = static_cast<Machined::Impl*>(static_cast<RawClient*>(userdata));
    const char *a = nullptr, *b = nullptr, *c = nullptr;
    try {
        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus", "NameOwnerChanged")) {
            if (sd_bus_message_read(m, "sss", &a, &b, &c) < 0) {
                return 0;
            }
            impl->present = false;
            ++impl->epoch;
            impl->entries.clear();
            if (c && *c) {
                spdlog::info("machined: {} is on the bus (again): listing its machines", kMachined);
                impl->list();
            } else {
                impl->left();
            }
        } else if (sd_bus_message_is_signal(m, kManagerIface, "MachineRemoved")) {
            if (sd_bus_message_read(m, "so", &a, &b) >= 0 && impl->present) {
                impl->removed(a);
            }
        } else if (sd_bus_message_is_signal(m, kManagerIface, "MachineNew")) {
            if (sd_bus_message_read(m, "so", &a, &b) >= 0) {
                spdlog::debug("machined: new machine {}", a);
            }
        }
    } catch (...) {
        // A C callback: nothing may unwind through sd-bus. A bug ends the daemon.
        reactor::die_in("machined signal handler");
    }
    return 0;
}

}  // namespace

void Machined::Impl::connected() {
    // Subscribe first (asynchronously: AddMatch is a call to the bus), then list.
    std::string sender = std::string("sender='") + kMachined + "',path='" + kManagerPath +
                         "',interface='" + kManagerIface + "',type='signal',member=";
    std::string owner = std::string(
                            "sender='org.freedesktop.DBus',type='signal',"
                            "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                            "arg0='") +
                        kMachined + "'";
    for (const std::string& match : {sender + "'MachineNew'", sender + "'MachineRemoved'", owner}) {
        if (!add_match(match, on_signal)) {
            return;
        }
    }
    // The bus answers in order: once this reply is in, every match above is installed.
    sd_bus_message* m = method("org.freedesktop.DBus", "/org/freedesktop/DBus",
                               "org.freedesktop.DBus", "GetNameOwner");
    if (m && sd_bus_message_append(m, "s", kMachined) < 0) {
        m = sd_bus_message_unref(m);
    }
    send(
        m,
        [this](sd_bus_message*, const sd_bus_error* err) {
            backoff_.connected();
            if (err) {
                state_ = std::string(kMachined) + " is not on " + address_;
                spdlog::info("machined: {}; VMs are registered when it appears", state_);
                return;
            }
            list();
        },
        kCallTimeoutUsec);
}

void Machined::Impl::list() {
    uint64_t ep = ++epoch;
    state_ = "listing " + std::string(kMachined);
    send(call(kManagerPath, kManagerIface, "ListMachines"),
         [this, ep](sd_bus_message* reply, const sd_bus_error* err) {
             if (ep != epoch) {
                 return;
             }
             if (err) {
                 state_ = "cannot list machined's machines: " + error_text(err);
                 spdlog::warn("machined: {}", state_);
                 return;
             }
             std::set<std::string> ours;
             const char *name, *cls, *service, *path;
             if (sd_bus_message_enter_container(reply, 'a', "(ssso)") >= 0) {
                 while (sd_bus_message_read(reply, "(ssso)", &name, &cls, &service, &path) > 0) {
                     if (strcmp(service, kService) == 0) {
                         ours.insert(name);
                     }
                 }
             }
             present = true;
             entries.clear();
             state_ = "in step with " + std::string(kMachined);
             spdlog::info("machined: {} entries of hangar's, {} machines here", ours.size(),
                          machines.all().size());
             // Entries of hangar's: which QEMU do they lead? Then each is kept or ended.
             for (const auto& n : ours) {
                 entries[n].busy = true;
                 get_machine_property(
                     n, "Leader",
                     [this, ep, n](sd_bus_message* reply, const sd_bus_error* err) {
                         if (ep != epoch) {
                             return;
                         }
                         uint32_t leader = 0;
                         if (err || sd_bus_message_read(reply, "v", "u", &leader) < 0) {
                             leader = 0;  // gone meanwhile, or unreadable: ended below
                         }
                         auto& e = entries[n];
                         e.busy = false;
                         e.pid = static_cast<pid_t>(leader);
                         if (e.pid == 0) {
                             entries.erase(n);
                         } else if (e.pid != wanted(n)) {
                             return terminate(n, "stale (left by an earlier hangard)");
                         }
                         sync(n);
                     },
                     kCallTimeoutUsec);
             }
             for (const auto& [n, m] : machines.all()) {
                 if (!ours.count(n)) {
                     sync(n);
                 }
             }
         });
}

pid_t Machined::Impl::wanted(const std::string& name) const {
    auto it = machines.all().find(name);
    if (it == machines.all().end() || it->second->type != core::MachineType::vm) {
        return 0;
    }
    // From the first event after QEMU is spawned until it exits (a graceful stop included).
    return it->second->pid;
}

// Brings machined's entry for `name` in line with the machine: one call at a time per name.
void Machined::Impl::sync(const std::string& name) {
    if (!present) {
        return;
    }
    Entry& e = entries[name];
    if (e.busy) {
        return;
    }
    pid_t want = wanted(name);
    if (e.pid != 0 && e.pid != want) {
        return terminate(name, want ? "its leader changed" : "its QEMU is gone");
    }
    if (e.pid == 0 && want != 0 && want != e.refused) {
        return create(name, want);
    }
    if (e.pid == 0 && want == 0 && !e.removed_outside) {
        entries.erase(name);
    }
}

void Machined::Impl::create(const std::string& name, pid_t leader) {
    const core::Machine& m = *machines.all().at(name);
    sd_id128_t id{};
    if (sd_id128_from_string(m.spec.uuid.c_str(), &id) < 0) {
        spdlog::warn("machined: {}: UUID {} is not usable; not registered", name, m.spec.uuid);
        entries[name].refused = leader;
        return;
    }
    sd_bus_message* msg = call(kManagerPath, kManagerIface, "CreateMachine");
    std::string description = "hangar VM " + name;
    if (msg && (sd_bus_message_append(msg, "s", name.c_str()) < 0 ||
                sd_bus_message_append_array(msg, 'y', id.bytes, sizeof id.bytes) < 0 ||
                sd_bus_message_append(msg, "ssus", kService, "vm", uint32_t(leader), "") < 0 ||
                sd_bus_message_append(msg, "a(sv)", 2, "Description", "s", description.c_str(),
                                      "CollectMode", "s", "inactive-or-failed") < 0)) {
        msg = sd_bus_message_unref(msg);
    }
    entries[name].busy = entries[name].creating = true;
    send(msg, [this, ep = epoch, name, leader](sd_bus_message*, const sd_bus_error* err) {
        if (ep != epoch) {
            return;
        }
        Entry& e = entries[name];
        e.busy = e.creating = false;
        if (err) {
            e.refused = leader;
            spdlog::warn("machined: cannot register {} (leader {}): {}", name, leader,
                         error_text(err));
        } else {
            e.pid = leader;
            e.removed_outside = false;
            spdlog::info("machined: registered {} (class vm, leader {})", name, leader);
        }
        sync(name);
    });
}

void Machined::Impl::terminate(const std::string& name, const char* why) {
    sd_bus_message* msg = call(kManagerPath, kManagerIface, "TerminateMachine");
    if (msg && sd_bus_message_append(msg, "s", name.c_str()) < 0) {
        msg = sd_bus_message_unref(msg);
    }
    Entry& e = entries[name];
    e.busy = e.terminating = true;
    spdlog::info("machined: terminating {}: {}", name, why);
    send(msg, [this, ep = epoch, name](sd_bus_message*, const sd_bus_error* err) {
        if (ep != epoch || !entries.count(name) || !entries[name].terminating) {
            return;  // MachineRemoved came first
        }
        if (err) {
            if (!error_is(err, "org.freedesktop.machine1.NoSuchMachine")) {
                spdlog::warn("machined: cannot terminate {}: {}", name, error_text(err));
            }
            return removed(name);  // gone, or nothing more to do about it
        }
        // Done when machined says MachineRemoved.
    });
}

// machined's MachineRemoved, or the end of hangard's own TerminateMachine.
void Machined::Impl::removed(const std::string& name) {
    auto it = entries.find(name);
    if (it == entries.end()) {
        return;  // not hangar's
    }
    Entry& e = it->second;
    if (e.terminating) {
        e = Entry{};
    } else if (e.pid != 0) {
        spdlog::info("machined: {} was removed from machined by someone else", name);
        e.refused = e.pid;  // while this QEMU lives, hangard does not register it again
        e.pid = 0;
        e.removed_outside = true;
    }
    sync(name);
}

void Machined::Impl::explain(const core::Machine& m, std::function<void(std::string)> answer) {
    auto it = entries.find(m.spec.name);
    // A container registers itself (through nspawn): it is asked about like a VM hangard
    // registered, but only machined's "closing" tells that machined ended it.
    bool own = m.type == core::MachineType::container;
    if (!present || (!own && it == entries.end()) ||
        (it != entries.end() && it->second.terminating)) {
        return answer("");
    }
    // machined lists a new machine (and may end it) before it answers CreateMachine: one
    // still being created is asked about too.
    if (!own && it->second.pid == 0 && !it->second.creating) {
        return answer(it->second.removed_outside ? core::kMachinedTerminated : "");
    }
    // machined marks a machine "closing" before it has its scope stopped, and may be done with
    // it by the time this call arrives: either way the signal QEMU got came from machined.
    uint64_t id = next_explain++;
    explaining[id] = std::move(answer);
    get_machine_property(
        m.spec.name, "State",
        [this, id, own](sd_bus_message* reply, const sd_bus_error* err) {
            auto node = explaining.extract(id);
            if (node.empty()) {
                return;
            }
            const char* st = nullptr;
            std::string why;
            if (!own && (error_is(err, "org.freedesktop.machine1.NoSuchMachine") ||
                         error_is(err, "org.freedesktop.DBus.Error.UnknownObject"))) {
                why = core::kMachinedTerminated;
            } else if (!err && sd_bus_message_read(reply, "v", "s", &st) >= 0 && st &&
                       strcmp(st, "closing") == 0) {
                why = core::kMachinedTerminated;
            }
            node.mapped()(why);
        },
        kExplainTimeoutUsec);
}

void Machined::Impl::closing() {
    ++epoch;
    present = false;
    entries.clear();
    for (auto& [id, answer] : std::exchange(explaining, {})) {
        answer("");
    }
}

Machined::Machined(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
                   std::string address)
    : impl_(std::make_shared<Impl>(io, machines, events, std::move(address))) {}

Machined::~Machined() {
    if (impl_->subscription) {
        impl_->events.unsubscribe(impl_->subscription);
    }
    impl_->machines.set_exit_explainer({});
    impl_->teardown();
}

void Machined::start() {
    std::weak_ptr<Impl> weak = impl_;
    impl_->subscription = impl_->events.subscribe([weak](const core::Event& e) {
        auto self = weak.lock();
        if (self && (e.kind == core::EventType::machine_state ||
                     e.kind == core::EventType::machine_deleted)) {
            self->sync(e.machine);
        }
    });
    impl_->machines.set_exit_explainer(
        [weak](const core::Machine& m, std::function<void(std::string)> answer) {
            auto self = weak.lock();
            self ? self->explain(m, std::move(answer)) : answer("");
        });
    impl_->connect();
}

bool Machined::healthy(std::string& detail) const {
    size_t registered = 0;
    for (const auto& [name, e] : impl_->entries) {
        registered += e.pid != 0;
    }
    detail = impl_->state();
    if (impl_->present) {
        detail += ", " + std::to_string(registered) + " VMs registered";
    }
    return impl_->present;
}

}  // namespace hangar::dbus
