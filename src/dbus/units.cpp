#include "dbus/units.hpp"

#include <cstring>
#include <map>

#include <spdlog/spdlog.h>
#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>

#include "dbus/raw_client.hpp"
#include "drivers/nspawn/nspawn.hpp"
#include "util/process.hpp"
#include "util/reactor.hpp"

namespace hangar::dbus {

namespace {
constexpr const char* kSystemd = "org.freedesktop.systemd1";
constexpr const char* kSystemdPath = "/org/freedesktop/systemd1";
constexpr const char* kSystemdManager = "org.freedesktop.systemd1.Manager";
constexpr const char* kUnitIface = "org.freedesktop.systemd1.Unit";
constexpr const char* kServiceIface = "org.freedesktop.systemd1.Service";
constexpr const char* kUnitPrefix = "/org/freedesktop/systemd1/unit";
constexpr const char* kMachined = "org.freedesktop.machine1";
constexpr const char* kMachinedPath = "/org/freedesktop/machine1";
constexpr const char* kMachinedManager = "org.freedesktop.machine1.Manager";
constexpr uint64_t kMachinedQueryUsec = 2'000'000;
constexpr int kStartRetries = 30;  // a unit of the same name still being collected
constexpr auto kStartRetryDelay = std::chrono::milliseconds(100);

// The machine of unit hangar-NAME.service, or "".
std::string machine_of(const std::string& unit) {
    static const std::string prefix = "hangar-", suffix = ".service";
    if (unit.size() <= prefix.size() + suffix.size() || unit.compare(0, prefix.size(), prefix) ||
        unit.compare(unit.size() - suffix.size(), suffix.size(), suffix)) {
        return {};
    }
    return unit.substr(prefix.size(), unit.size() - prefix.size() - suffix.size());
}

// Reads the properties a container's report needs from an a{sv}; skips the rest.
int read_properties(sd_bus_message* m, nspawn::UnitStatus& st, bool& saw_active_state) {
    int r = sd_bus_message_enter_container(m, 'a', "{sv}");
    if (r < 0) {
        return r;
    }
    while ((r = sd_bus_message_enter_container(m, 'e', "sv")) > 0) {
        const char* key = nullptr;
        if ((r = sd_bus_message_read(m, "s", &key)) < 0) {
            return r;
        }
        const char* s = nullptr;
        if (strcmp(key, "ActiveState") == 0) {
            r = sd_bus_message_read(m, "v", "s", &s);
            if (r >= 0) {
                st.active_state = s;
                saw_active_state = true;
            }
        } else if (strcmp(key, "Result") == 0) {
            r = sd_bus_message_read(m, "v", "s", &s);
            if (r >= 0) {
                st.result = s;
            }
        } else if (strcmp(key, "ExecMainCode") == 0) {
            r = sd_bus_message_read(m, "v", "i", &st.exec_code);
        } else if (strcmp(key, "ExecMainStatus") == 0) {
            r = sd_bus_message_read(m, "v", "i", &st.exec_status);
        } else if (strcmp(key, "MainPID") == 0) {
            r = sd_bus_message_read(m, "v", "u", &st.main_pid);
        } else {
            r = sd_bus_message_skip(m, "v");
        }
        if (r < 0 || (r = sd_bus_message_exit_container(m)) < 0) {
            return r;
        }
    }
    return r < 0 ? r : sd_bus_message_exit_container(m);
}

int append_exec_start(sd_bus_message* m, const std::vector<std::string>& argv) {
    std::vector<char*> args;
    for (const auto& a : argv) {
        args.push_back(const_cast<char*>(a.c_str()));
    }
    args.push_back(nullptr);
    std::string path = find_program(argv.at(0));
    if (path.empty()) {
        path = argv.at(0);  // systemd refuses it, and says so
    }
    int r = 0;
    (void)((r = sd_bus_message_open_container(m, 'r', "sv")) >= 0 &&
           (r = sd_bus_message_append(m, "s", "ExecStart")) >= 0 &&
           (r = sd_bus_message_open_container(m, 'v', "a(sasb)")) >= 0 &&
           (r = sd_bus_message_open_container(m, 'a', "(sasb)")) >= 0 &&
           (r = sd_bus_message_open_container(m, 'r', "sasb")) >= 0 &&
           (r = sd_bus_message_append(m, "s", path.c_str())) >= 0 &&
           (r = sd_bus_message_append_strv(m, args.data())) >= 0 &&
           (r = sd_bus_message_append(m, "b", 0)) >= 0 &&
           (r = sd_bus_message_close_container(m)) >= 0 &&
           (r = sd_bus_message_close_container(m)) >= 0 &&
           (r = sd_bus_message_close_container(m)) >= 0 &&
           (r = sd_bus_message_close_container(m)) >= 0);
    return r;
}
}  // namespace

struct Units::Impl : RawClient, nspawn::ContainerHost {
    nspawn::NspawnRuntime& runtime;
    bool present = false;       // subscribed to systemd and listed
    bool subscribing = false;   // connected, Subscribe in flight: calls wait for its answer
    bool closing_down = false;  // hangard is exiting: containers are not marked unresponsive
    uint64_t epoch = 0;         // one subscription; replies to an older one are dropped
    // What systemd said last of each container's unit, by machine name.
    std::map<std::string, nspawn::UnitStatus> units;
    // Bumped by every change signal of a machine's unit: a lookup older than it is stale.
    std::map<std::string, uint64_t> changes;
    // Start jobs in flight, by job object path.
    std::map<std::string, Done> jobs;
    // Calls made while subscribing, made again once it has an answer (either way).
    std::vector<std::function<void()>> waiting;
    // Runs once: the first subscription's lookups have all answered, or it failed.
    std::function<void()> on_settled;

