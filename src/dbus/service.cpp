#include "dbus/service.hpp"

#include "core/admin_group.hpp"
#include "dbus/pump.hpp"
#include "dbus/spec_dict.hpp"

#include <unistd.h>

#include <algorithm>
#include <deque>
#include <map>
#include <set>
#include <unordered_map>

#include <sdbus-c++/sdbus-c++.h>
#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "hangar/names.hpp"
#include "machine1_adaptor.h"
#include "manager1_adaptor.h"
#include "operation1_adaptor.h"

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

namespace {
// `prefix` + `name` escaped like sd_bus_path_encode.
std::string encode_path(std::string out, const std::string& name) {
    static constexpr char kHex[] = "0123456789abcdef";
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
}  // namespace

std::string machine_path(const std::string& name) {
    return encode_path("/org/hangar/machine/", name);
}

std::string operation_path(const std::string& id) {
    return encode_path("/org/hangar/operation/", id);
}

using CallerDone = std::function<void(const Status&, const core::Caller&)>;

struct Service::Impl : std::enable_shared_from_this<Service::Impl> {
    boost::asio::io_context& io;
    core::Machines& machines;
    core::EventBus& events;
    core::Operations& operations;
    std::string address;
    const core::AdminGroup* admins;  // none: root only

    std::unique_ptr<sdbus::IConnection> conn;
    std::unique_ptr<sdbus::IProxy> bus_proxy;  // org.freedesktop.DBus
    std::shared_ptr<Pump> pump;
    Backoff backoff{io};
    uint64_t conn_gen = 0;  // identifies the current connection; stale callbacks compare it
    bool named = false;
    std::string state = "not connected yet";
    uint64_t subscription = 0;

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

    Impl(boost::asio::io_context& i, core::Machines& m, core::EventBus& e, core::Operations& o,
         std::string a, const core::AdminGroup* g)
        : io(i), machines(m), events(e), operations(o), address(std::move(a)), admins(g) {}

    void connect();
    void lost(const std::string& why);
    void reconnect_later();
    void teardown();
    void kick() { pump->kick(); }
    void export_machine(const core::Machine& m);
    void on_event(const core::Event& e);
    void on_machine_updated(const std::string& name, const core::MachineUpdated& u);
    void with_caller(const std::string& sender, CallerDone done);
    void act(const std::string& sender, const std::string& name, core::Action action,
             sdbus::Result<>&& result);

