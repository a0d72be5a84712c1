#include "dbus/service.hpp"

#include "dbus/pump.hpp"

#include <unistd.h>

#include <map>
#include <set>
#include <unordered_map>

#include <sdbus-c++/sdbus-c++.h>
#include <simdjson.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "hangar/names.hpp"
#include "machine1_adaptor.h"
#include "manager1_adaptor.h"
#include "util/json.hpp"

namespace hangar::dbus {

namespace {
constexpr const char* kName = "org.hangar";
constexpr const char* kManagerPath = "/org/hangar";

// org.hangar.Error.* from the same codes as the HTTP errors.
sdbus::Error to_error(const Status& st) {
    std::string code(errc_name(st.code()));
    std::string camel;
    bool up = true;
    for (char c : code) {
        if (c == '_') {
            up = true;
        } else {
            camel += up ? static_cast<char>(toupper(c)) : c;
            up = false;
        }
    }
    return sdbus::Error("org.hangar.Error." + camel, st.message());
}

template <typename... T>
void answer(sdbus::Result<T...>& result, const Status& st) {
    if (!st) {
        result.returnError(to_error(st));
    }
}
}  // namespace

std::string machine_path(const std::string& name) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out = "/org/hangar/machine/";
    for (size_t i = 0; i < name.size(); ++i) {
        auto c = static_cast<unsigned char>(name[i]);
        if ((isalpha(c) || (isdigit(c) && i > 0)) && c < 0x80) {
            out += static_cast<char>(c);
        } else {
            out += '_';
            out += kHex[c >> 4];
            out += kHex[c & 15];
        }
    }
    return out;
}

using CallerDone = std::function<void(const Status&, const core::Caller&)>;

struct Service::Impl : std::enable_shared_from_this<Service::Impl> {
    boost::asio::io_context& io;
    core::Machines& machines;
    core::EventBus& events;
    std::string address;
    std::optional<unsigned> admin_gid;

    std::unique_ptr<sdbus::IConnection> conn;
    std::unique_ptr<sdbus::IProxy> bus_proxy;  // org.freedesktop.DBus
    std::shared_ptr<Pump> pump;
    Backoff backoff{io};
    uint64_t conn_gen = 0;  // identifies the current connection; stale callbacks compare it
    bool named = false;
    std::string state = "not connected yet";
    uint64_t subscription = 0;
    simdjson::dom::parser frame_parser;  // reads from/to/reason back out of machine.state frames

    class ManagerObject;
    class MachineObject;
    std::unique_ptr<ManagerObject> manager;
    std::map<std::string, std::unique_ptr<MachineObject>> objects;

    // Credentials of callers by unique bus name (never reused on one bus), and calls waiting
    // for a lookup in flight.
    std::unordered_map<std::string, core::Caller> callers;
    std::unordered_map<std::string, std::vector<CallerDone>> lookups;
    // Answers owed for operations in flight. A Result must not outlive its connection, so
    // they live here (teardown drops them first) and the operations hold weak references.
    std::set<std::shared_ptr<sdbus::Result<>>> owed;

    std::weak_ptr<sdbus::Result<>> owe(sdbus::Result<>&& r) {
        auto p = std::make_shared<sdbus::Result<>>(std::move(r));
        owed.insert(p);
        return p;
    }
    void pay(const std::weak_ptr<sdbus::Result<>>& w, const Status& st) {
        auto p = w.lock();
        if (!p) {
            return;  // the connection it came on is gone
        }
        st ? p->returnResults() : answer(*p, st);
        owed.erase(p);
        kick();
    }

    Impl(boost::asio::io_context& i, core::Machines& m, core::EventBus& e, std::string a,
         std::optional<unsigned> g)
        : io(i), machines(m), events(e), address(std::move(a)), admin_gid(g) {}

    void connect();
    void lost(const std::string& why);
    void reconnect_later();
    void teardown();
    void kick() { pump->kick(); }
    void export_machine(const core::Machine& m);
    void on_event(const core::Event& e);
    void with_caller(const std::string& sender, CallerDone done);
    void act(const std::string& sender, const std::string& name, core::Action action,
             sdbus::Result<>&& result);
};

