#include "images/catalog.hpp"

#include <sys/utsname.h>

#include <algorithm>
#include <map>
#include <tuple>

#include <simdjson.h>

namespace hangar::images {

namespace {

Status bad_catalog(std::string what) {
    return {Errc::invalid_spec, "the image server's catalog is malformed: " + std::move(what)};
}

std::vector<std::string> split(std::string_view s, char sep) {
    std::vector<std::string> out;
    size_t i = 0;
    while (i <= s.size()) {
        size_t j = s.find(sep, i);
        if (j == std::string_view::npos) {
            j = s.size();
        }
        out.emplace_back(s.substr(i, j - i));
        i = j + 1;
    }
    return out;
}

bool is_hex64(std::string_view s) {
    return s.size() == 64 && std::all_of(s.begin(), s.end(), [](char c) {
               return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
           });
}

void sort_by_alias(std::vector<RemoteImage>& out) {
    std::sort(out.begin(), out.end(), [](const RemoteImage& a, const RemoteImage& b) {
        return std::tie(a.aliases.front(), a.arch) < std::tie(b.aliases.front(), b.arch);
    });
}

}  // namespace

bool safe_relative_path(std::string_view path) {
    if (path.empty() || path.size() > 1024 || path.front() == '/' ||
        path.find("://") != std::string_view::npos) {
        return false;
    }
    for (char c : path) {
        auto u = static_cast<unsigned char>(c);
        if (u <= 0x20 || u == 0x7f || c == '\\' || c == '?' || c == '#') {
            return false;
        }
    }
    for (const auto& seg : split(path, '/')) {
        if (seg == ".." || seg == ".") {
            return false;
        }
    }
    return true;
}

Status simplestreams_products_path(std::string_view index_json, std::string& path) {
    simdjson::dom::parser parser;
    simdjson::dom::object index;
    if (parser.parse(index_json.data(), index_json.size()).get(index) != simdjson::SUCCESS) {
        return bad_catalog("index.json is not a JSON object");
    }
    simdjson::dom::object entries;
    if (index["index"].get(entries) != simdjson::SUCCESS) {
        return bad_catalog("index.json has no \"index\" object");
    }
    for (auto [key, entry] : entries) {
        std::string_view datatype, p;
        if (entry["datatype"].get(datatype) == simdjson::SUCCESS && datatype == "image-downloads" &&
            entry["path"].get(p) == simdjson::SUCCESS) {
            if (!safe_relative_path(p)) {
                return bad_catalog("unsafe products path '" + std::string(p) + "'");
            }
            path = p;
            return {};
        }
    }
    return bad_catalog("index.json lists no image-downloads products");
}

Status parse_simplestreams(std::string_view products_json, std::vector<RemoteImage>& out) {
    simdjson::dom::parser parser;
    simdjson::dom::object doc, products;
    if (parser.parse(products_json.data(), products_json.size()).get(doc) != simdjson::SUCCESS) {
        return bad_catalog("the products file is not a JSON object");
    }
    if (doc["products"].get(products) != simdjson::SUCCESS) {
        return bad_catalog("the products file has no \"products\" object");
    }
    out.clear();
    for (auto [id, value] : products) {
        simdjson::dom::element product = value;  // a lambda below uses it (not a binding)
        simdjson::dom::object versions;
        if (product["versions"].get(versions) != simdjson::SUCCESS) {
            continue;
        }
        RemoteImage img;
        std::string_view s;
        auto text = [&](const char* field, std::string& to) {
            if (product[field].get(s) == simdjson::SUCCESS) {
                to = s;
            }
        };
        text("os", img.os);
        text("release", img.release);
        text("arch", img.arch);
        text("variant", img.variant);
        if (product["aliases"].get(s) == simdjson::SUCCESS) {
            for (auto& a : split(s, ',')) {
                if (!a.empty()) {
                    img.aliases.push_back(a);
                }
            }
        }
        if (img.aliases.empty()) {
            img.aliases.emplace_back(id);  // the product id names it then
        }
        // The newest version that has a root file system; version names sort by time.
        std::string_view best;
        for (auto [version, v] : versions) {
            simdjson::dom::object items;
            if (!(version > best) || v["items"].get(items) != simdjson::SUCCESS) {
                continue;
            }
            RemoteImage cand = img;
            for (auto [name, item] : items) {
                std::string_view ftype, path, sha;
                if (item["ftype"].get(ftype) != simdjson::SUCCESS ||
                    item["path"].get(path) != simdjson::SUCCESS) {
                    continue;
                }
                std::string format = ftype == "root.tar.xz" || ftype == "root.tar.gz" ? "tar"
                                     : ftype == "squashfs"                            ? "squashfs"
                                                                                      : "";
                // A tarball wins over a squashfs: it needs nothing but tar to unpack.
                if (format.empty() || (cand.format == "tar" && format == "squashfs")) {
                    continue;
                }
                if (!safe_relative_path(path)) {
                    return bad_catalog("unsafe item path '" + std::string(path) + "'");
                }
                if (item["sha256"].get(sha) != simdjson::SUCCESS || !is_hex64(sha)) {
                    return bad_catalog("item '" + std::string(path) + "' has no valid sha256");
                }
                uint64_t size = 0;
                if (item["size"].get(size) != simdjson::SUCCESS) {
                    size = 0;  // optional
                }
                cand.format = format;
                cand.path = path;
                cand.sha256 = sha;
                cand.size = size;
            }
            if (!cand.format.empty()) {
                best = version;
                img.version = version;
                img.path = cand.path;
                img.format = cand.format;
                img.sha256 = cand.sha256;
                img.size = cand.size;
            }
        }
        if (!img.path.empty()) {
            out.push_back(std::move(img));
        }
    }
    sort_by_alias(out);
    return {};
}

Status parse_lxc_index(std::string_view text, std::vector<RemoteImage>& out) {
    std::map<std::string, RemoteImage> newest;  // by full alias
    size_t lineno = 0;
    for (const auto& line : split(text, '\n')) {
        ++lineno;
        if (line.empty()) {
            continue;
        }
        auto f = split(line, ';');
        if (f.size() != 6 || f[0].empty() || f[1].empty() || f[2].empty() || f[3].empty() ||
            f[4].empty()) {
            return bad_catalog("line " + std::to_string(lineno) + " of the LXC index is not " +
                               "distro;release;arch;variant;version;path");
        }
        std::string dir = f[5];
        while (!dir.empty() && dir.front() == '/') {
            dir.erase(0, 1);
        }
        if (!dir.empty() && dir.back() != '/') {
            dir += '/';
        }
        std::string path = dir + "rootfs.tar.xz";
        if (!safe_relative_path(path)) {
            return bad_catalog("unsafe path on line " + std::to_string(lineno));
        }
        std::string full = f[0] + "/" + f[1] + "/" + f[2] + "/" + f[3];
        auto it = newest.find(full);
        if (it != newest.end() && it->second.version >= f[4]) {
            continue;
        }
        RemoteImage img;
        img.aliases = {full, f[0] + "/" + f[1] + "/" + f[3]};
        if (f[3] == "default") {
            img.aliases.push_back(f[0] + "/" + f[1]);
        }
        img.os = f[0];
        img.release = f[1];
        img.arch = f[2];
        img.variant = f[3];
        img.version = f[4];
        img.path = path;
        img.format = "tar";
        newest[full] = std::move(img);
    }
    out.clear();
    for (auto& [alias, img] : newest) {
        out.push_back(std::move(img));
    }
    sort_by_alias(out);
    return {};
}

std::string sha256sums_entry(std::string_view sums, std::string_view file) {
    for (const auto& line : split(sums, '\n')) {
        // "<hex>  name" (text mode) or "<hex> *name" (binary mode).
        if (line.size() < 66 || !is_hex64(std::string_view(line).substr(0, 64)) ||
            line[64] != ' ') {
            continue;
        }
        std::string_view name = std::string_view(line).substr(65);
        if (!name.empty() && (name.front() == ' ' || name.front() == '*')) {
            name.remove_prefix(1);
        }
        if (name == file) {
            return line.substr(0, 64);
        }
    }
    return {};
}

std::string host_arch() {
    utsname u{};
    uname(&u);
    std::string m = u.machine;
    static const std::map<std::string, std::string> names = {
        {"x86_64", "amd64"}, {"aarch64", "arm64"},   {"i686", "i386"},
        {"i586", "i386"},    {"armv7l", "armhf"},    {"ppc64le", "ppc64el"},
        {"s390x", "s390x"},  {"riscv64", "riscv64"}, {"loongarch64", "loong64"}};
    auto it = names.find(m);
    return it != names.end() ? it->second : m;
}

const RemoteImage* find_image(const std::vector<RemoteImage>& images, std::string_view alias,
                              std::string_view arch) {
    for (const auto& img : images) {
        if (img.arch == arch &&
            std::find(img.aliases.begin(), img.aliases.end(), alias) != img.aliases.end()) {
            return &img;
        }
    }
    return nullptr;
}

}  // namespace hangar::images