    Impl(boost::asio::io_context& io, nspawn::NspawnRuntime& rt, std::string address)
        : RawClient(io, std::move(address), "systemd"), runtime(rt) {}

    void connected() override;
    void closing() override;
    void subscribe();
    void subscribed();
    void lookup(const std::string& name, std::shared_ptr<void> settle_token);
    void settle();
    void report(const std::string& name);
    void on_properties(sd_bus_message* m);
    void on_job_removed(sd_bus_message* m);
    void start_unit(const nspawn::ContainerLaunch& l, Done done, int attempt);

    const std::string& state() const { return state_; }
    sd_bus_message* manager(const char* member) {
        return method(kSystemd, kSystemdPath, kSystemdManager, member);
    }
    // While subscribing, `again` runs once the subscription has an answer: a call made just
    // after hangard started (an API request, autostart) waits for systemd instead of failing.
    bool defer(std::function<void()> again) {
        if (present || !subscribing) {
            return false;
        }
        waiting.push_back(std::move(again));
        return true;
    }
    // Sends `m`; `done` gets ok, or the D-Bus error as `unavailable`.
    void call(sd_bus_message* m, Done done) {
        if (!present) {
            sd_bus_message_unref(m);
            return boost::asio::post(io_, [done = std::move(done), why = state_] {
                done({Errc::unavailable, "systemd is not reachable: " + why});
            });
        }
        send(m, [done](sd_bus_message*, const sd_bus_error* err) {
            done(err ? Status{Errc::unavailable, error_text(err)} : Status{});
        });
    }