class Service::Impl::MachineObject final
    : public sdbus::AdaptorInterfaces<org::hangar::Machine1_adaptor> {
  public:
    MachineObject(Impl& impl, const std::string& name)
        : AdaptorInterfaces(*impl.conn, machine_path(name)), impl_(impl), name_(name) {
        registerAdaptor();
    }
    ~MachineObject() { unregisterAdaptor(); }
    void properties_changed(const std::vector<std::string>& names) {
        getObject().emitPropertiesChangedSignal(org::hangar::Machine1_adaptor::INTERFACE_NAME,
                                                names);
    }

  private:
    const core::Machine& m() const { return *impl_.machines.all().at(name_); }
    std::string sender() { return getObject().getCurrentlyProcessedMessage()->getSender(); }
    void Start(sdbus::Result<>&& r) override { act(core::Action::start, std::move(r)); }
    void Stop(sdbus::Result<>&& r) override { act(core::Action::stop, std::move(r)); }
    void Kill(sdbus::Result<>&& r) override { act(core::Action::kill, std::move(r)); }
    void Restart(sdbus::Result<>&& r) override { act(core::Action::restart, std::move(r)); }
    void Pause(sdbus::Result<>&& r) override { act(core::Action::pause, std::move(r)); }
    void Resume(sdbus::Result<>&& r) override { act(core::Action::resume, std::move(r)); }
    void act(core::Action a, sdbus::Result<>&& r) { impl_.act(sender(), name_, a, std::move(r)); }
    std::string Name() override { return name_; }
    std::string UUID() override { return m().spec.uuid; }
    std::string Type() override { return m().spec.type; }
    std::string State() override { return std::string(to_string(m().state)); }
    std::string StateReason() override { return m().state_reason; }
    uint32_t Cpus() override { return m().spec.cpus; }
    uint32_t MemoryMiB() override { return m().spec.memory_mib; }
    uint32_t Owner() override { return m().spec.owner; }
    uint32_t Pid() override { return static_cast<uint32_t>(m().pid); }

    Impl& impl_;
    std::string name_;
};

