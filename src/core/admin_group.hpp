#pragma once
// Whether a uid holds the admin right now: uid 0, or a member of the admin group as the user
// database says at this moment (getpwuid_r + getgrouplist: /etc/group, or whatever NSS
// serves), not as it was when a token or certificate was made. One lookup costs ~25 us with
// NSS files; answers are kept for a second per uid, so a burst of requests costs one lookup
// and a removal from the group takes effect within a second.
#include <chrono>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <vector>

namespace hangar::core {

class AdminGroup {
  public:
    using Clock = std::chrono::steady_clock;
    // `gid`: the admin group's; none when that group does not exist (then only root is).
    explicit AdminGroup(std::optional<unsigned> gid, Clock::duration ttl = std::chrono::seconds(1))
        : gid_(gid), ttl_(ttl) {}

    bool is_admin(uint32_t uid) const;
    // A connected peer's right, from the credentials the kernel gives with its connection
    // (SO_PEERCRED + SO_PEERGROUPS on the unix socket, UnixUserID + UnixGroupIDs on the bus):
    // uid 0, or the admin group among `gids` (its primary group included).
    bool peer_is_admin(uint32_t uid, const std::vector<unsigned>& gids) const;
    std::optional<unsigned> gid() const { return gid_; }
    uint64_t lookups() const { return lookups_; }

  private:
    struct Cached {
        Clock::time_point until;
        bool admin;
    };
    std::optional<unsigned> gid_;
    Clock::duration ttl_;
    mutable std::unordered_map<uint32_t, Cached> cache_;
    mutable uint64_t lookups_ = 0;
};

// The lookup itself, uncached: whether `uid`'s user (by its passwd entry) has `gid` as its
// primary group or is listed in it.
bool uid_in_group(uint32_t uid, unsigned gid);

}  // namespace hangar::core
