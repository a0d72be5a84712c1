#pragma once
// What lets a browser open a WebSocket safely: a browser cannot put a bearer token on a
// WebSocket, so it asks for a short ticket first (POST /v1/machines/NAME/console/ticket, with
// its token) and passes it as ?ticket=; and since a page of any site can open a WebSocket to
// hangard (cross-site WebSocket hijacking), an upgrade that carries an Origin must come from
// hangard's own origin or an allowed one. Nothing here depends on Beast.
#include <chrono>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/machines.hpp"
#include "hangar/error.hpp"

namespace hangar::api {

// Single-use tickets, each for one caller and the request paths it was made for, valid for
// `lifetime`. At most `max_tickets` are outstanding (the oldest is dropped for a new one).
class Tickets {
  public:
    using Clock = std::chrono::steady_clock;
    explicit Tickets(std::chrono::seconds lifetime = std::chrono::seconds(30),
                     size_t max_tickets = 4096)
        : lifetime_(lifetime), max_(max_tickets) {}

    // A new ticket standing for `caller` on any of `paths` (e.g. /v1/machines/web/vnc).
    std::string issue(const core::Caller& caller, std::vector<std::string> paths);
    // The caller `ticket` stands for on `path`, once: the ticket is used up by this call,
    // whether it fits the path or not. Nothing when unknown, used, expired or for another path.
    std::optional<core::Caller> redeem(std::string_view ticket, std::string_view path);
    std::chrono::seconds lifetime() const { return lifetime_; }
    size_t outstanding() const { return tickets_.size(); }

  private:
    struct Ticket {
        core::Caller caller;
        std::vector<std::string> paths;
        Clock::time_point expires;
    };
    void expire(Clock::time_point now);
    std::chrono::seconds lifetime_;
    size_t max_;
    std::map<std::string, Ticket, std::less<>> tickets_;  // by SHA-256 of the ticket
};

// An upgrade's Origin check: ok when `origin` is empty (not a browser), equal to the origin of
// the request itself — `scheme`://`host` (the Host header), default ports made explicit — or
// one of `allowed` (exact origins, e.g. "https://dash.example:8443"); forbidden otherwise.
Status check_origin(std::string_view origin, std::string_view scheme, std::string_view host,
                    const std::vector<std::string>& allowed);
// "scheme://host:port" in lower case with the port made explicit, or "" when `origin` is not
// of that shape (e.g. "null").
std::string normalize_origin(std::string_view origin);

}  // namespace hangar::api