class Service::Impl::ManagerObject final
    : public sdbus::AdaptorInterfaces<org::hangar::Manager1_adaptor> {
  public:
    explicit ManagerObject(Impl& impl) : AdaptorInterfaces(*impl.conn, kManagerPath), impl_(impl) {
        registerAdaptor();
    }
    ~ManagerObject() { unregisterAdaptor(); }

  private:
    using Entry = sdbus::Struct<std::string, std::string, std::string, uint32_t, sdbus::ObjectPath>;
    std::string sender() { return getObject().getCurrentlyProcessedMessage()->getSender(); }

    void ListMachines(sdbus::Result<std::vector<Entry>>&& result) override {
        auto r = std::make_shared<sdbus::Result<std::vector<Entry>>>(std::move(result));
        impl_.with_caller(sender(), [this, r](const Status& st, const core::Caller& caller) {
            if (!st) {
                return answer(*r, st);
            }
            std::vector<Entry> out;
            for (const auto* m : impl_.machines.list(caller, std::nullopt, "")) {
                out.emplace_back(m->spec.name, m->spec.type, std::string(to_string(m->state)),
                                 m->spec.owner, sdbus::ObjectPath(machine_path(m->spec.name)));
            }
            r->returnResults(out);
        });
    }
    void GetMachine(sdbus::Result<sdbus::ObjectPath>&& result, std::string name) override {
        auto r = std::make_shared<sdbus::Result<sdbus::ObjectPath>>(std::move(result));
        impl_.with_caller(sender(), [this, name, r](Status st, const core::Caller& caller) {
            const core::Machine* m = nullptr;
            if (st) {
                st = impl_.machines.get(caller, name, &m);
            }
            if (!st) {
                return answer(*r, st);
            }
            r->returnResults(sdbus::ObjectPath(machine_path(m->spec.name)));
        });
    }
    void CreateMachine(sdbus::Result<sdbus::ObjectPath>&& result, std::string name,
                       std::map<std::string, sdbus::Variant> spec_in) override {
        auto r = std::make_shared<sdbus::Result<sdbus::ObjectPath>>(std::move(result));
        impl_.with_caller(sender(), [this, name, spec_in, r](Status st,
                                                             const core::Caller& caller) {
            MachineSpec spec;
            spec.name = name;
            if (st) {
                st = check_name("machine", name);
            }
            for (const auto& [key, v] : spec_in) {
                if (!st) {
                    break;
                }
                try {
                    if (key == "cpus") {
                        spec.cpus = v.get<uint32_t>();
                    } else if (key == "memory_mib") {
                        spec.memory_mib = v.get<uint32_t>();
                    } else if (key == "description") {
                        spec.description = v.get<std::string>();
                    } else if (key == "autostart") {
                        spec.autostart = v.get<bool>();
                    } else if (key == "kernel") {
                        spec.boot.kernel = v.get<std::string>();
                    } else if (key == "initrd") {
                        spec.boot.initrd = v.get<std::string>();
                    } else if (key == "cmdline") {
                        spec.boot.cmdline = v.get<std::string>();
                    } else if (key == "disk") {
                        spec.boot.disk = v.get<std::string>();
                    } else if (key == "type") {
                        spec.type = v.get<std::string>();
                    } else if (key == "image") {
                        spec.image = v.get<std::string>();
                    } else if (key == "command") {
                        spec.boot.command = v.get<std::vector<std::string>>();
                    } else {
                        st = {Errc::bad_request, "unknown spec key " + json::quote(key)};
                    }
                } catch (const sdbus::Error&) {
                    st = {Errc::bad_request, "spec key " + json::quote(key) +
                                                 " has the wrong type (" + v.peekValueType() + ")"};
                }
            }
            const core::Machine* m = nullptr;
            if (st) {
                st = impl_.machines.create(caller, std::move(spec), &m);
            }
            if (!st) {
                return answer(*r, st);
            }
            r->returnResults(sdbus::ObjectPath(machine_path(m->spec.name)));
        });
    }
    void DeleteMachine(sdbus::Result<>&& result, std::string name, bool force) override {
        auto owed = impl_.owe(std::move(result));
        impl_.with_caller(
            sender(), [this, name, force, owed](const Status& st, const core::Caller& caller) {
                if (!st) {
                    return impl_.pay(owed, st);
                }
                impl_.machines.remove(caller, name, force,
                                      [weak = impl_.weak_from_this(), owed](const Status& st) {
                                          if (auto self = weak.lock()) {
                                              self->pay(owed, st);
                                          }
                                      });
            });
    }
    void Start(sdbus::Result<>&& r, std::string n) override { act(n, core::Action::start, r); }
    void Stop(sdbus::Result<>&& r, std::string n) override { act(n, core::Action::stop, r); }
    void Kill(sdbus::Result<>&& r, std::string n) override { act(n, core::Action::kill, r); }
    void Restart(sdbus::Result<>&& r, std::string n) override { act(n, core::Action::restart, r); }
    void Pause(sdbus::Result<>&& r, std::string n) override { act(n, core::Action::pause, r); }
    void Resume(sdbus::Result<>&& r, std::string n) override { act(n, core::Action::resume, r); }
    void act(const std::string& name, core::Action a, sdbus::Result<>& r) {
        impl_.act(sender(), name, a, std::move(r));
    }

    Impl& impl_;
};

void Service::Impl::act(const std::string& sender, const std::string& name, core::Action action,
                        sdbus::Result<>&& result) {
    auto owed = owe(std::move(result));
    with_caller(sender, [this, name, action, owed](Status st, const core::Caller& caller) {
        if (!st) {
            return pay(owed, st);
        }
        st = machines.act(caller, name, action, {},
                          [weak = weak_from_this(), owed](const Status& st, const core::Machine*) {
                              if (auto self = weak.lock()) {
                                  self->pay(owed, st);
                              }
                          });
        if (!st) {
            pay(owed, st);
        }
    });
}

