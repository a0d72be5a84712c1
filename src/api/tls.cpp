#include "api/tls.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <memory>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

namespace hangar::api {

namespace {
template <typename T, void (*F)(T*)>
struct Free {
    void operator()(T* p) const { F(p); }
};
using PkeyPtr = std::unique_ptr<EVP_PKEY, Free<EVP_PKEY, EVP_PKEY_free>>;
using X509Ptr = std::unique_ptr<X509, Free<X509, X509_free>>;

bool exists(const std::string& p) {
    return access(p.c_str(), F_OK) == 0;
}

// Writes with `write` into a new file of `mode` at path (through a temporary + rename).
template <typename Fn>
bool write_pem(const std::string& path, mode_t mode, Fn&& write) {
    std::string tmp = path + ".tmp";
    int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) {
        return false;
    }
    FILE* f = fdopen(fd, "w");
    bool ok = f && write(f) == 1;
    ok = f && fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    if (f) {
        fclose(f);
    }
    return ok && rename(tmp.c_str(), path.c_str()) == 0;
}
}  // namespace

Status ensure_self_signed(const std::string& cert_path, const std::string& key_path) {
    if (exists(cert_path) && exists(key_path)) {
        return {};
    }
    PkeyPtr key(EVP_EC_gen("P-256"));
    X509Ptr cert(X509_new());
    if (!key || !cert) {
        return {Errc::internal, "cannot generate a TLS key"};
    }
    X509_set_version(cert.get(), 2);
    unsigned char serial[16];
    FILE* r = fopen("/dev/urandom", "rb");
    if (!r || fread(serial, 1, sizeof serial, r) != sizeof serial) {
        if (r)
            fclose(r);
        return {Errc::internal, "cannot read /dev/urandom"};
    }
    fclose(r);
    serial[0] &= 0x7f;
    BIGNUM* bn = BN_bin2bn(serial, sizeof serial, nullptr);
    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
    BN_free(bn);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), 10L * 365 * 24 * 3600);
    X509_set_pubkey(cert.get(), key.get());
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                               reinterpret_cast<const unsigned char*>("hangar"), -1, -1, 0);
    X509_set_issuer_name(cert.get(), name);
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, cert.get(), cert.get(), nullptr, nullptr, 0);
    for (auto [nid, value] : {std::pair{NID_subject_alt_name, "DNS:localhost,IP:127.0.0.1,IP:::1"},
                              {NID_basic_constraints, "critical,CA:FALSE"},
                              {NID_ext_key_usage, "serverAuth"}}) {
        X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &v3, nid, value);
        if (!ext) {
            return {Errc::internal, "cannot build a certificate extension"};
        }
        X509_add_ext(cert.get(), ext, -1);
        X509_EXTENSION_free(ext);
    }
    if (!X509_sign(cert.get(), key.get(), EVP_sha256())) {
        return {Errc::internal, "cannot sign the self-signed certificate"};
    }
    if (!write_pem(key_path, 0600,
                   [&](FILE* f) {
                       return PEM_write_PrivateKey(f, key.get(), nullptr, nullptr, 0, nullptr,
                                                   nullptr);
                   }) ||
        !write_pem(cert_path, 0644, [&](FILE* f) { return PEM_write_X509(f, cert.get()); })) {
        return {Errc::internal, "cannot write " + cert_path + " / " + key_path};
    }
    return {};
}

Status configure_server_tls(boost::asio::ssl::context& ctx, const std::string& cert_path,
                            const std::string& key_path) {
    boost::system::error_code ec;
    ctx.set_options(
        boost::asio::ssl::context::default_workarounds | boost::asio::ssl::context::no_sslv2 |
            boost::asio::ssl::context::no_sslv3 | boost::asio::ssl::context::no_tlsv1 |
            boost::asio::ssl::context::no_tlsv1_1 | boost::asio::ssl::context::single_dh_use,
        ec);
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    if (!ec) {
        ctx.use_certificate_chain_file(cert_path, ec);
    }
    if (ec) {
        return {Errc::internal, "cannot load TLS certificate " + cert_path + ": " + ec.message()};
    }
    ctx.use_private_key_file(key_path, boost::asio::ssl::context::pem, ec);
    if (ec) {
        return {Errc::internal, "cannot load TLS key " + key_path + ": " + ec.message()};
    }
    // Ask for a client certificate without requiring one. Any certificate completes the
    // handshake; whether it is trusted is decided by its fingerprint, per request, against
    // the registered certificates (self-signed ones included), so no CA is involved.
    SSL_CTX_set_verify(ctx.native_handle(), SSL_VERIFY_PEER,
                       [](int, X509_STORE_CTX*) { return 1; });
    static constexpr unsigned char kSessionContext[] = "hangar";
    SSL_CTX_set_session_id_context(ctx.native_handle(), kSessionContext,
                                   sizeof kSessionContext - 1);
    return {};
}

}  // namespace hangar::api
