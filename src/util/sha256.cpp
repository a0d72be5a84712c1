#include "util/sha256.hpp"

#include <sys/random.h>

#include <stdexcept>
#include <vector>

#include <openssl/evp.h>

namespace hangar {

std::string hex(const unsigned char* p, size_t n) {
    static constexpr char kHex[] = "0123456789abcdef";
    std::string out;
    out.reserve(n * 2);
    for (size_t i = 0; i < n; ++i) {
        out += kHex[p[i] >> 4];
        out += kHex[p[i] & 15];
    }
    return out;
}

std::string sha256_hex(std::string_view data) {
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    EVP_Digest(data.data(), data.size(), md, &n, EVP_sha256(), nullptr);
    return hex(md, n);
}

std::string random_hex(size_t n) {
    std::vector<unsigned char> b(n);
    if (getrandom(b.data(), n, 0) != static_cast<ssize_t>(n)) {
        throw std::runtime_error("getrandom failed");
    }
    return hex(b.data(), n);
}

}  // namespace hangar