    // Operations (async actions): one object per running operation and per finished one of
    // the newest kOperationObjects; OperationDone when one ends.
    class OperationObject;
    static constexpr size_t kOperationObjects = 100;
    std::map<std::string, std::unique_ptr<OperationObject>> operation_objects;
    std::deque<std::string> finished_objects;  // ids, in the order they ended
    uint64_t operation_watch = 0;
    void act_async(const std::string& sender, const std::string& name, core::Action action,
                   sdbus::Result<sdbus::ObjectPath>&& result);
    void export_operations();
    void on_operation(const core::Operation& op, core::Operations::Change change);
    void retire_operations();
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
    using Async = sdbus::Result<sdbus::ObjectPath>;
    const core::Machine& m() const { return *impl_.machines.all().at(name_); }
    std::string sender() { return getObject().getCurrentlyProcessedMessage()->getSender(); }
    void Start(sdbus::Result<>&& r) override { act(core::Action::start, std::move(r)); }
    void Stop(sdbus::Result<>&& r) override { act(core::Action::stop, std::move(r)); }
    void Kill(sdbus::Result<>&& r) override { act(core::Action::kill, std::move(r)); }
    void Restart(sdbus::Result<>&& r) override { act(core::Action::restart, std::move(r)); }
    void Pause(sdbus::Result<>&& r) override { act(core::Action::pause, std::move(r)); }
    void Resume(sdbus::Result<>&& r) override { act(core::Action::resume, std::move(r)); }
    void act(core::Action a, sdbus::Result<>&& r) { impl_.act(sender(), name_, a, std::move(r)); }
    void StartAsync(Async&& r) override { act_async(core::Action::start, std::move(r)); }
    void StopAsync(Async&& r) override { act_async(core::Action::stop, std::move(r)); }
    void RestartAsync(Async&& r) override { act_async(core::Action::restart, std::move(r)); }
    void act_async(core::Action a, Async&& r) { impl_.act_async(sender(), name_, a, std::move(r)); }
    std::string Name() override { return name_; }
    std::string UUID() override { return m().spec.uuid; }
    std::string Type() override { return m().spec.type; }
    std::string State() override { return std::string(to_string(m().state)); }
    std::string StateReason() override { return m().state_reason; }
    uint32_t Cpus() override { return m().spec.cpus; }
    uint32_t MemoryMiB() override { return m().spec.memory_mib; }
    uint32_t Owner() override { return m().spec.owner; }
    uint32_t Pid() override { return static_cast<uint32_t>(m().pid); }
    std::vector<std::string> Disks() override { return impl_.machines.disk_names(name_); }

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
        impl_.with_caller(sender(),
                          [this, name, spec_in, r](Status st, const core::Caller& caller) {
                              MachineSpec spec;
                              spec.name = name;
                              if (st) {
                                  st = check_name("machine", name);
                              }
                              if (st) {
                                  st = spec_from_dict(spec_in, spec);
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
    using Async = sdbus::Result<sdbus::ObjectPath>;
    void StartAsync(Async&& r, std::string n) override { act_async(n, core::Action::start, r); }
    void StopAsync(Async&& r, std::string n) override { act_async(n, core::Action::stop, r); }
    void RestartAsync(Async&& r, std::string n) override { act_async(n, core::Action::restart, r); }
    void act_async(const std::string& name, core::Action a, Async& r) {
        impl_.act_async(sender(), name, a, std::move(r));
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

// ---- operations (async actions) ---------------------------------------------------------

class Service::Impl::OperationObject final
    : public sdbus::AdaptorInterfaces<org::hangar::Operation1_adaptor> {
  public:
    OperationObject(Impl& impl, const std::string& id)
        : AdaptorInterfaces(*impl.conn, operation_path(id)), impl_(impl), id_(id) {
        registerAdaptor();
    }
    ~OperationObject() { unregisterAdaptor(); }
    void properties_changed(const std::vector<std::string>& names) {
        getObject().emitPropertiesChangedSignal(org::hangar::Operation1_adaptor::INTERFACE_NAME,
                                                names);
    }

  private:
    // The core keeps more operations than D-Bus shows: an exported one is found.
    const core::Operation& op() const {
        static const core::Operation gone;
        const core::Operation* op = impl_.operations.find(id_);
        return op ? *op : gone;
    }
    std::string Id() override { return id_; }
    std::string Machine() override { return op().machine; }
    std::string Image() override { return op().image; }
    std::string Action() override { return op().action; }
    std::string Status() override { return op().status; }
    std::string State() override { return op().state; }
    std::string ErrorCode() override {
        return op().error.ok() ? "" : std::string(errc_name(op().error.code()));
    }
    std::string ErrorMessage() override { return op().error.message(); }
    std::string Detail() override { return op().detail; }
    std::string CreatedAt() override { return op().created_at; }
    std::string DoneAt() override { return op().done_at; }

    Impl& impl_;
    std::string id_;
};

void Service::Impl::act_async(const std::string& sender, const std::string& name,
                              core::Action action, sdbus::Result<sdbus::ObjectPath>&& result) {
    auto r = std::make_shared<sdbus::Result<sdbus::ObjectPath>>(std::move(result));
    with_caller(sender, [this, name, action, r](Status st, const core::Caller& caller) {
        std::string id;
        if (st) {
            st = operations.run_action(caller, name, action, {}, id);
        }
        if (!st) {
            return answer(*r, st);
        }
        // The object was exported when the operation was created (on_operation).
        r->returnResults(sdbus::ObjectPath(operation_path(id)));
    });
}

void Service::Impl::export_operations() {
    auto all = operations.list();
    size_t finished = 0;
    for (const auto* op : all) {
        finished += op->status != "running";
    }
    size_t skip = finished > kOperationObjects ? finished - kOperationObjects : 0;
    for (const auto* op : all) {
        if (op->status != "running") {
            if (skip > 0) {
                --skip;
                continue;
            }
            finished_objects.push_back(op->id);
        }
        operation_objects[op->id] = std::make_unique<OperationObject>(*this, op->id);
    }
}

void Service::Impl::on_operation(const core::Operation& op, core::Operations::Change change) {
    if (!conn || !manager) {
        return;
    }
    try {
        if (change == core::Operations::Change::created) {
            operation_objects[op.id] = std::make_unique<OperationObject>(*this, op.id);
        } else if (change == core::Operations::Change::done) {
            auto it = operation_objects.find(op.id);
            if (it != operation_objects.end()) {
                it->second->properties_changed(
                    {"Status", "State", "ErrorCode", "ErrorMessage", "Detail", "DoneAt"});
                finished_objects.push_back(op.id);
            }
            manager->emitOperationDone(op.id, sdbus::ObjectPath(operation_path(op.id)), op.status,
                                       op.error.ok() ? "" : std::string(errc_name(op.error.code())),
                                       op.error.message());
            retire_operations();
        } else {
            return;
        }
    } catch (const sdbus::Error& err) {
        return lost(err.getMessage());
    }
    kick();
}

void Service::Impl::retire_operations() {
    while (finished_objects.size() > kOperationObjects) {
        operation_objects.erase(finished_objects.front());
        finished_objects.pop_front();
    }
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
                    std::vector<unsigned> groups;
                    if (creds.count("UnixGroupIDs")) {
                        for (uint32_t g : creds.at("UnixGroupIDs").get<std::vector<uint32_t>>()) {
                            groups.push_back(g);
                        }
                    }
                    caller.admin = caller.uid == 0 || (self->admins && self->admins->peer_is_admin(
                                                                           caller.uid, groups));
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

// Reads the typed payload; a frame is never parsed back.
void Service::Impl::on_event(const core::Event& e) {
    if (!conn || !manager) {
        return;
    }
    try {
        if (e.data<core::MachineCreated>()) {
            auto it = machines.all().find(e.machine);
            if (it != machines.all().end()) {
                export_machine(*it->second);
                manager->emitMachineNew(e.machine, sdbus::ObjectPath(machine_path(e.machine)));
            }
        } else if (e.data<core::MachineDeleted>()) {
            manager->emitMachineRemoved(e.machine, sdbus::ObjectPath(machine_path(e.machine)));
            objects.erase(e.machine);
        } else if (const auto* p = e.data<core::MachineStateChanged>()) {
            auto it = objects.find(e.machine);
            if (it != objects.end()) {
                it->second->properties_changed({"State", "StateReason", "Pid"});
            }
            manager->emitMachineStateChanged(e.machine, std::string(to_string(p->from)),
                                             std::string(to_string(p->to)), p->reason, e.seq);
        } else if (const auto* p = e.data<core::MachineUpdated>()) {
            on_machine_updated(e.machine, *p);
        }
    } catch (const sdbus::Error& err) {
        return lost(err.getMessage());
    }
    kick();
}

// PropertiesChanged for the properties the change touched (a spec field's, never
// unresponsive: Machine1 has no such property).
void Service::Impl::on_machine_updated(const std::string& name, const core::MachineUpdated& u) {
    auto it = objects.find(name);
    if (it == objects.end()) {
        return;
    }
    std::vector<std::string> props;
    for (const auto& [field, prop] :
         {std::pair{"cpus", "Cpus"}, {"memory_mib", "MemoryMiB"}, {"disks", "Disks"}}) {
        if (std::find(u.changed.begin(), u.changed.end(), field) != u.changed.end()) {
            props.emplace_back(prop);
        }
    }
    if (!props.empty()) {
        it->second->properties_changed(props);
    }
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
        export_operations();
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
    operation_objects.clear();
    finished_objects.clear();
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
                 core::Operations& operations, std::string address, const core::AdminGroup* admins)
    : impl_(std::make_shared<Impl>(io, machines, events, operations, std::move(address), admins)) {
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
    if (impl_->operation_watch) {
        impl_->operations.unwatch(impl_->operation_watch);
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
    impl_->operation_watch =
        impl_->operations.watch([weak = std::weak_ptr<Impl>(impl_)](
                                    const core::Operation& op, core::Operations::Change change) {
            if (auto self = weak.lock()) {
                self->on_operation(op, change);
            }
        });
    impl_->connect();
}

bool Service::healthy(std::string& detail) const {
    detail = impl_->state;
    return impl_->named;
}

}  // namespace hangar::dbus
