// libFuzzer target: what an image server sends as its catalog. The first byte picks the
// reader (simplestreams index, simplestreams products, LXC index, SHA256SUMS, server URL);
// whatever it accepts must hold the invariants a pull relies on: every image has an alias, a
// path that stays below the server's base, a known format and a well-formed checksum.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "core/images.hpp"
#include "images/catalog.hpp"

using namespace hangar;
using namespace hangar::images;

namespace {
void check(bool ok) {
    if (!ok) {
        abort();
    }
}

void check_images(const std::vector<RemoteImage>& list, bool need_sha) {
    for (const auto& img : list) {
        check(!img.aliases.empty());
        check(safe_relative_path(img.path));
        check(img.format == "tar" || img.format == "squashfs");
        check(img.sha256.empty() ? !need_sha : img.sha256.size() == 64);
        check(find_image(list, img.aliases.front(), img.arch) != nullptr);
    }
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) {
        return 0;
    }
    std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
    switch (data[0] % 5) {
        case 0: {
            std::string path;
            if (simplestreams_products_path(in, path)) {
                check(safe_relative_path(path));
            }
            break;
        }
        case 1: {
            std::vector<RemoteImage> list;
            if (parse_simplestreams(in, list)) {
                check_images(list, true);
            }
            break;
        }
        case 2: {
            std::vector<RemoteImage> list;
            if (parse_lxc_index(in, list)) {
                check_images(list, false);
            }
            break;
        }
        case 3: {
            std::string sha = sha256sums_entry(in, "rootfs.tar.xz");
            check(sha.empty() || sha.size() == 64);
            break;
        }
        case 4: {
            std::string base;
            if (core::check_server_url(std::string(in), base)) {
                check(base.back() == '/');
                check(base.rfind("https://", 0) == 0 || base.rfind("http://", 0) == 0);
            }
            break;
        }
    }
    return 0;
}
