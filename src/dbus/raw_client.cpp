#include "dbus/raw_client.hpp"

#include <cstring>

#include <spdlog/spdlog.h>

#include "util/reactor.hpp"

namespace hangar::dbus {

namespace {
int on_reply(sd_bus_message* m, void* userdata, sd_bus_error*) {
    const sd_bus_error* err = sd_bus_message_get_error(m);
    try {
        (*static_cast<Reply*>(userdata))(m, err && sd_bus_error_is_set(err) ? err : nullptr);
    } catch (...) {
        // Not through sd-bus's C frames: a reply handler's exception is a bug, and ends the
        // daemon here (util/reactor.hpp).
        reactor::die_in("a D-Bus reply handler");
    }
    return 0;
}

void destroy_reply(void* userdata) {
    delete static_cast<Reply*>(userdata);
}

int on_match_installed(sd_bus_message* m, void* userdata, sd_bus_error*) {
    auto* self = static_cast<RawClient*>(userdata);
    const sd_bus_error* err = sd_bus_message_get_error(m);
    if (err && sd_bus_error_is_set(err)) {
        self->lost("cannot subscribe: " + error_text(err));
    }
    return 0;
}
}  // namespace

std::string error_text(const sd_bus_error* err) {
    return std::string(err->name ? err->name : "error") + ": " +
           (err->message ? err->message : "no message");
}

bool error_is(const sd_bus_error* err, const char* name) {
    return err && err->name && strcmp(err->name, name) == 0;
}

std::string object_path(const char* prefix, const std::string& name) {
    char* path = nullptr;
    if (sd_bus_path_encode(prefix, name.c_str(), &path) < 0) {
        return {};
    }
    std::string out(path);
    free(path);
    return out;
}

RawClient::RawClient(boost::asio::io_context& io, std::string address, std::string what)
    : io_(io), address_(std::move(address)), what_(std::move(what)), backoff_(io) {}

RawClient::~RawClient() {
    if (bus_) {
        bus_ = sd_bus_flush_close_unref(bus_);
    }
}

void RawClient::connect() {
    if (!pump_) {
        std::weak_ptr<RawClient> weak = weak_from_this();
        pump_ = std::make_shared<Pump>(
            io_, Pump::Hooks{[weak] {
                                 auto self = weak.lock();
                                 if (!self || !self->bus_) {
                                     return false;
                                 }
                                 int r = sd_bus_process(self->bus_, nullptr);
                                 if (r < 0) {
                                     throw Pump::Lost(strerror(-r));
                                 }
                                 return r > 0;
                             },
                             [weak] {
                                 auto self = weak.lock();
                                 int ev = sd_bus_get_events(self->bus_);
                                 if (ev < 0) {
                                     throw Pump::Lost(strerror(-ev));
                                 }
                                 uint64_t t = UINT64_MAX;
                                 sd_bus_get_timeout(self->bus_, &t);
                                 return Pump::Wants{static_cast<short>(ev), t};
                             },
                             [weak](const std::string& why) {
                                 if (auto self = weak.lock()) {
                                     self->lost(why);
                                 }
                             }});
    }
    ++conn_gen_;
    int r = 0;
    if (address_ == "system") {
        r = sd_bus_open_system(&bus_);
    } else if (address_ == "session") {
        r = sd_bus_open_user(&bus_);
    } else if ((r = sd_bus_new(&bus_)) >= 0) {
        if ((r = sd_bus_set_address(bus_, address_.c_str())) >= 0 &&
            (r = sd_bus_set_bus_client(bus_, 1)) >= 0) {
            r = sd_bus_start(bus_);
        }
    }
    if (r >= 0) {
        sd_bus_set_description(bus_, ("hangar-" + what_).c_str());
        r = sd_bus_get_fd(bus_);
    }
    if (r < 0) {
        return lost(std::string("cannot connect: ") + strerror(-r));
    }
    pump_->attach(r);
    state_ = "connected to " + address_ + ", subscribing";
    connected();
}

void RawClient::teardown() {
    ++conn_gen_;
    if (pump_) {
        pump_->detach();
    }
    if (bus_) {
        bus_ = sd_bus_flush_close_unref(bus_);
    }
    closing();
}

void RawClient::lost(const std::string& why) {
    spdlog::warn("{}: lost {}: {}; retrying in {} s", what_, address_, why,
                 backoff_.delay().count());
    state_ = "not connected to " + address_ + ": " + why;
    backoff_.after_loss(
        weak_from_this(), [this, gen = conn_gen_] { return gen == conn_gen_; },
        [this] { teardown(); }, [this] { connect(); });
}

sd_bus_message* RawClient::method(const char* dest, const std::string& path, const char* iface,
                                  const char* member) {
    sd_bus_message* m = nullptr;
    if (!bus_ || path.empty() ||
        sd_bus_message_new_method_call(bus_, &m, dest, path.c_str(), iface, member) < 0) {
        return nullptr;
    }
    sd_bus_message_set_auto_start(m, 0);
    return m;
}

void RawClient::send(sd_bus_message* m, Reply fn, uint64_t timeout_usec) {
    auto* owned = new Reply([weak = weak_from_this(), gen = conn_gen_, fn = std::move(fn)](
                                sd_bus_message* reply, const sd_bus_error* err) {
        if (auto self = weak.lock(); self && self->conn_gen_ == gen) {
            fn(reply, err);
        }
    });
    sd_bus_slot* slot = nullptr;
    int r = m && bus_ ? sd_bus_call_async(bus_, &slot, m, on_reply, owned, timeout_usec) : -ENOMEM;
    sd_bus_message_unref(m);
    if (r < 0) {
        delete owned;
        return lost("cannot send a call: " + std::string(strerror(-r)));
    }
    sd_bus_slot_set_destroy_callback(slot, destroy_reply);
    // A floating slot is referenced by the bus, which drops it after the reply (or on close)
    // and frees `owned` with it; the reference sd_bus_call_async gave here goes now, or the
    // slot, the callback and all it holds would outlive the call.
    sd_bus_slot_set_floating(slot, 1);
    sd_bus_slot_unref(slot);
    pump_->kick();
}

bool RawClient::add_match(const std::string& rule, sd_bus_message_handler_t handler) {
    int r = sd_bus_add_match_async(bus_, nullptr, rule.c_str(), handler, on_match_installed, this);
    if (r < 0) {
        lost("cannot subscribe: " + std::string(strerror(-r)));
        return false;
    }
    return true;
}

void RawClient::get_property(const char* dest, const std::string& path, const char* iface,
                             const char* property, Reply fn, uint64_t timeout_usec) {
    sd_bus_message* m = method(dest, path, "org.freedesktop.DBus.Properties", "Get");
    if (m && sd_bus_message_append(m, "ss", iface, property) < 0) {
        m = sd_bus_message_unref(m);
    }
    send(m, std::move(fn), timeout_usec);
}

}  // namespace hangar::dbus
