// Image server catalogs: simplestreams index + products, the flat LXC index, SHA256SUMS, and
// the paths a catalog may name.
#include <gtest/gtest.h>

#include "core/images.hpp"
#include "images/catalog.hpp"

using namespace hangar;
using namespace hangar::images;

namespace {

const std::string kSha(64, 'a');
const std::string kSha2(64, 'b');

std::string products(const std::string& items_v1, const std::string& items_v2) {
    return R"({"format":"products:1.0","products":{
      "debian:12:amd64:default":{"aliases":"debian/12/default,debian/12","arch":"amd64",
        "os":"Debian","release":"12","variant":"default","versions":{
          "20241120_05:24":{"items":)" +
           items_v1 + R"(},
          "20241121_05:24":{"items":)" +
           items_v2 + R"(}}},
      "debian:12:arm64:default":{"aliases":"debian/12","arch":"arm64","os":"Debian",
        "release":"12","variant":"default","versions":{"1":{"items":{
          "root.tar.xz":{"ftype":"root.tar.xz","path":"a/root.tar.xz","sha256":")" +
           kSha + R"(","size":5}}}}},
      "vm-only:1:amd64:default":{"aliases":"vm/1","arch":"amd64","versions":{"1":{"items":{
          "disk":{"ftype":"disk-kvm.img","path":"d/disk.img","sha256":")" +
           kSha + R"("}}}}}}})";
}

}  // namespace

TEST(Catalog, IndexNamesTheProductsFile) {
    std::string path;
    ASSERT_TRUE(simplestreams_products_path(
        R"({"format":"index:1.0","index":{"images":{"datatype":"image-downloads",
            "path":"streams/v1/images.json","products":[]}}})",
        path));
    EXPECT_EQ(path, "streams/v1/images.json");
    EXPECT_FALSE(simplestreams_products_path(R"({"index":{"x":{"datatype":"content-download",
        "path":"p.json"}}})",
                                             path));
    EXPECT_FALSE(simplestreams_products_path(
        R"({"index":{"i":{"datatype":"image-downloads","path":"../../etc/passwd"}}})", path));
    EXPECT_FALSE(simplestreams_products_path("not json", path));
    EXPECT_FALSE(simplestreams_products_path("[]", path));
}

TEST(Catalog, SimplestreamsTakesTheNewestRootfsAndPrefersTarballs) {
    std::string v1 = R"({"root.tar.xz":{"ftype":"root.tar.xz","path":"old/root.tar.xz",
        "sha256":")" +
                     kSha + R"(","size":10}})";
    std::string v2 = R"({"sq":{"ftype":"squashfs","path":"new/root.squashfs","sha256":")" + kSha2 +
                     R"(","size":30},
        "meta":{"ftype":"lxd.tar.xz","path":"new/lxd.tar.xz","sha256":")" +
                     kSha + R"("},
        "tar":{"ftype":"root.tar.xz","path":"new/root.tar.xz","sha256":")" +
                     kSha2 + R"(","size":20}})";
    std::vector<RemoteImage> list;
    ASSERT_TRUE(parse_simplestreams(products(v1, v2), list));
    ASSERT_EQ(list.size(), 2u);  // the VM-only product has no root file system
    const RemoteImage* img = find_image(list, "debian/12", "amd64");
    ASSERT_NE(img, nullptr);
    EXPECT_EQ(img->version, "20241121_05:24");
    EXPECT_EQ(img->path, "new/root.tar.xz");
    EXPECT_EQ(img->format, "tar");
    EXPECT_EQ(img->sha256, kSha2);
    EXPECT_EQ(img->size, 20u);
    EXPECT_EQ(img->os, "Debian");
    EXPECT_EQ(find_image(list, "debian/12/default", "amd64"), img);
    ASSERT_NE(find_image(list, "debian/12", "arm64"), nullptr);
    EXPECT_EQ(find_image(list, "debian/12", "arm64")->path, "a/root.tar.xz");
    EXPECT_EQ(find_image(list, "debian/11", "amd64"), nullptr);
    EXPECT_EQ(find_image(list, "vm/1", "amd64"), nullptr);
}

TEST(Catalog, SimplestreamsFallsBackToSquashfs) {
    std::string v =
        R"({"sq":{"ftype":"squashfs","path":"n/root.squashfs","sha256":")" + kSha + R"("}})";
    std::vector<RemoteImage> list;
    ASSERT_TRUE(parse_simplestreams(products(v, v), list));
    EXPECT_EQ(find_image(list, "debian/12", "amd64")->format, "squashfs");
}

