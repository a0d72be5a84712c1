#include "core/credentials.hpp"

#include <algorithm>

#include <spdlog/spdlog.h>

#include "hangar/names.hpp"
#include "util/reactor.hpp"
#include "util/sha256.hpp"
#include "util/time.hpp"

namespace hangar::core {

std::optional<std::string> normalize_fingerprint(std::string_view text) {
    std::string out;
    for (char c : text) {
        if (c == ':') {
            continue;
        }
        if (c >= 'A' && c <= 'F') {
            c = static_cast<char>(c - 'A' + 'a');
        }
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) || out.size() == 64) {
            return std::nullopt;
        }
        out += c;
    }
    if (out.size() != 64) {
        return std::nullopt;
    }
    return out;
}

namespace {
// Adding and removing: over the unix socket only, with a valid name.
Status check_managed(const Caller& caller, std::string_view kind, const std::string& name) {
    if (!caller.local) {
        return {Errc::forbidden, std::string(kind) + "s are managed over the unix socket only"};
    }
    return check_name(kind, name);
}
}  // namespace

Credentials::Credentials(store::Db& db, const AdminGroup* admins) : db_(db), admins_(admins) {
    for (auto& row : db_.load_credentials()) {
        hash_by_name_[row.name] = row.hash;
        by_hash_.emplace(row.hash, std::move(row));
    }
}

Status Credentials::add(const Caller& caller, std::string_view kind, const std::string& name,
                        std::string hash, store::CredentialRow& row) {
    HANGAR_ASSERT_REACTOR();
    if (Status st = check_managed(caller, kind, name); !st) {
        return st;
    }
    if (hash_by_name_.count(name)) {
        return {Errc::conflict, "a token or certificate named " + name + " already exists"};
    }
    if (auto it = by_hash_.find(hash); it != by_hash_.end()) {
        return {Errc::conflict,
                "this " + std::string(kind) + " is already registered as " + it->second.name};
    }
    size_t owned = std::count_if(by_hash_.begin(), by_hash_.end(),
                                 [&](const auto& kv) { return kv.second.uid == caller.uid; });
    if (owned >= kMaxCredentialsPerUid) {
        return {Errc::conflict, "uid " + std::to_string(caller.uid) + " already has " +
                                    std::to_string(owned) + " tokens and certificates (the limit)"};
    }
    row = {name,       std::string(kind),    std::move(hash),
           caller.uid, is_admin(caller.uid), now_rfc3339()};
    db_.insert_credential(row);
    if (!db_.flush()) {
        return {Errc::internal, "the store could not record the " + std::string(kind)};
    }
    hash_by_name_[name] = row.hash;
    by_hash_.emplace(row.hash, row);
    spdlog::info("{} {} registered for uid {}", kind, name, caller.uid);
    return {};
}

Status Credentials::create_token(const Caller& caller, const std::string& name, std::string& token,
                                 store::CredentialRow& row) {
    HANGAR_ASSERT_REACTOR();
    std::string secret = "hgr_" + random_hex(32);
    if (Status st = add(caller, kToken, name, sha256_hex(secret), row); !st) {
        return st;
    }
    token = std::move(secret);
    return {};
}

Status Credentials::add_certificate(const Caller& caller, const std::string& name,
                                    std::string_view fingerprint, store::CredentialRow& row) {
    HANGAR_ASSERT_REACTOR();
    auto hash = normalize_fingerprint(fingerprint);
    if (!hash) {
        return {Errc::bad_request,
                "a fingerprint is the SHA-256 of the certificate: 64 hex "
                "digits, colons allowed"};
    }
    return add(caller, kCertificate, name, std::move(*hash), row);
}

std::vector<store::CredentialRow> Credentials::list(const Caller& caller,
                                                    std::string_view kind) const {
    std::vector<store::CredentialRow> out;
    for (const auto& [h, c] : by_hash_) {
        if (c.kind == kind && (caller.admin || c.uid == caller.uid)) {
            out.push_back(c);
            out.back().admin = is_admin(c.uid);
            if (kind == kToken) {
                out.back().hash.clear();
            }
        }
    }
    std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.name < b.name; });
    return out;
}

Status Credentials::remove(const Caller& caller, std::string_view kind, const std::string& name) {
    HANGAR_ASSERT_REACTOR();
    if (Status st = check_managed(caller, kind, name); !st) {
        return st;
    }
    auto it = hash_by_name_.find(name);
    const store::CredentialRow* row =
        it == hash_by_name_.end() ? nullptr : &by_hash_.at(it->second);
    if (!row || row->kind != kind || (!caller.admin && row->uid != caller.uid)) {
        return {Errc::not_found, "no " + std::string(kind) + " named " + name};
    }
    db_.delete_credential(name);
    if (!db_.flush()) {
        return {Errc::internal, "the store could not remove the " + std::string(kind)};
    }
    by_hash_.erase(it->second);
    hash_by_name_.erase(it);
    spdlog::info("{} {} removed", kind, name);
    return {};
}

std::optional<Caller> Credentials::find(std::string_view kind, const std::string& hash) const {
    auto it = by_hash_.find(hash);
    if (it == by_hash_.end() || it->second.kind != kind) {
        return std::nullopt;
    }
    // The right of the uid as it is now: a creator who left the admin group takes the admin
    // right of their tokens with them.
    return Caller{it->second.uid, is_admin(it->second.uid), false,
                  kind == kToken ? "token" : "certificate"};
}

std::optional<Caller> Credentials::authenticate_token(std::string_view token) const {
    if (token.size() != 68 || token.substr(0, 4) != "hgr_") {
        return std::nullopt;
    }
    return find(kToken, sha256_hex(token));
}

std::optional<Caller> Credentials::authenticate_certificate(std::string_view fingerprint) const {
    return find(kCertificate, std::string(fingerprint));
}

size_t Credentials::count(std::string_view kind) const {
    return std::count_if(by_hash_.begin(), by_hash_.end(),
                         [&](const auto& kv) { return kv.second.kind == kind; });
}

}  // namespace hangar::core