void Service::Impl::with_caller(const std::string& sender, CallerDone done) {
    if (auto it = callers.find(sender); it != callers.end()) {
        return done({}, it->second);
    }
    auto& waiting = lookups[sender];
    waiting.push_back(std::move(done));
    if (waiting.size() > 1) {
        return;
    }
    // GetConnectionCredentials asynchronously: the loop never waits for the bus.
    uint64_t gen = conn_gen;
    auto weak = weak_from_this();
    bus_proxy->callMethodAsync("GetConnectionCredentials")
        .onInterface("org.freedesktop.DBus")
        .withArguments(sender)
        .uponReplyInvoke([weak, gen, sender](const sdbus::Error* err,
                                             std::map<std::string, sdbus::Variant> creds) {
            auto self = weak.lock();
            if (!self || gen != self->conn_gen) {
                return;
            }
            Status st;
            core::Caller caller{0, false, true, "dbus"};
            try {
                if (err) {
                    st = {Errc::internal, "cannot identify the caller: " + err->getMessage()};
                } else {
                    caller.uid = creds.at("UnixUserID").get<uint32_t>();
                    caller.admin = caller.uid == 0;
                    if (self->admin_gid && creds.count("UnixGroupIDs")) {
                        for (uint32_t g : creds.at("UnixGroupIDs").get<std::vector<uint32_t>>()) {
                            caller.admin = caller.admin || g == *self->admin_gid;
                        }
                    }
                }
            } catch (const std::exception& e) {
                st = {Errc::internal, std::string("cannot identify the caller: ") + e.what()};
            }
            // The bus policy lets root and the admin group call; hangard holds to the same
            // rule itself (a bus may have no policy), and lets its own user in on its own bus.
            if (st && !caller.admin && caller.uid != geteuid()) {
                st = {Errc::forbidden, "uid " + std::to_string(caller.uid) +
                                           " may not use org.hangar: it is for root and the "
                                           "admin group (use the unix socket)"};
            }
            if (st) {
                self->callers[sender] = caller;
            }
            auto waiting = std::move(self->lookups[sender]);
            self->lookups.erase(sender);
            for (auto& d : waiting) {
                d(st, caller);
            }
            self->kick();
        });
    kick();
}

void Service::Impl::export_machine(const core::Machine& m) {
    objects[m.spec.name] = std::make_unique<MachineObject>(*this, m.spec.name);
}

void Service::Impl::on_event(const core::Event& e) {
    if (!conn || !manager) {
        return;
    }
    try {
        if (e.type == "machine.created") {
            auto it = machines.all().find(e.machine);
            if (it != machines.all().end()) {
                export_machine(*it->second);
                manager->emitMachineNew(e.machine, sdbus::ObjectPath(machine_path(e.machine)));
            }
        } else if (e.type == "machine.deleted") {
            manager->emitMachineRemoved(e.machine, sdbus::ObjectPath(machine_path(e.machine)));
            objects.erase(e.machine);
        } else if (e.type == "machine.state") {
            auto it = objects.find(e.machine);
            if (it != objects.end()) {
                it->second->properties_changed({"State", "StateReason", "Pid"});
            }
            simdjson::dom::element frame;
            std::string_view from, to, reason;
            if (frame_parser.parse(*e.frame).get(frame) == simdjson::SUCCESS) {
                json::try_get(frame["data"]["from"], from);
                json::try_get(frame["data"]["to"], to);
                json::try_get(frame["data"]["reason"], reason);
            }
            manager->emitMachineStateChanged(e.machine, std::string(from), std::string(to),
                                             std::string(reason), e.seq);
        } else if (e.type == "machine.updated") {
            auto it = objects.find(e.machine);
            if (it != objects.end()) {
                it->second->properties_changed({"Cpus", "MemoryMiB"});
            }
        }
    } catch (const sdbus::Error& err) {
        return lost(err.getMessage());
    }
    kick();
}