TEST(Catalog, SimplestreamsRejectsUnsafePathsAndMissingChecksums) {
    std::vector<RemoteImage> list;
    std::string bad_path =
        R"({"t":{"ftype":"root.tar.xz","path":"../x","sha256":")" + kSha + R"("}})";
    EXPECT_FALSE(parse_simplestreams(products(bad_path, bad_path), list));
    std::string no_sha = R"({"t":{"ftype":"root.tar.xz","path":"x/root.tar.xz"}})";
    EXPECT_FALSE(parse_simplestreams(products(no_sha, no_sha), list));
    std::string short_sha = R"({"t":{"ftype":"root.tar.xz","path":"x","sha256":"abc"}})";
    EXPECT_FALSE(parse_simplestreams(products(short_sha, short_sha), list));
    EXPECT_FALSE(parse_simplestreams(R"({"products":[]})", list));
    EXPECT_FALSE(parse_simplestreams("{", list));
}

TEST(Catalog, LxcIndexKeepsTheNewestVersionPerImage) {
    std::vector<RemoteImage> list;
    ASSERT_TRUE(parse_lxc_index(
        "debian;bookworm;amd64;default;20241120_05:24;/images/debian/bookworm/amd64/default/"
        "20241120_05:24/\n"
        "debian;bookworm;amd64;default;20241121_05:24;/images/debian/bookworm/amd64/default/"
        "20241121_05:24/\n"
        "debian;bookworm;arm64;default;20241121_05:24;/images/debian/bookworm/arm64/default/"
        "20241121_05:24/\n"
        "alpine;3.19;amd64;cloud;1;/images/alpine/3.19/amd64/cloud/1\n",
        list));
    ASSERT_EQ(list.size(), 3u);
    const RemoteImage* img = find_image(list, "debian/bookworm/amd64/default", "amd64");
    ASSERT_NE(img, nullptr);
    EXPECT_EQ(img->version, "20241121_05:24");
    EXPECT_EQ(img->path, "images/debian/bookworm/amd64/default/20241121_05:24/rootfs.tar.xz");
    EXPECT_EQ(img->sha256, "");
    EXPECT_EQ(find_image(list, "debian/bookworm", "amd64"), img);
    EXPECT_EQ(find_image(list, "debian/bookworm/amd64/default", "arm64"), nullptr);
    EXPECT_NE(find_image(list, "alpine/3.19/cloud", "amd64"), nullptr);
    EXPECT_EQ(find_image(list, "alpine/3.19", "amd64"), nullptr);  // not the default variant
    EXPECT_EQ(find_image(list, "alpine/3.19/cloud", "amd64")->path,
              "images/alpine/3.19/amd64/cloud/1/rootfs.tar.xz");

    EXPECT_FALSE(parse_lxc_index("debian;bookworm;amd64\n", list));
    EXPECT_FALSE(parse_lxc_index("a;b;c;d;e;/x/../../y/\n", list));
}

TEST(Catalog, Sha256Sums) {
    std::string sums = kSha + "  meta.tar.xz\n" + kSha2 + " *rootfs.tar.xz\nbroken line\n";
    EXPECT_EQ(sha256sums_entry(sums, "rootfs.tar.xz"), kSha2);
    EXPECT_EQ(sha256sums_entry(sums, "meta.tar.xz"), kSha);
    EXPECT_EQ(sha256sums_entry(sums, "rootfs.squashfs"), "");
}

TEST(Catalog, SafeRelativePaths) {
    EXPECT_TRUE(safe_relative_path("images/debian/12/amd64/default/20241121_05:24/root.tar.xz"));
    for (const char* bad : {"", "/etc/passwd", "a/../../b", "..", "./a", "a/./b", "https://evil/x",
                            "a b", "a\\b", "a?x=1", "a#f", "a\nb"}) {
        EXPECT_FALSE(safe_relative_path(bad)) << bad;
    }
}

TEST(Catalog, ServerUrls) {
    std::string base;
    ASSERT_TRUE(core::check_server_url("https://images.example.org", base));
    EXPECT_EQ(base, "https://images.example.org/");
    ASSERT_TRUE(core::check_server_url("http://127.0.0.1:8080/mirror/", base));
    EXPECT_EQ(base, "http://127.0.0.1:8080/mirror/");
    for (const char* bad : {"ftp://x/", "https://", "https://user:pw@host/", "https://h/?q=1",
                            "https://h/#f", "https://h/a b", "file:///etc", "https://:443/"}) {
        EXPECT_FALSE(core::check_server_url(bad, base)) << bad;
    }
}

TEST(Catalog, HostArch) {
    EXPECT_FALSE(host_arch().empty());
#if defined(__x86_64__)
    EXPECT_EQ(host_arch(), "amd64");
#endif
}
