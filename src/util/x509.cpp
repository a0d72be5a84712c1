#include "util/x509.hpp"

#include "util/sha256.hpp"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

namespace hangar {

std::string certificate_fingerprint(x509_st* cert) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int len = 0;
    if (!cert || X509_digest(cert, EVP_sha256(), md, &len) != 1) {
        return {};
    }
    return hex(md, len);
}

std::optional<std::string> pem_certificate_fingerprint(std::string_view pem) {
    BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
    if (!bio) {
        return std::nullopt;
    }
    X509* cert = PEM_read_bio_X509(bio, nullptr, nullptr, nullptr);
    BIO_free(bio);
    if (!cert) {
        return std::nullopt;
    }
    std::string fp = certificate_fingerprint(cert);
    X509_free(cert);
    if (fp.empty()) {
        return std::nullopt;
    }
    return fp;
}

}  // namespace hangar
