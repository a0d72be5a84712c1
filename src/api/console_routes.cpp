// GET /v1/machines/{name}/console: a WebSocket viewer of core::Consoles.
#include <charconv>
#include <memory>
#include <optional>
#include <string>

#include <simdjson.h>

#include "api/console_routes.hpp"
#include "util/json.hpp"
#include "util/json_body.hpp"

namespace hangar::api {

namespace {

// Output waits in the viewer's socket queue up to this much; then it waits in the file.
constexpr size_t kHighWater = 256 * 1024;

class ConsoleChannel final : public WsChannel,
                             public core::ConsoleViewer,
                             public std::enable_shared_from_this<ConsoleChannel> {
  public:
    explicit ConsoleChannel(core::Consoles& consoles) : consoles_(consoles) {}

    void attached(const core::Consoles::Attached& a, bool readonly) {
        id_ = a.id;
        json::Writer w;
        hello_ = w.begin_object()
                     .field("type", "attached")
                     .field("viewer", a.id)
                     .field("offset", a.offset)
                     .field("end", a.end)
                     .field("readonly", readonly)
                     .end_object()
                     .take();
    }

    // WsChannel
    void on_open(std::shared_ptr<WsPeer> peer) override {
        peer_ = peer;
        peer->send_text(std::move(hello_));
        for (auto& n : pending_notes_) {
            peer->send_text(std::move(n));
        }
        pending_notes_.clear();
        if (!end_reason_.empty()) {
            return peer->close(end_reason_);
        }
        pump();
    }
    void on_binary(std::string_view bytes) override {
        Status st = consoles_.input(id_, bytes);
        if (!st && st.code() != Errc::too_large) {
            // Told once per kind of refusal in a row, not per keystroke.
            if (st.message() != last_refusal_) {
                last_refusal_ = st.message();
                json::Writer w;
                note(w.begin_object()
                         .field("type", "input_refused")
                         .field("message", st.message())
                         .end_object()
                         .take());
            }
        } else if (st) {
            last_refusal_.clear();
        }
    }
    void on_text(std::string_view text) override {
        simdjson::dom::element msg;
        std::string type;
        uint32_t cols = 0, rows = 0;
        Status st = json::parse_object(parser_, text, msg, false);
        // The typed readers take the field's value, not the object.
        auto member = [&](const char* key, simdjson::dom::element& v) -> Status {
            if (msg[key].get(v) != simdjson::SUCCESS) {
                return {Errc::bad_request, "field '" + std::string(key) + "' is missing"};
            }
            return {};
        };
        simdjson::dom::element v;
        if (st && (st = member("type", v))) {
            st = json::get_string(v, "type", type);
        }
        if (st && type == "resize") {
            if ((st = member("cols", v))) {
                st = json::get_u32(v, "cols", cols);
            }
            if (st && (st = member("rows", v))) {
                st = json::get_u32(v, "rows", rows);
            }
            if (st) {
                st = consoles_.resize(id_, cols, rows);
            }
        } else if (st) {
            st = {Errc::bad_request,
                  "unknown control message type " + json::quote(type) + " (known: \"resize\")"};
        }
        if (!st) {
            if (auto peer = peer_.lock()) {
                peer->close("bad control message: " + st.message());
            }
        }
    }
    void on_drained() override { pump(); }
    void on_closed() override {
        consoles_.detach(id_, end_reason_.empty() ? "closed by the viewer" : end_reason_);
    }

    // ConsoleViewer
    void wake() override { pump(); }
    void note(std::string json) override {
        if (auto peer = peer_.lock()) {
            peer->send_text(std::move(json));
        } else {
            pending_notes_.push_back(std::move(json));
        }
    }
    void end(std::string reason) override {
        end_reason_ = reason;
        if (auto peer = peer_.lock()) {
            peer->close(std::move(reason));
        }
    }

  private:
    void pump() {
        auto peer = peer_.lock();
        if (!peer || peer->closed()) {
            return;
        }
        while (peer->queued_bytes() < kHighWater) {
            uint64_t offset = 0;
            auto bytes = consoles_.read(id_, consoles_.limits().chunk, &offset);
            if (!bytes) {
                break;
            }
            peer->send_binary(std::move(bytes));
        }
    }

    core::Consoles& consoles_;
    std::string id_;
    std::string hello_;
    std::weak_ptr<WsPeer> peer_;
    std::vector<std::string> pending_notes_;
    std::string end_reason_;
    std::string last_refusal_;
    simdjson::dom::parser parser_;
};

// `from`: a byte offset (digits only).
Status parse_offset(const std::string& s, uint64_t& out) {
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
    if (s.empty() || ec != std::errc() || p != s.data() + s.size()) {
        return {Errc::bad_request,
                "from must be a byte offset (a non-negative integer), not " + json::quote(s)};
    }
    return {};
}

Status parse_flag(const std::map<std::string, std::string>& query, const char* name, bool& out) {
    auto it = query.find(name);
    if (it == query.end()) {
        return {};
    }
    if (it->second == "true" || it->second == "1" || it->second.empty()) {
        out = true;
    } else if (it->second == "false" || it->second == "0") {
        out = false;
    } else {
        return {Errc::bad_request,
                std::string(name) + " must be true or false, not " + json::quote(it->second)};
    }
    return {};
}

}  // namespace

void register_console_routes(Router& router, core::Consoles& consoles, core::Machines& machines) {
    router.add_channel(
        "GET", "/v1/machines/{name}/console", Access::user,
        [&consoles](Request& req, Respond refuse, Accept accept) {
            std::optional<uint64_t> from;
            bool readonly = false;
            if (auto it = req.query.find("from"); it != req.query.end()) {
                uint64_t v = 0;
                if (Status st = parse_offset(it->second, v); !st) {
                    return refuse(error_response(st));
                }
                from = v;
            }
            if (Status st = parse_flag(req.query, "readonly", readonly); !st) {
                return refuse(error_response(st));
            }
            auto channel = std::make_shared<ConsoleChannel>(consoles);
            core::Consoles::Attached a;
            if (Status st =
                    consoles.attach(req.caller, req.params["name"], from, readonly, channel, &a);
                !st) {
                return refuse(error_response(st));
            }
            channel->attached(a, readonly);
            WsOptions options;
            options.max_message = 64 * 1024;
            options.subprotocols = {"binary"};
            accept(std::move(channel), std::move(options));
        },
        [&machines](Request& req, Respond respond) {
            const core::Machine* m = nullptr;
            if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
                return respond(error_response(st));
            }
            respond(error_response({Errc::bad_request,
                                    "GET /v1/machines/{name}/console is a WebSocket: send an "
                                    "Upgrade request (hangarctl console NAME)"}));
        });
}

}  // namespace hangar::api
