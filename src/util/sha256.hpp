#pragma once
#include <string>
#include <string_view>

namespace hangar {

// `n` bytes as lower-case hex.
std::string hex(const unsigned char* p, size_t n);
// Lower-case hex SHA-256 of `data`.
std::string sha256_hex(std::string_view data);
// `n` bytes from the kernel's CSPRNG as lower-case hex; throws if it cannot read them.
std::string random_hex(size_t n);

}  // namespace hangar