void Service::Impl::connect() {
    ++conn_gen;
    try {
        if (address == "system") {
            conn = sdbus::createSystemBusConnection();
        } else if (address == "session") {
            conn = sdbus::createSessionBusConnection();
        } else {
            conn = sdbus::createSessionBusConnectionWithAddress(address);
        }
        bus_proxy = sdbus::createProxy(*conn, "org.freedesktop.DBus", "/org/freedesktop/DBus");
        manager = std::make_unique<ManagerObject>(*this);
        for (const auto& [name, m] : machines.all()) {
            export_machine(*m);
        }
        pump->attach(conn->getEventLoopPollData().fd);
    } catch (const std::exception& e) {
        return lost(std::string("cannot connect: ") + e.what());
    }
    // The name, asynchronously. DO_NOT_QUEUE: another owner means a second hangard.
    uint64_t gen = conn_gen;
    auto weak = weak_from_this();
    state = "connected to " + address + ", requesting " + kName;
    bus_proxy->callMethodAsync("RequestName")
        .onInterface("org.freedesktop.DBus")
        .withArguments(std::string(kName), uint32_t{4})
        .uponReplyInvoke([weak, gen](const sdbus::Error* err, uint32_t reply) {
            auto self = weak.lock();
            if (!self || gen != self->conn_gen) {
                return;
            }
            if (err || (reply != 1 && reply != 4)) {
                std::string why = err ? err->getMessage()
                                      : "the name is owned by another process (reply " +
                                            std::to_string(reply) + ")";
                // Not fatal: the REST API goes on; try again later.
                spdlog::warn("dbus: cannot own {} on {}: {}", kName, self->address, why);
                self->state =
                    "connected to " + self->address + " without the name " + kName + ": " + why;
                return self->reconnect_later();
            }
            self->named = true;
            self->backoff.connected();
            self->state = "connected to " + self->address + " as " + kName;
            spdlog::info("dbus: serving {} on {} ({} machines)", kName, self->address,
                         self->objects.size());
        });
    pump->run();
}

void Service::Impl::teardown() {
    ++conn_gen;
    named = false;
    objects.clear();
    manager.reset();
    bus_proxy.reset();
    callers.clear();
    // Results die before their connection: nothing is left to answer to.
    lookups.clear();
    owed.clear();
    pump->detach();
    conn.reset();
}

void Service::Impl::lost(const std::string& why) {
    spdlog::warn("dbus: lost {}: {}; retrying in {} s", address, why, backoff.delay().count());
    state = "not connected to " + address + ": " + why;
    reconnect_later();
}

void Service::Impl::reconnect_later() {
    backoff.after_loss(
        weak_from_this(), [this, gen = conn_gen] { return gen == conn_gen; },
        [this] { teardown(); }, [this] { connect(); });
}

Service::Service(boost::asio::io_context& io, core::Machines& machines, core::EventBus& events,
                 std::string address, std::optional<unsigned> admin_gid)
    : impl_(std::make_shared<Impl>(io, machines, events, std::move(address), admin_gid)) {
    std::weak_ptr<Impl> weak = impl_;
    impl_->pump = std::make_shared<Pump>(
        io, Pump::Hooks{[weak] {
                            auto self = weak.lock();
                            return self && self->conn && self->conn->processPendingRequest();
                        },
                        [weak] {
                            auto pd = weak.lock()->conn->getEventLoopPollData();
                            return Pump::Wants{pd.events, pd.timeout_usec};
                        },
                        [weak](const std::string& why) {
                            if (auto self = weak.lock()) {
                                self->lost(why);
                            }
                        }});
}

Service::~Service() {
    if (impl_->subscription) {
        impl_->events.unsubscribe(impl_->subscription);
    }
    impl_->teardown();
}

void Service::start() {
    impl_->subscription =
        impl_->events.subscribe([weak = std::weak_ptr<Impl>(impl_)](const core::Event& e) {
            if (auto self = weak.lock()) {
                self->on_event(e);
            }
        });
    impl_->connect();
}

bool Service::healthy(std::string& detail) const {
    detail = impl_->state;
    return impl_->named;
}

}  // namespace hangar::dbus
