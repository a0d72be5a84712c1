#include "core/admin_group.hpp"

#include <algorithm>

#include "util/user_files.hpp"

namespace hangar::core {

bool uid_in_group(uint32_t uid, unsigned gid) {
    UserIdentity u = lookup_user(uid);
    // No such user (any more): no group either.
    return u.known &&
           std::find(u.groups.begin(), u.groups.end(), static_cast<gid_t>(gid)) != u.groups.end();
}

bool AdminGroup::peer_is_admin(uint32_t uid, const std::vector<unsigned>& gids) const {
    return uid == 0 || (gid_ && std::find(gids.begin(), gids.end(), *gid_) != gids.end());
}

bool AdminGroup::is_admin(uint32_t uid) const {
    if (uid == 0) {
        return true;
    }
    if (!gid_) {
        return false;
    }
    auto now = Clock::now();
    if (auto it = cache_.find(uid); it != cache_.end() && it->second.until > now) {
        return it->second.admin;
    }
    if (cache_.size() >= 1024) {
        std::erase_if(cache_, [now](const auto& kv) { return kv.second.until <= now; });
        if (cache_.size() >= 1024) {
            cache_.clear();
        }
    }
    ++lookups_;
    bool admin = uid_in_group(uid, *gid_);
    cache_[uid] = {now + ttl_, admin};
    return admin;
}

}  // namespace hangar::core