    // nspawn::ContainerHost
    void start(const nspawn::ContainerLaunch& l, Done done) override {
        if (!defer([this, l, done] { start(l, done); })) {
            start_unit(l, std::move(done), 0);
        }
    }
    void stop(const std::string& unit, Done done) override {
        if (defer([this, unit, done] { stop(unit, done); })) {
            return;
        }
        sd_bus_message* m = manager("StopUnit");
        if (m && sd_bus_message_append(m, "ss", unit.c_str(), "replace") < 0) {
            m = sd_bus_message_unref(m);
        }
        call(m, std::move(done));
    }
    void kill(const std::string& unit, int signal, Done done) override {
        if (defer([this, unit, signal, done] { kill(unit, signal, done); })) {
            return;
        }
        sd_bus_message* m = manager("KillUnit");
        if (m && sd_bus_message_append(m, "ssi", unit.c_str(), "all", signal) < 0) {
            m = sd_bus_message_unref(m);
        }
        call(m, std::move(done));
    }
    void signal_leader(const std::string& machine, int signal, Done done) override {
        if (defer([this, machine, signal, done] { signal_leader(machine, signal, done); })) {
            return;
        }
        sd_bus_message* m = method(kMachined, kMachinedPath, kMachinedManager, "KillMachine");
        if (m && sd_bus_message_append(m, "ssi", machine.c_str(), "leader", signal) < 0) {
            m = sd_bus_message_unref(m);
        }
        call(m, std::move(done));
    }
    void machined_closing(const std::string& machine, std::function<void(bool)> done) override {
        if (defer([this, machine, done] { machined_closing(machine, done); })) {
            return;
        }
        if (!present) {
            return boost::asio::post(io_, [done = std::move(done)] { done(false); });
        }
        get_property(
            kMachined, object_path("/org/freedesktop/machine1/machine", machine),
            "org.freedesktop.machine1.Machine", "State",
            [done](sd_bus_message* reply, const sd_bus_error* err) {
                const char* state = nullptr;
                done(!err && sd_bus_message_read(reply, "v", "s", &state) >= 0 && state &&
                     strcmp(state, "closing") == 0);
            },
            kMachinedQueryUsec);
    }
    void leader(const std::string& machine,
                std::function<void(const Status&, pid_t)> done) override {
        if (defer([this, machine, done] { leader(machine, done); })) {
            return;
        }
        if (!present) {
            return boost::asio::post(io_, [done = std::move(done), why = state_] {
                done({Errc::unavailable, "systemd is not reachable: " + why}, 0);
            });
        }
        get_property(
            kMachined, object_path("/org/freedesktop/machine1/machine", machine),
            "org.freedesktop.machine1.Machine", "Leader",
            [done, machine](sd_bus_message* reply, const sd_bus_error* err) {
                uint32_t pid = 0;
                if (err || sd_bus_message_read(reply, "v", "u", &pid) < 0 || pid == 0) {
                    return done(
                        {Errc::unavailable, "machined does not know container " + machine +
                                                (err ? ": " + error_text(err) : std::string())},
                        0);
                }
                done({}, static_cast<pid_t>(pid));
            },
            5'000'000);
    }
};

namespace {
int on_signal(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* impl = static_cast<Units::Impl*>(static_cast<RawClient*>(userdata));
    try {
        if (sd_bus_message_is_signal(m, "org.freedesktop.DBus.Properties", "PropertiesChanged")) {
            impl->on_properties(m);
        } else if (sd_bus_message_is_signal(m, kSystemdManager, "JobRemoved")) {
            impl->on_job_removed(m);
        } else if (sd_bus_message_is_signal(m, "org.freedesktop.DBus", "NameOwnerChanged")) {
            const char *name = nullptr, *from = nullptr, *to = nullptr;
            if (sd_bus_message_read(m, "sss", &name, &from, &to) >= 0) {
                impl->present = false;
                ++impl->epoch;
                if (to && *to) {
                    spdlog::info("systemd: {} is on the bus (again)", kSystemd);
                    impl->subscribe();
                } else {
                    impl->runtime.on_host_lost(std::string(kSystemd) + " left the bus");
                }
            }
        }
    } catch (...) {
        // A C callback: nothing may unwind through sd-bus. A bug ends the daemon.
        reactor::die_in("systemd signal handler");
    }
    return 0;
}
}  // namespace

void Units::Impl::connected() {
    std::string from = std::string("type='signal',sender='") + kSystemd + "',";
    for (const std::string& rule :
         {from +
              "interface='org.freedesktop.DBus.Properties',member='PropertiesChanged',"
              "path_namespace='" +
              kUnitPrefix + "'",
          from + "path='" + kSystemdPath + "',interface='" + kSystemdManager +
              "',member='JobRemoved'",
          std::string("type='signal',sender='org.freedesktop.DBus',interface='org.freedesktop."
                      "DBus',member='NameOwnerChanged',arg0='") +
              kSystemd + "'"}) {
        if (!add_match(rule, on_signal)) {
            return;
        }
    }
    subscribe();
}

// Subscribe (systemd sends unit signals only to subscribers), then look every container up.
void Units::Impl::subscribe() {
    uint64_t ep = ++epoch;
    subscribing = true;
    send(manager("Subscribe"), [this, ep](sd_bus_message*, const sd_bus_error* err) {
        if (ep != epoch) {
            return;
        }
        backoff_.connected();
        if (err) {
            state_ = std::string(kSystemd) + " is not reachable on " + address_ + " (" +
                     error_text(err) + ")";
            spdlog::warn("systemd: {}; containers cannot run until it is", state_);
            runtime.on_host_lost(state_);
            subscribed();
            return;
        }
        present = true;
        state_ = "subscribed to " + std::string(kSystemd);
        // The first subscription is settled when every lookup's last callback is gone.
        std::shared_ptr<void> token;
        if (on_settled) {
            token = std::shared_ptr<void>(nullptr, [weak = weak_from_this()](void*) {
                if (auto self = weak.lock()) {
                    static_cast<Impl*>(self.get())->settle();
                }
            });
        }
        size_t n = 0;
        for (const auto& name : runtime.machines()) {
            lookup(name, token);
            ++n;
        }
        spdlog::info("systemd: subscribed; looking up {} containers' units", n);
        subscribed();
    });
}

// The subscription has its answer: what waited for it is made again, now sent or refused.
void Units::Impl::subscribed() {
    subscribing = false;
    for (auto& again : std::exchange(waiting, {})) {
        again();
    }
    if (!present) {
        settle();
    }
}

void Units::Impl::settle() {
    if (auto done = std::exchange(on_settled, nullptr)) {
        boost::asio::post(io_, std::move(done));
    }
}

// GetUnit, then the Service and Unit properties: reported unless a signal came meanwhile.
void Units::Impl::lookup(const std::string& name, std::shared_ptr<void> settle_token) {
    sd_bus_message* m = manager("GetUnit");
    std::string unit = nspawn::unit_name(name);
    if (m && sd_bus_message_append(m, "s", unit.c_str()) < 0) {
        m = sd_bus_message_unref(m);
    }
    uint64_t ep = epoch, seen = changes[name];
    auto current = [this, ep, seen, name] { return ep == epoch && changes[name] == seen; };
    send(m, [this, name, current, settle_token](sd_bus_message* reply, const sd_bus_error* err) {
        if (!current()) {
            return;
        }
        const char* path = nullptr;
        if (err || sd_bus_message_read(reply, "o", &path) < 0) {
            if (err && !error_is(err, "org.freedesktop.systemd1.NoSuchUnit")) {
                spdlog::warn("systemd: GetUnit {}: {}", name, error_text(err));
            }
            units[name] = nspawn::UnitStatus{};  // not loaded: gone
            return report(name);
        }
        auto st = std::make_shared<nspawn::UnitStatus>();
        st->exists = true;
        std::string p = path;
        auto get_all = [this, p](const char* iface, Reply fn) {
            sd_bus_message* g = method(kSystemd, p, "org.freedesktop.DBus.Properties", "GetAll");
            if (g && sd_bus_message_append(g, "s", iface) < 0) {
                g = sd_bus_message_unref(g);
            }
            send(g, std::move(fn));
        };
        get_all(kServiceIface, [this, name, current, st, get_all, settle_token](
                                   sd_bus_message* reply, const sd_bus_error* err) {
            bool ignored = false;
            if (!current() || err || read_properties(reply, *st, ignored) < 0) {
                return;  // gone meanwhile: its signals say so
            }
            get_all(kUnitIface, [this, name, current, st, settle_token](sd_bus_message* reply,
                                                                        const sd_bus_error* err) {
                bool saw = false;
                if (!current() || err || read_properties(reply, *st, saw) < 0 || !saw) {
                    return;
                }
                units[name] = *st;
                report(name);
            });
        });
    });
}

void Units::Impl::report(const std::string& name) {
    nspawn::UnitStatus st = units[name];
    if (!st.up()) {
        units.erase(name);  // the next run starts afresh
    }
    runtime.on_unit(name, st);
}

void Units::Impl::on_properties(sd_bus_message* m) {
    char* decoded = nullptr;
    if (sd_bus_path_decode(sd_bus_message_get_path(m), kUnitPrefix, &decoded) <= 0) {
        return;
    }
    std::string name = machine_of(decoded);
    free(decoded);
    const char* iface = nullptr;
    if (name.empty() || sd_bus_message_read(m, "s", &iface) < 0) {
        return;
    }
    bool unit = strcmp(iface, kUnitIface) == 0;
    if (!unit && strcmp(iface, kServiceIface) != 0) {
        return;
    }
    nspawn::UnitStatus& st = units[name];
    st.exists = true;
    bool saw = false;
    if (read_properties(m, st, saw) < 0) {
        spdlog::warn("systemd: unreadable PropertiesChanged of {}", nspawn::unit_name(name));
        return;
    }
    ++changes[name];
    if (unit && saw) {
        report(name);
    }
}

void Units::Impl::on_job_removed(sd_bus_message* m) {
    uint32_t id = 0;
    const char *job = nullptr, *unit = nullptr, *result = nullptr;
    if (sd_bus_message_read(m, "uoss", &id, &job, &unit, &result) < 0) {
        return;
    }
    auto node = jobs.extract(job);
    if (node.empty()) {
        return;
    }
    if (strcmp(result, "done") == 0) {
        node.mapped()({});
    } else {
        node.mapped()({Errc::unavailable, std::string("systemd's start job for ") + unit +
                                              " ended with \"" + result + "\""});
    }
}

void Units::Impl::start_unit(const nspawn::ContainerLaunch& l, Done done, int attempt) {
    if (!present) {
        return call(nullptr, std::move(done));  // answers "not reachable"
    }
    sd_bus_message* m = manager("StartTransientUnit");
    int r = m ? 0 : -ENOMEM;
    auto usec = [](auto d) {
        return static_cast<uint64_t>(
            std::chrono::duration_cast<std::chrono::microseconds>(d).count());
    };
    if (r >= 0) {
        (void)((r = sd_bus_message_append(m, "ss", l.unit.c_str(), "fail")) >= 0 &&
               (r = sd_bus_message_open_container(m, 'a', "(sv)")) >= 0 &&
               (r = sd_bus_message_append(
                    m, "(sv)(sv)(sv)(sv)(sv)(sv)(sv)(sv)(sv)(sv)", "Description", "s",
                    l.description.c_str(), "Type", "s", "notify", "Delegate", "b", 1, "KillMode",
                    "s", "mixed", "CollectMode", "s", "inactive-or-failed", "SuccessExitStatus",
                    "(aiai)", 1, 133, 0, "TimeoutStopUSec", "t", usec(l.stop_timeout),
                    "CPUQuotaPerSecUSec", "t", uint64_t(l.cpus) * 1000000, "MemoryMax", "t",
                    uint64_t(l.memory_mib) << 20, "StandardOutputFileToAppend", "s",
                    l.log_path.c_str())) >= 0 &&
               (r = sd_bus_message_append(m, "(sv)", "StandardErrorFileToAppend", "s",
                                          l.log_path.c_str())) >= 0);
    }
    // systemd-nspawn registers with machined on the bus hangard uses.
    if (r >= 0 && address_ != "system" && address_ != "session") {
        std::string env = "DBUS_SYSTEM_BUS_ADDRESS=" + address_;
        r = sd_bus_message_append(m, "(sv)", "Environment", "as", 1, env.c_str());
    }
    if (r >= 0 && (r = append_exec_start(m, l.argv)) >= 0 &&
        (r = sd_bus_message_close_container(m)) >= 0) {
        r = sd_bus_message_append(m, "a(sa(sv))", 0);
    }
    if (r < 0) {
        sd_bus_message_unref(m);
        return boost::asio::post(io_, [done = std::move(done), r] {
            done({Errc::internal, std::string("StartTransientUnit: ") + strerror(-r)});
        });
    }
    units.erase(l.machine);
    send(m, [this, l, done, attempt](sd_bus_message* reply, const sd_bus_error* err) mutable {
        const char* job = nullptr;
        if (error_is(err, "org.freedesktop.systemd1.UnitExists") && attempt < kStartRetries) {
            // The unit's previous run is still being collected.
            auto timer = std::make_shared<boost::asio::steady_timer>(io_, kStartRetryDelay);
            timer->async_wait([weak = weak_from_this(), timer, l, done = std::move(done),
                               attempt](boost::system::error_code ec) mutable {
                if (auto self = weak.lock(); self && !ec) {
                    static_cast<Impl*>(self.get())->start_unit(l, std::move(done), attempt + 1);
                }
            });
            return;
        }
        if (err || sd_bus_message_read(reply, "o", &job) < 0) {
            return done({Errc::unavailable, "StartTransientUnit " + l.unit + ": " +
                                                (err ? error_text(err) : "unreadable reply")});
        }
        jobs[job] = std::move(done);
    });
}

void Units::Impl::closing() {
    present = false;
    ++epoch;
    subscribed();  // what waited is refused now
    for (auto& [job, done] : std::exchange(jobs, {})) {
        done({Errc::unavailable, "the connection to systemd was lost"});
    }
    if (!closing_down) {
        runtime.on_host_lost("systemd connection lost: " + state_);
    }
}

Units::Units(boost::asio::io_context& io, nspawn::NspawnRuntime& runtime, std::string address)
    : impl_(std::make_shared<Impl>(io, runtime, std::move(address))) {}

Units::~Units() {
    impl_->closing_down = true;
    impl_->runtime.set_host(nullptr);
    impl_->teardown();
}

void Units::start(std::function<void()> settled) {
    impl_->on_settled = std::move(settled);
    impl_->connect();
}

nspawn::ContainerHost* Units::host() {
    return impl_.get();
}

bool Units::healthy(std::string& detail) const {
    detail = impl_->state();
    return impl_->present;
}

}  // namespace hangar::dbus
