#include "api/browser_access.hpp"

#include <algorithm>
#include <cctype>

#include "util/json.hpp"
#include "util/sha256.hpp"

namespace hangar::api {

void Tickets::expire(Clock::time_point now) {
    for (auto it = tickets_.begin(); it != tickets_.end();) {
        it = it->second.expires <= now ? tickets_.erase(it) : std::next(it);
    }
}

std::string Tickets::issue(const core::Caller& caller, std::vector<std::string> paths) {
    auto now = Clock::now();
    expire(now);
    while (tickets_.size() >= max_) {
        auto oldest = std::min_element(tickets_.begin(), tickets_.end(), [](auto& a, auto& b) {
            return a.second.expires < b.second.expires;
        });
        tickets_.erase(oldest);
    }
    std::string ticket = "hgt_" + random_hex(24);
    tickets_[sha256_hex(ticket)] = Ticket{caller, std::move(paths), now + lifetime_};
    return ticket;
}

std::optional<core::Caller> Tickets::redeem(std::string_view ticket, std::string_view path) {
    auto now = Clock::now();
    expire(now);
    auto it = tickets_.find(sha256_hex(ticket));
    if (it == tickets_.end()) {
        return std::nullopt;
    }
    Ticket t = std::move(it->second);
    tickets_.erase(it);
    if (std::find(t.paths.begin(), t.paths.end(), path) == t.paths.end()) {
        return std::nullopt;
    }
    core::Caller c = t.caller;
    c.method = "ticket";
    c.local = false;  // redeemed over TCP
    return c;
}

namespace {
std::string lower(std::string_view v) {
    std::string out(v);
    std::transform(out.begin(), out.end(), out.begin(),
                   [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
    return out;
}

// "host[:port]" with the port made explicit ("443" for https); "" when malformed.
std::string authority(std::string_view scheme, std::string_view hostport) {
    if (hostport.empty() || hostport.find_first_of("/?#@ \t") != std::string_view::npos) {
        return {};
    }
    std::string_view host = hostport, port;
    if (hostport.front() == '[') {  // [v6]:port
        size_t close = hostport.find(']');
        if (close == std::string_view::npos) {
            return {};
        }
        host = hostport.substr(0, close + 1);
        std::string_view rest = hostport.substr(close + 1);
        if (!rest.empty()) {
            if (rest.front() != ':') {
                return {};
            }
            port = rest.substr(1);
        }
    } else if (size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
        host = hostport.substr(0, colon);
        port = hostport.substr(colon + 1);
    }
    if (host.empty() || !std::all_of(port.begin(), port.end(),
                                     [](unsigned char c) { return std::isdigit(c) != 0; })) {
        return {};
    }
    if (port.empty()) {
        port = scheme == "https" || scheme == "wss" ? "443" : "80";
    }
    return lower(host) + ":" + std::string(port);
}
}  // namespace

std::string normalize_origin(std::string_view origin) {
    size_t sep = origin.find("://");
    if (sep == std::string_view::npos) {
        return {};
    }
    std::string scheme = lower(origin.substr(0, sep));
    if (scheme != "http" && scheme != "https") {
        return {};
    }
    std::string_view rest = origin.substr(sep + 3);
    if (!rest.empty() && rest.back() == '/') {
        rest.remove_suffix(1);
    }
    std::string a = authority(scheme, rest);
    return a.empty() ? std::string() : scheme + "://" + a;
}

Status check_origin(std::string_view origin, std::string_view scheme, std::string_view host,
                    const std::vector<std::string>& allowed) {
    if (origin.empty()) {
        return {};  // not a browser: nothing to hijack
    }
    std::string o = normalize_origin(origin);
    if (!o.empty()) {
        std::string self = authority(scheme, host);
        if (!self.empty() && o == std::string(scheme) + "://" + self) {
            return {};
        }
        for (const auto& a : allowed) {
            if (normalize_origin(a) == o) {
                return {};
            }
        }
    }
    std::string shown(origin.substr(0, 128));
    return {Errc::forbidden, "WebSocket upgrade from origin " + json::quote(shown) +
                                 " refused: it is not this server's origin (" +
                                 std::string(scheme) + "://" + std::string(host.substr(0, 128)) +
                                 ") nor one allowed with --allowed-origin"};
}

}  // namespace hangar::api
