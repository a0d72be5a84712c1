#pragma once
// How HTTPS callers prove who they are: API tokens (shown once, stored only as a SHA-256
// hash) and trusted TLS client certificates (stored as the SHA-256 fingerprint of their DER
// form). Both are managed over the unix socket only and act as the uid of whoever registered
// them, with that uid's admin right as it is at each use (AdminGroup), not as it was at
// registration. Names are unique across both kinds.
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "core/admin_group.hpp"
#include "core/machines.hpp"
#include "hangar/error.hpp"
#include "store/db.hpp"

namespace hangar::core {

inline constexpr std::string_view kToken = "token";
inline constexpr std::string_view kCertificate = "certificate";

class Credentials {
  public:
    // `admins` decides the admin right at each use; without it only uid 0 is admin.
    explicit Credentials(store::Db& db, const AdminGroup* admins = nullptr);

    // On success `token` holds the secret, which is not kept anywhere.
    Status create_token(const Caller& caller, const std::string& name, std::string& token,
                        store::CredentialRow& row);
    // `fingerprint`: the SHA-256 of the certificate's DER form, hex, colons and case ignored.
    Status add_certificate(const Caller& caller, const std::string& name,
                           std::string_view fingerprint, store::CredentialRow& row);
    // Each row's `admin` is its uid's right now.
    std::vector<store::CredentialRow> list(const Caller& caller, std::string_view kind) const;
    Status remove(const Caller& caller, std::string_view kind, const std::string& name);

    std::optional<Caller> authenticate_token(std::string_view token) const;
    // `fingerprint`: lowercase hex SHA-256 of a peer certificate's DER form.
    std::optional<Caller> authenticate_certificate(std::string_view fingerprint) const;
    size_t count(std::string_view kind) const;

  private:
    Status add(const Caller& caller, std::string_view kind, const std::string& name,
               std::string hash, store::CredentialRow& row);
    std::optional<Caller> find(std::string_view kind, const std::string& hash) const;
    bool is_admin(uint32_t uid) const { return admins_ ? admins_->is_admin(uid) : uid == 0; }

    store::Db& db_;
    const AdminGroup* admins_;
    std::unordered_map<std::string, store::CredentialRow> by_hash_;
    std::unordered_map<std::string, std::string> hash_by_name_;
};

inline constexpr size_t kMaxCredentialsPerUid = 64;

// "AB:CD:..." or "abcd..." → 64 lowercase hex digits; nothing when it is not a SHA-256.
std::optional<std::string> normalize_fingerprint(std::string_view text);

}  // namespace hangar::core
