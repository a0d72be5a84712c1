#pragma once
// Certificate fingerprints: the SHA-256 of a certificate's DER form, as 64 lowercase hex digits
// (what `openssl x509 -noout -fingerprint -sha256` prints, without colons).
#include <optional>
#include <string>
#include <string_view>

struct x509_st;  // OpenSSL's X509

namespace hangar {

std::string certificate_fingerprint(x509_st* cert);
// The fingerprint of the first certificate in `pem`; nothing when there is none.
std::optional<std::string> pem_certificate_fingerprint(std::string_view pem);

}  // namespace hangar
