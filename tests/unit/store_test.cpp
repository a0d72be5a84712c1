#include "core/credentials.hpp"
#include "store/db.hpp"
#include "util/sha256.hpp"

#include <unistd.h>

#include <filesystem>

#include <gtest/gtest.h>

using namespace hangar;

namespace {
struct TempDir {
    std::filesystem::path path;
    TempDir() {
        char t[] = "/tmp/hangar-store-XXXXXX";
        path = mkdtemp(t);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};
}  // namespace

TEST(Store, MachinesAndSequenceSurviveReopen) {
    TempDir dir;
    auto db_path = (dir.path / "hangar.db").string();
    {
        store::Db db;
        ASSERT_TRUE(db.open(db_path, nullptr).ok());
        EXPECT_EQ(db.schema_version(), 9);
        EXPECT_EQ(db.last_seq(), 0u);
        store::MachineRow row;
        row.spec.name = "web1";
        row.spec.uuid = "u-1";
        row.spec.cpus = 2;
        row.spec.memory_mib = 256;
        row.spec.boot.kernel = "/k";
        row.spec.boot.cmdline = "console=ttyS0 \"quoted\"";
        db.insert_machine(row);
        db.update_state("web1", MachineState::running, "qmp:RESUME", 4242);
        for (uint64_t s = 1; s <= 300; ++s) {
            db.append_event({s, "t", "machine.state", "web1", "{}"}, 100);
        }
        ASSERT_TRUE(db.flush());
    }
    store::Db db;
    ASSERT_TRUE(db.open(db_path, nullptr).ok());
    EXPECT_EQ(db.last_seq(), 300u);
    auto rows = db.load_machines();
    ASSERT_EQ(rows.size(), 1u);
    EXPECT_EQ(rows[0].spec.cpus, 2u);
    EXPECT_EQ(rows[0].spec.memory_mib, 256u);
    EXPECT_EQ(rows[0].spec.boot.cmdline, "console=ttyS0 \"quoted\"");
    EXPECT_EQ(rows[0].state, MachineState::running);
    EXPECT_EQ(rows[0].state_reason, "qmp:RESUME");
    EXPECT_EQ(rows[0].pid, 4242);
    // The ring was trimmed to the newest events, the sequence was not.
    auto evs = db.load_events_after(0, 1000);
    ASSERT_FALSE(evs.empty());
    EXPECT_LE(evs.size(), 300u);
    EXPECT_EQ(evs.back().seq, 300u);
    EXPECT_GE(evs.front().seq, 101u);
}

TEST(Store, UncommittedWritesAreLostNotHalfApplied) {
    TempDir dir;
    auto db_path = (dir.path / "hangar.db").string();
    {
        store::Db db;
        ASSERT_TRUE(db.open(db_path, nullptr).ok());
        db.append_event({1, "t", "x", "m", "{}"}, 100);
        ASSERT_TRUE(db.flush());
    }
    // A second connection sees only committed state.
    store::Db a;
    ASSERT_TRUE(a.open(db_path, nullptr).ok());
    a.append_event({2, "t", "x", "m", "{}"}, 100);
    store::Db b;
    ASSERT_TRUE(b.open(db_path, nullptr).ok());
    EXPECT_EQ(b.last_seq(), 1u);
}

TEST(Store, RefusesNewerSchema) {
    TempDir dir;
    auto db_path = (dir.path / "hangar.db").string();
    {
        store::Db db;
        ASSERT_TRUE(db.open(db_path, nullptr).ok());
    }
    ASSERT_EQ(system(("sqlite3 " + db_path + " 'PRAGMA user_version=99'").c_str()), 0);
    store::Db db;
    Status st = db.open(db_path, nullptr);
    EXPECT_FALSE(st.ok());
    EXPECT_NE(st.message().find("newer"), std::string::npos);
}

TEST(Credentials, TokensAndCertificatesStayApartAndSurviveReopen) {
    TempDir dir;
    auto db_path = (dir.path / "hangar.db").string();
    core::Caller root{0, true, true};
    std::string token, fp(64, 'a');
    store::CredentialRow row;
    {
        store::Db db;
        ASSERT_TRUE(db.open(db_path, nullptr).ok());
        core::Credentials creds(db);
        ASSERT_TRUE(creds.create_token(root, "t", token, row).ok());
        ASSERT_TRUE(creds.add_certificate(root, "c", "AA:" + fp.substr(2), row).ok());
        EXPECT_EQ(row.hash, fp);
        EXPECT_EQ(creds.add_certificate(root, "c2", fp, row).code(), Errc::conflict);
        EXPECT_EQ(creds.add_certificate(root, "t", std::string(64, 'b'), row).code(),
                  Errc::conflict);
        core::Caller remote{0, true, false};
        EXPECT_EQ(creds.add_certificate(remote, "r", std::string(64, 'c'), row).code(),
                  Errc::forbidden);
    }
    store::Db db;
    ASSERT_TRUE(db.open(db_path, nullptr).ok());
    core::Credentials creds(db);
    ASSERT_TRUE(creds.authenticate_token(token));
    EXPECT_STREQ(creds.authenticate_token(token)->method, "token");
    ASSERT_TRUE(creds.authenticate_certificate(fp));
    EXPECT_STREQ(creds.authenticate_certificate(fp)->method, "certificate");
    // A token's hash is not a certificate fingerprint, nor the reverse.
    EXPECT_FALSE(creds.authenticate_certificate(sha256_hex(token)));
    EXPECT_FALSE(creds.authenticate_token(fp));
    EXPECT_EQ(creds.list(root, core::kToken).size(), 1u);
    EXPECT_TRUE(creds.list(root, core::kToken)[0].hash.empty());
    EXPECT_EQ(creds.remove(root, core::kToken, "c").code(), Errc::not_found);
    EXPECT_TRUE(creds.remove(root, core::kCertificate, "c").ok());
    EXPECT_FALSE(creds.authenticate_certificate(fp));
}

TEST(Credentials, AdminIsTheCreatorsRightAtEachUse) {
    TempDir dir;
    store::Db db;
    ASSERT_TRUE(db.open((dir.path / "hangar.db").string(), nullptr).ok());
    // gid 0: root's group, which a uid without a passwd entry is not in.
    core::AdminGroup admins(0u, std::chrono::hours(1));
    core::Credentials creds(db, &admins);
    const uint32_t ghost = 3999999;             // no such user
    core::Caller was_admin{ghost, true, true};  // an admin when it made the token
    std::string token;
    store::CredentialRow row;
    ASSERT_TRUE(creds.create_token(was_admin, "t", token, row).ok());
    EXPECT_FALSE(row.admin);
    ASSERT_TRUE(creds.authenticate_token(token));
    EXPECT_FALSE(creds.authenticate_token(token)->admin);
    EXPECT_FALSE(creds.list(was_admin, core::kToken)[0].admin);
    core::Caller root{0, true, true};
    ASSERT_TRUE(creds.create_token(root, "r", token, row).ok());
    EXPECT_TRUE(creds.authenticate_token(token)->admin);  // uid 0: no lookup
    EXPECT_EQ(admins.lookups(), 1u);                      // the ghost's, then cached

    core::AdminGroup uncached(0u, std::chrono::seconds(0));
    EXPECT_FALSE(uncached.is_admin(ghost));
    EXPECT_FALSE(uncached.is_admin(ghost));
    EXPECT_EQ(uncached.lookups(), 2u);
    EXPECT_FALSE(core::AdminGroup(std::nullopt).is_admin(ghost));
    EXPECT_TRUE(core::AdminGroup(std::nullopt).is_admin(0));
    EXPECT_TRUE(core::uid_in_group(0, 0));
}

TEST(Credentials, FingerprintsAreNormalized) {
    std::string hex = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    EXPECT_EQ(core::normalize_fingerprint(hex), hex);
    std::string colons;
    for (size_t i = 0; i < hex.size(); i += 2) {
        colons += (i ? ":" : "") + hex.substr(i, 2);
    }
    for (auto& c : colons) {
        c = static_cast<char>(toupper(c));
    }
    EXPECT_EQ(core::normalize_fingerprint(colons), hex);
    EXPECT_FALSE(core::normalize_fingerprint(hex.substr(2)));
    EXPECT_FALSE(core::normalize_fingerprint(hex + "00"));
    EXPECT_FALSE(core::normalize_fingerprint("g" + hex.substr(1)));
    EXPECT_FALSE(core::normalize_fingerprint(""));
}
