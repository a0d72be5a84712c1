#pragma once
// What an image server offers, read from its catalog: a simplestreams server
// (streams/v1/index.json naming a products file of datatype "image-downloads") or the flat LXC
// index (meta/1.0/index-system, one "distro;release;arch;variant;version;path" per line).
// Only container root file systems are taken: a simplestreams version's "root.tar.xz" item
// (or, failing that, its squashfs), or an LXC directory's rootfs.tar.xz.
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "hangar/error.hpp"

namespace hangar::images {

// What a catalog says an image is; local images keep it.
struct ImageInfo {
    std::string os, release, arch, variant;
    std::string version;  // the catalog's version (build), the newest one it lists
};

struct RemoteImage : ImageInfo {
    std::vector<std::string> aliases;  // "debian/12", "debian/12/default", ...
    std::string path;                  // of the root file system, relative to the server's base URL
    std::string format;                // "tar" or "squashfs"
    std::string sha256;                // lower-case hex; "" when the catalog gives none (LXC index)
    uint64_t size = 0;                 // 0 when unknown
};

inline constexpr std::string_view kSimplestreamsIndex = "streams/v1/index.json";
inline constexpr std::string_view kLxcIndex = "meta/1.0/index-system";

// The products file of the index (relative path), e.g. "streams/v1/images.json".
Status simplestreams_products_path(std::string_view index_json, std::string& path);
// Every product with a container root file system, at its newest version, sorted by alias.
Status parse_simplestreams(std::string_view products_json, std::vector<RemoteImage>& out);
// Every line of the LXC index, sorted by alias (its alias is "distro/release/arch/variant";
// "distro/release" and "distro/release/variant" also name it on the host's architecture).
Status parse_lxc_index(std::string_view text, std::vector<RemoteImage>& out);
// The "<sha256>  <file>" line of a SHA256SUMS file naming `file`; "" when absent.
std::string sha256sums_entry(std::string_view sums, std::string_view file);

// The host's architecture as image servers name it ("amd64", "arm64", ...).
std::string host_arch();
// The image `alias` names on architecture `arch`; nullptr when none.
const RemoteImage* find_image(const std::vector<RemoteImage>& images, std::string_view alias,
                              std::string_view arch);
// A relative path from a catalog that stays below the server's base: no "..", no leading
// '/', no scheme, no backslash or control character.
bool safe_relative_path(std::string_view path);

}  // namespace hangar::images
