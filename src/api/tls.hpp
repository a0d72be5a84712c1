#pragma once
// TLS for the HTTPS listener: a server context (TLS 1.2 or newer) from a certificate and key,
// and a self-signed certificate made with OpenSSL's API when none is configured.
#include <string>

#include <boost/asio/ssl/context.hpp>

#include "hangar/error.hpp"

namespace hangar::api {

// Writes an ECDSA P-256 key and a self-signed certificate (CN hangar, SAN localhost,
// 127.0.0.1, ::1, valid 10 years) to `cert_path`/`key_path` unless both exist. Key mode 0600.
Status ensure_self_signed(const std::string& cert_path, const std::string& key_path);

Status configure_server_tls(boost::asio::ssl::context& ctx, const std::string& cert_path,
                            const std::string& key_path);

}  // namespace hangar::api
