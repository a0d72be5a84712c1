#include "dbus/machined.hpp"

#include <systemd/sd-bus.h>
#include <systemd/sd-id128.h>

#include <cstring>
#include <map>
#include <set>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "dbus/pump.hpp"

namespace hangar::dbus {

namespace {
constexpr const char* kMachined = "org.freedesktop.machine1";
constexpr const char* kManagerPath = "/org/freedesktop/machine1";
constexpr const char* kManagerIface = "org.freedesktop.machine1.Manager";
constexpr const char* kMachineIface = "org.freedesktop.machine1.Machine";
constexpr const char* kService = "hangar";  // the service name hangar's entries carry
constexpr uint64_t kCallTimeoutUsec = 5'000'000;
constexpr uint64_t kExplainTimeoutUsec = 1'000'000;

// A reply (or error: `err` set) to one asynchronous call.
using Reply = std::function<void(sd_bus_message* reply, const sd_bus_error* err)>;

int on_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
    const sd_bus_error* err = sd_bus_message_get_error(m);
    try {
        (*static_cast<Reply*>(userdata))(m, err && sd_bus_error_is_set(err) ? err : nullptr);
    } catch (const std::exception& e) {
        spdlog::error("machined: handling a reply: {}", e.what());
    }
    return 0;
}

void destroy_reply(void* userdata) {
    delete static_cast<Reply*>(userdata);
}

std::string error_text(const sd_bus_error* err) {
    return std::string(err->name ? err->name : "error") + ": " +
           (err->message ? err->message : "no message");
}

bool error_is(const sd_bus_error* err, const char* name) {
    return err && err->name && strcmp(err->name, name) == 0;
}

std::string machine_object(const std::string& name) {
    char* path = nullptr;
    if (sd_bus_path_encode("/org/freedesktop/machine1/machine", name.c_str(), &path) < 0) {
        return {};
    }
    std::string out(path);
    free(path);
    return out;
}
}  // namespace

struct Machined::Impl : std::enable_shared_from_this<Machined::Impl> {
    boost::asio::io_context& io;
    core::Machines& machines;
    core::EventBus& events;
    std::string address;

    sd_bus* bus = nullptr;
    std::shared_ptr<Pump> pump;
    Backoff backoff{io};
    uint64_t conn_gen = 0;  // identifies the connection; replies from older ones are dropped
    uint64_t epoch = 0;     // identifies one listing of machined; older replies are dropped
    bool present = false;   // machined owns its name and has been listed
    std::string state = "not connected yet";
    uint64_t subscription = 0;

    // What machined holds for one of hangar's names, as far as hangard knows.
    struct Entry {
        pid_t pid = 0;             // registered leader; 0 when none
        pid_t refused = 0;         // a leader machined refused or dropped: not asked again
        bool busy = false;         // a call about this name is in flight
        bool terminating = false;  // hangard asked for its end; MachineRemoved will follow
        bool removed_outside = false;
    };
    std::map<std::string, Entry> entries;
    // Machines::ExitExplainer answers owed; all are answered (with "") if the bus goes.
    std::map<uint64_t, std::function<void(std::string)>> explaining;
    uint64_t next_explain = 0;

    Impl(boost::asio::io_context& i, core::Machines& m, core::EventBus& e, std::string a)
        : io(i), machines(m), events(e), address(std::move(a)) {}

    void connect();
    void lost(const std::string& why);
    void teardown();
    void subscribed();
    void list();
    void sync(const std::string& name);
    void create(const std::string& name, pid_t leader);
    void terminate(const std::string& name, const char* why);
    void removed(const std::string& name);
    void explain(const core::Machine& m, std::function<void(std::string)> answer);
    pid_t wanted(const std::string& name) const;

