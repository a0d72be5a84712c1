// A VM's display over the API: VNC through a WebSocket, screenshots, and the tickets a browser
// opens its WebSockets with (the console's too).
#include <filesystem>

#include <boost/asio/io_context.hpp>

#include "api/browser_access.hpp"
#include "api/handlers.hpp"
#include "api/vnc_channel.hpp"
#include "hangar/machine_files.hpp"
#include "util/file_tail.hpp"
#include "util/json.hpp"
#include "util/sha256.hpp"

namespace hangar::api {

namespace {
constexpr uint64_t kMaxScreenshot = 32ull << 20;  // a 4K screen as PNG is well below

// The machine `req` names, if it is the caller's, has a display and runs.
Status running_display(core::Machines& machines, Request& req, const core::Machine** out) {
    const std::string& name = req.params["name"];
    if (Status st = machines.get(req.caller, name, out); !st) {
        return st;
    }
    const core::Machine& m = **out;
    if (Status st = m.runtime->supports(core::Capability::display, name); !st) {
        return st;
    }
    if (!m.live || (m.state != MachineState::running && m.state != MachineState::paused)) {
        return {Errc::invalid_state, name + " is " + std::string(to_string(m.state)) +
                                         ": its display exists only while it runs"};
    }
    return {};
}

// The VNC server's socket of a running VM; QEMUs started before hangard gave VMs a display
// have none.
Status vnc_socket(core::Machines& machines, const core::Machine& m, std::string& path) {
    path = MachineFiles(machines.machine_dir(m.spec.name)).vnc_socket().string();
    std::error_code ec;
    if (!std::filesystem::is_socket(path, ec)) {
        return {Errc::invalid_state, m.spec.name +
                                         " runs without a VNC server (started by an older "
                                         "hangard); restart it to get one"};
    }
    return {};
}
}  // namespace

void register_display_routes(Router& router, core::Machines& machines, boost::asio::io_context& io,
                             Tickets& tickets) {
    router.add(
        "POST", "/v1/machines/{name}/console/ticket", Access::user,
        [&machines, &tickets](Request& req, Respond respond) {
            const core::Machine* m = nullptr;
            if (Status st = machines.get(req.caller, req.params["name"], &m); !st) {
                return respond(error_response(st));
            }
            std::string base = "/v1/machines/" + m->spec.name;
            std::string ticket = tickets.issue(req.caller, {base + "/console", base + "/vnc"});
            json::Writer w;
            w.begin_object()
                .field("ticket", ticket)
                .field("expires_in_s", static_cast<int64_t>(tickets.lifetime().count()))
                .end_object();
            respond(json_response(200, w.take()));
        });

    router.add_channel(
        "GET", "/v1/machines/{name}/vnc", Access::user,
        [&machines, &io](Request& req, Respond refuse, Accept accept) {
            const core::Machine* m = nullptr;
            std::string path;
            Status st = running_display(machines, req, &m);
            if (st) {
                st = vnc_socket(machines, *m, path);
            }
            if (!st) {
                return refuse(error_response(st));
            }
            VncChannel::connect(
                io, path, m->spec.name,
                [refuse, accept](const Status& st, std::shared_ptr<VncChannel> channel) {
                    if (!st) {
                        return refuse(error_response(st));
                    }
                    WsOptions opts;
                    opts.subprotocols = {"binary"};
                    accept(std::move(channel), std::move(opts));
                });
        },
        [&machines](Request& req, Respond respond) {
            const core::Machine* m = nullptr;
            if (Status st = running_display(machines, req, &m); !st) {
                return respond(error_response(st));
            }
            respond(error_response(
                {Errc::bad_request,
                 "GET /v1/machines/{name}/vnc is a WebSocket (RFB in binary frames, subprotocol "
                 "binary): send an Upgrade request"}));
        });

    router.add("GET", "/v1/machines/{name}/screenshot", Access::user,
               [&machines](Request& req, Respond respond) {
                   const core::Machine* m = nullptr;
                   if (Status st = running_display(machines, req, &m); !st) {
                       return respond(error_response(st));
                   }
                   // A file of its own per request, in the machine's directory (hangard's only).
                   std::string path = (machines.machine_dir(m->spec.name) /
                                       ("screenshot-" + random_hex(8) + ".png"))
                                          .string();
                   m->runtime->screenshot(m->instance(), path, [path, respond](const Status& st) {
                       Response res;
                       Status read = st;
                       if (read) {
                           // Bounded, and never a FIFO or a device: the read cannot stall.
                           read = read_file_tail(path, kMaxScreenshot + 1, res.body);
                       }
                       std::error_code ec;
                       std::filesystem::remove(path, ec);
                       if (read && res.body.size() > kMaxScreenshot) {
                           read = {Errc::too_large, "the screenshot is larger than 32 MiB"};
                       }
                       if (read && res.body.compare(0, 8, "\x89PNG\r\n\x1a\n") != 0) {
                           read = {Errc::internal, "the screenshot is not a PNG"};
                       }
                       if (!read) {
                           return respond(error_response(read));
                       }
                       res.content_type = "image/png";
                       res.headers.emplace_back("Cache-Control", "no-store");
                       respond(std::move(res));
                   });
               });
}

}  // namespace hangar::api
