#pragma once
// API tokens: created over the unix socket for the caller's own uid, shown once, stored only
// as a SHA-256 hash, revocable. A token acts as the uid (and admin right) that created it.
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/machines.hpp"
#include "hangar/error.hpp"
#include "store/db.hpp"

namespace hangar::core {

class Tokens {
  public:
    explicit Tokens(store::Db& db);

    // On success `token` holds the secret, which is not kept anywhere.
    Status create(const Caller& caller, const std::string& name, std::string& token,
                  store::TokenRow& row);
    std::vector<store::TokenRow> list(const Caller& caller) const;
    Status revoke(const Caller& caller, const std::string& name);
    std::optional<Caller> authenticate(std::string_view token) const;
    size_t size() const { return by_hash_.size(); }

  private:
    Status check_local(const Caller& caller) const;

    store::Db& db_;
    std::unordered_map<std::string, store::TokenRow> by_hash_;
    std::unordered_map<std::string, std::string> hash_by_name_;
};

inline constexpr size_t kMaxTokensPerUid = 64;

}  // namespace hangar::core