    // A method call to machined that never starts it: nullptr when the bus refuses.
    sd_bus_message* method(const std::string& path, const char* iface, const char* member) {
        sd_bus_message* m = nullptr;
        if (sd_bus_message_new_method_call(bus, &m, kMachined, path.c_str(), iface, member) < 0) {
            return nullptr;
        }
        sd_bus_message_set_auto_start(m, 0);
        return m;
    }
    // Sends `m` (taking it); `fn` runs with the reply unless the connection is gone by then.
    void send(sd_bus_message* m, Reply fn, uint64_t timeout_usec = kCallTimeoutUsec) {
        auto* owned = new Reply([weak = weak_from_this(), gen = conn_gen, fn = std::move(fn)](
                                    sd_bus_message* reply, const sd_bus_error* err) {
            if (auto self = weak.lock(); self && self->conn_gen == gen) {
                fn(reply, err);
            }
        });
        sd_bus_slot* slot = nullptr;
        int r = m ? sd_bus_call_async(bus, &slot, m, on_reply, owned, timeout_usec) : -ENOMEM;
        sd_bus_message_unref(m);
        if (r < 0) {
            delete owned;
            return lost(std::string("cannot send to machined: ") + strerror(-r));
        }
        sd_bus_slot_set_destroy_callback(slot, destroy_reply);
        sd_bus_slot_set_floating(slot, 1);  // the bus owns it now, and frees `owned` with it
        pump->kick();
    }
    // Calls machined's Properties.Get(property) of machine `name`.
    void get_property(const std::string& name, const char* property, Reply fn,
                      uint64_t timeout_usec) {
        sd_bus_message* m = method(machine_object(name), "org.freedesktop.DBus.Properties", "Get");
        if (m && sd_bus_message_append(m, "ss", kMachineIface, property) < 0) {
            m = sd_bus_message_unref(m);
        }
        send(m, std::move(fn), timeout_usec);
    }
};

namespace {
// Matched signals; userdata is the Impl, which outlives its bus.
int on_signal(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* impl = static_cast<Machined::Impl*>(userdata);
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
                impl->state = std::string(kMachined) + " left " + impl->address;
                spdlog::warn("machined: {}", impl->state);
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
    } catch (const std::exception& e) {
        spdlog::error("machined: handling a signal: {}", e.what());
    }
    return 0;
}

int on_match_installed(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* impl = static_cast<Machined::Impl*>(userdata);
    const sd_bus_error* err = sd_bus_message_get_error(m);
    if (err && sd_bus_error_is_set(err)) {
        impl->lost("cannot subscribe to machined's signals: " + error_text(err));
    }
    return 0;
}
}  // namespace

void Machined::Impl::connect() {
    ++conn_gen;
    int r = 0;
    if (address == "system") {
        r = sd_bus_open_system(&bus);
    } else if (address == "session") {
        r = sd_bus_open_user(&bus);
    } else if ((r = sd_bus_new(&bus)) >= 0) {
        if ((r = sd_bus_set_address(bus, address.c_str())) >= 0 &&
            (r = sd_bus_set_bus_client(bus, 1)) >= 0) {
            r = sd_bus_start(bus);
        }
    }
    if (r >= 0) {
        sd_bus_set_description(bus, "hangar-machined");
        r = sd_bus_get_fd(bus);
    }
    if (r < 0) {
        return lost(std::string("cannot connect: ") + strerror(-r));
    }
    pump->attach(r);
    state = "connected to " + address + ", subscribing";
    // Subscribe first (asynchronously: AddMatch is a call to the bus), then list.
    std::string sender = std::string("sender='") + kMachined + "',path='" + kManagerPath +
                         "',interface='" + kManagerIface + "',type='signal',member=";
    std::string owner = std::string(
                            "sender='org.freedesktop.DBus',type='signal',"
                            "interface='org.freedesktop.DBus',member='NameOwnerChanged',"
                            "arg0='") +
                        kMachined + "'";
    for (const std::string& match : {sender + "'MachineNew'", sender + "'MachineRemoved'", owner}) {
        if ((r = sd_bus_add_match_async(bus, nullptr, match.c_str(), on_signal, on_match_installed,
                                        this)) < 0) {
            return lost(std::string("cannot subscribe: ") + strerror(-r));
        }
    }
    // The bus answers in order: once this reply is in, every match above is installed.
    sd_bus_message* m = nullptr;
    if (sd_bus_message_new_method_call(bus, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "GetNameOwner") < 0 ||
        sd_bus_message_append(m, "s", kMachined) < 0) {
        m = sd_bus_message_unref(m);
    }
    send(m, [this](sd_bus_message*, const sd_bus_error* err) {
        backoff.connected();
        if (err) {
            state = std::string(kMachined) + " is not on " + address;
            spdlog::info("machined: {}; VMs are registered when it appears", state);
            return;
        }
        list();
    });
}

