#include "core/tokens.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "hangar/names.hpp"
#include "util/sha256.hpp"
#include "util/time.hpp"

namespace hangar::core {

Tokens::Tokens(store::Db& db) : db_(db) {
    for (auto& row : db_.load_tokens()) {
        hash_by_name_[row.name] = row.hash;
        by_hash_.emplace(row.hash, std::move(row));
    }
}

Status Tokens::check_local(const Caller& caller) const {
    if (!caller.local) {
        return {Errc::forbidden, "tokens are managed over the unix socket only"};
    }
    return {};
}

Status Tokens::create(const Caller& caller, const std::string& name, std::string& token,
                      store::TokenRow& row) {
    if (Status st = check_local(caller); !st) {
        return st;
    }
    if (Status st = check_name("token", name); !st) {
        return st;
    }
    if (hash_by_name_.count(name)) {
        return {Errc::conflict, "a token named " + name + " already exists"};
    }
    size_t owned = 0;
    for (const auto& [h, t] : by_hash_) {
        owned += t.uid == caller.uid;
    }
    if (owned >= kMaxTokensPerUid) {
        return {Errc::conflict, "uid " + std::to_string(caller.uid) + " already has " +
                                    std::to_string(owned) + " tokens (the limit)"};
    }
    token = "hgr_" + random_hex(32);
    row = {name, sha256_hex(token), caller.uid, caller.admin, now_rfc3339()};
    db_.insert_token(row);
    if (!db_.flush()) {
        return {Errc::internal, "the store could not record the token"};
    }
    hash_by_name_[name] = row.hash;
    by_hash_.emplace(row.hash, row);
    spdlog::info("token {} created for uid {}", name, caller.uid);
    return {};
}

std::vector<store::TokenRow> Tokens::list(const Caller& caller) const {
    std::vector<store::TokenRow> out;
    for (const auto& [h, t] : by_hash_) {
        if (caller.admin || t.uid == caller.uid) {
            out.push_back(t);
            out.back().hash.clear();
        }
    }
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.name < b.name; });
    return out;
}

Status Tokens::revoke(const Caller& caller, const std::string& name) {
    if (Status st = check_local(caller); !st) {
        return st;
    }
    if (Status st = check_name("token", name); !st) {
        return st;
    }
    auto it = hash_by_name_.find(name);
    if (it == hash_by_name_.end() || (!caller.admin && by_hash_.at(it->second).uid != caller.uid)) {
        return {Errc::not_found, "no token named " + name};
    }
    db_.delete_token(name);
    if (!db_.flush()) {
        return {Errc::internal, "the store could not revoke the token"};
    }
    by_hash_.erase(it->second);
    hash_by_name_.erase(it);
    spdlog::info("token {} revoked", name);
    return {};
}

std::optional<Caller> Tokens::authenticate(std::string_view token) const {
    if (token.size() != 68 || token.substr(0, 4) != "hgr_") {
        return std::nullopt;
    }
    auto it = by_hash_.find(sha256_hex(token));
    if (it == by_hash_.end()) {
        return std::nullopt;
    }
    return Caller{it->second.uid, it->second.admin, false};
}

}  // namespace hangar::core
