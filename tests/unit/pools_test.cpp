#include "core/pools.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "core/machines.hpp"
#include "store/db.hpp"

using namespace hangar;
namespace fs = std::filesystem;

namespace {
struct Dirs {
    fs::path root;
    Dirs() {
        char t[] = "/tmp/hangar-pools-XXXXXX";
        root = mkdtemp(t);
        fs::create_directories(root / "state");
        fs::create_directories(root / "a" / "b");
    }
    ~Dirs() { fs::remove_all(root); }
};

const core::Caller kRoot{0, true, true};
const core::Caller kUser{1000, false, true};

Status decode(const std::string& body) {
    core::Pool p;
    return core::decode_pool(body, p);
}

Status make(core::Pools& pools, const std::string& name, const fs::path& path) {
    core::Pool p;
    p.name = name;
    p.path = path.string();
    const core::Pool* out = nullptr;
    return pools.create(kRoot, p, &out);
}
}  // namespace

TEST(Pools, DecodeIsStrict) {
    core::Pool p;
    ASSERT_TRUE(core::decode_pool(R"({"name":"fast","driver":"dir","path":"/srv/h/"})", p).ok());
    EXPECT_EQ(p.path, "/srv/h");
    EXPECT_EQ(decode(R"({"name":"fast"})").message(), "'name' and 'path' are required");
    EXPECT_EQ(decode(R"({"name":"f","path":"srv"})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"f","path":"/srv/../etc"})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"f","path":"/srv//x"})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"f","path":"/"})").message(),
              "a pool cannot be the root directory");
    EXPECT_EQ(decode(R"({"name":"f","driver":"lvm","path":"/srv"})").code(), Errc::bad_request);
    EXPECT_EQ(decode(R"({"name":"../x","path":"/srv"})").code(), Errc::invalid_name);
    EXPECT_EQ(decode(R"({"name":"f","path":"/srv","reflink":true})").message(),
              "unknown field 'reflink'");
    EXPECT_EQ(decode(R"({"name":"f","path":7})").code(), Errc::bad_request);
}

TEST(Pools, DefaultPoolOverlapsAndTheStore) {
    Dirs d;
    auto db = std::make_unique<store::Db>();
    ASSERT_TRUE(db->open((d.root / "state" / "hangar.db").string(), nullptr).ok());
    {
        core::Pools pools(*db, (d.root / "state").string());
        ASSERT_TRUE(pools.load().ok());
        const core::Pool* def = nullptr;
        ASSERT_TRUE(pools.get("default", &def).ok());
        EXPECT_EQ(def->path, (d.root / "state" / "pools" / "default").string());
        EXPECT_TRUE(fs::is_directory(def->path));
        core::PoolSpace s = core::Pools::space(*def);
        EXPECT_TRUE(s.status.ok());
        EXPECT_GT(s.capacity, 0u);
        EXPECT_LE(s.free, s.capacity);

        core::Pool p;
        p.name = "fast";
        p.path = (d.root / "a").string();
        const core::Pool* out = nullptr;
        EXPECT_EQ(pools.create(kUser, p, &out).code(), Errc::forbidden);
        ASSERT_TRUE(make(pools, "fast", d.root / "a").ok());
        EXPECT_EQ(make(pools, "fast", d.root / "a" / "b").code(), Errc::conflict);
        EXPECT_EQ(make(pools, "inner", d.root / "a" / "b").code(), Errc::conflict);
        EXPECT_EQ(make(pools, "outer", d.root).code(), Errc::invalid_spec);  // holds the state dir
        EXPECT_EQ(make(pools, "state", d.root / "state" / "pools").code(), Errc::invalid_spec);
        EXPECT_EQ(make(pools, "gone", d.root / "nope").code(), Errc::invalid_spec);
        std::ofstream(d.root / "file") << "x";
        EXPECT_EQ(make(pools, "file", d.root / "file").code(), Errc::invalid_spec);
        fs::create_directory_symlink(d.root / "a" / "b", d.root / "link");
        EXPECT_EQ(make(pools, "link", d.root / "link").code(), Errc::invalid_spec);
        EXPECT_EQ(pools.remove(kRoot, "default").code(), Errc::invalid_state);
        EXPECT_EQ(pools.remove(kUser, "fast").code(), Errc::forbidden);
        ASSERT_TRUE(db->flush());
    }
    core::Pools again(*db, (d.root / "state").string());
    ASSERT_TRUE(again.load().ok());
    ASSERT_EQ(again.list().size(), 2u);
    const core::Pool* fast = nullptr;
    ASSERT_TRUE(again.get("fast", &fast).ok());
    EXPECT_EQ(fast->path, (d.root / "a").string());
    EXPECT_FALSE(fast->created_at.empty());
    ASSERT_TRUE(again.remove(kRoot, "fast").ok());
    EXPECT_TRUE(fs::is_directory(d.root / "a"));  // forgotten, not removed
    EXPECT_EQ(again.get("fast", &fast).code(), Errc::not_found);
}