void Machined::Impl::list() {
    uint64_t ep = ++epoch;
    state = "listing " + std::string(kMachined);
    send(method(kManagerPath, kManagerIface, "ListMachines"),
         [this, ep](sd_bus_message* reply, const sd_bus_error* err) {
             if (ep != epoch) {
                 return;
             }
             if (err) {
                 state = "cannot list machined's machines: " + error_text(err);
                 spdlog::warn("machined: {}", state);
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
             state = "in step with " + std::string(kMachined);
             spdlog::info("machined: {} entries of hangar's, {} machines here", ours.size(),
                          machines.all().size());
             // Entries of hangar's: which QEMU do they lead? Then each is kept or ended.
             for (const auto& n : ours) {
                 entries[n].busy = true;
                 get_property(
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
    if (it == machines.all().end() || it->second->spec.type != "vm") {
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
    sd_bus_message* msg = method(kManagerPath, kManagerIface, "CreateMachine");
    std::string description = "hangar VM " + name;
    if (msg && (sd_bus_message_append(msg, "s", name.c_str()) < 0 ||
                sd_bus_message_append_array(msg, 'y', id.bytes, sizeof id.bytes) < 0 ||
                sd_bus_message_append(msg, "ssus", kService, "vm", uint32_t(leader), "") < 0 ||
                sd_bus_message_append(msg, "a(sv)", 2, "Description", "s", description.c_str(),
                                      "CollectMode", "s", "inactive-or-failed") < 0)) {
        msg = sd_bus_message_unref(msg);
    }
    entries[name].busy = true;
    send(msg, [this, ep = epoch, name, leader](sd_bus_message*, const sd_bus_error* err) {
        if (ep != epoch) {
            return;
        }
        Entry& e = entries[name];
        e.busy = false;
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
    sd_bus_message* msg = method(kManagerPath, kManagerIface, "TerminateMachine");
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
    if (!present || it == entries.end() || it->second.terminating) {
        return answer("");
    }
    if (it->second.pid == 0) {
        return answer(it->second.removed_outside ? "machined:terminated" : "");
    }
    // machined marks a machine "closing" before it has its scope stopped, and may be done with
    // it by the time this call arrives: either way the signal QEMU got came from machined.
    uint64_t id = next_explain++;
    explaining[id] = std::move(answer);
    get_property(
        m.spec.name, "State",
        [this, id](sd_bus_message* reply, const sd_bus_error* err) {
            auto node = explaining.extract(id);
            if (node.empty()) {
                return;
            }
            const char* st = nullptr;
            std::string why;
            if (error_is(err, "org.freedesktop.machine1.NoSuchMachine") ||
                error_is(err, "org.freedesktop.DBus.Error.UnknownObject")) {
                why = "machined:terminated";
            } else if (!err && sd_bus_message_read(reply, "v", "s", &st) >= 0 && st &&
                       strcmp(st, "closing") == 0) {
                why = "machined:terminated";
            }
            node.mapped()(why);
        },
        kExplainTimeoutUsec);
}

void Machined::Impl::teardown() {
    ++conn_gen;
    ++epoch;
    present = false;
    entries.clear();
    pump->detach();
    if (bus) {
        bus = sd_bus_flush_close_unref(bus);
    }
    for (auto& [id, answer] : std::exchange(explaining, {})) {
        answer("");
    }
}

void Machined::Impl::lost(const std::string& why) {
    spdlog::warn("machined: lost {}: {}; retrying in {} s", address, why, backoff.delay().count());
    state = "not connected to " + address + ": " + why;
    backoff.after_loss(
        weak_from_this(), [this, gen = conn_gen] { return gen == conn_gen; },
        [this] { teardown(); }, [this] { connect(); });
}

Machined::Machined(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
                   std::string address)
    : impl_(std::make_shared<Impl>(io, machines, events, std::move(address))) {
    std::weak_ptr<Impl> weak = impl_;
    impl_->pump =
        std::make_shared<Pump>(io, Pump::Hooks{[weak] {
                                                   auto self = weak.lock();
                                                   if (!self || !self->bus) {
                                                       return false;
                                                   }
                                                   int r = sd_bus_process(self->bus, nullptr);
                                                   if (r < 0) {
                                                       throw std::runtime_error(strerror(-r));
                                                   }
                                                   return r > 0;
                                               },
                                               [weak] {
                                                   auto self = weak.lock();
                                                   int ev = sd_bus_get_events(self->bus);
                                                   if (ev < 0) {
                                                       throw std::runtime_error(strerror(-ev));
                                                   }
                                                   uint64_t t = UINT64_MAX;
                                                   sd_bus_get_timeout(self->bus, &t);
                                                   return Pump::Wants{static_cast<short>(ev), t};
                                               },
                                               [weak](const std::string& why) {
                                                   if (auto self = weak.lock()) {
                                                       self->lost(why);
                                                   }
                                               }});
}

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
        if (self && (e.type == "machine.state" || e.type == "machine.deleted")) {
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
    detail = impl_->state;
    if (impl_->present) {
        detail += ", " + std::to_string(registered) + " VMs registered";
    }
    return impl_->present;
}

}  // namespace hangar::dbus
