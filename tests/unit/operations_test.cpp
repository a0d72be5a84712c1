// core::Operations over a real store: what survives a reopen (a restart of hangard), how the
// operations an earlier hangard left running end, and the bound on the finished ones kept.
#include "core/operations.hpp"
#include "support/machines.hpp"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>

#include <gtest/gtest.h>

#include "store/db.hpp"

using namespace hangar;

namespace {
// One "run" of hangard: the store, the bus, the machines and the operations of a state dir.
struct Hangard {
    boost::asio::io_context io;
    store::Db db;
    std::unique_ptr<core::EventBus> events;
    std::unique_ptr<test_support::TestMachines> runtimes;  // and the Machines over them
    core::Machines* machines = nullptr;
    std::unique_ptr<core::Operations> ops;

    explicit Hangard(const std::filesystem::path& dir) {
        std::filesystem::create_directories(dir / "machines");
        if (!db.open((dir / "hangar.db").string(), nullptr).ok()) {
            abort();
        }
        events = std::make_unique<core::EventBus>(db, 64);
        runtimes = std::make_unique<test_support::TestMachines>(io, db, *events, dir / "machines");
        machines = runtimes->machines.get();
        ops = std::make_unique<core::Operations>(io, *events, db, *machines);
    }
    ~Hangard() {
        ops.reset();
        runtimes.reset();
        events.reset();
    }
    std::string json(const std::string& id) {
        const core::Operation* op = nullptr;
        Status st = ops->get(core::Caller{0, true}, id, &op);
        return st ? ops->to_json(*op) : std::string(errc_name(st.code()));
    }
};

struct TempDir {
    std::filesystem::path path;
    TempDir() {
        char t[] = "/tmp/hangar-ops-XXXXXX";
        path = mkdtemp(t);
    }
    ~TempDir() { std::filesystem::remove_all(path); }
};
}  // namespace

TEST(Operations, FinishedOnesReadTheSameAfterARestart) {
    TempDir dir;
    std::string done, failed, before_done, before_failed;
    {
        Hangard run(dir.path);
        done = run.ops->new_id();
        run.ops->start_image(done, "img", 1000, "image.pull");
        run.ops->progress(done, "unpack", 10, 10);
        run.ops->finish_image(done, {});
        failed = run.ops->new_id();
        run.ops->start_image(failed, "img2", 1000, "image.import");
        run.ops->finish_image(failed, {Errc::invalid_spec, "the archive is empty"});
        EXPECT_TRUE(run.db.flush());
        before_done = run.json(done);
        before_failed = run.json(failed);
    }
    Hangard again(dir.path);
    EXPECT_EQ(again.json(done), before_done);
    EXPECT_EQ(again.json(failed), before_failed);
    EXPECT_NE(before_failed.find("\"code\":\"invalid_spec\""), std::string::npos);
    EXPECT_EQ(again.json("op-nothere"), "not_found");
    const core::Operation* op = nullptr;
    EXPECT_FALSE(again.ops->get(core::Caller{1001, false}, done, &op).ok());  // others'
    EXPECT_TRUE(again.ops->get(core::Caller{1000, false}, done, &op).ok());
}

TEST(Operations, OnesInFlightEndInterruptedAfterARestart) {
    TempDir dir;
    std::string pull, start, stop;
    {
        Hangard run(dir.path);
        MachineSpec spec;
        spec.name = "vm1";
        spec.boot.kernel = (dir.path / "vmlinuz").string();
        std::ofstream(spec.boot.kernel) << "kernel";
        const core::Machine* m = nullptr;
        ASSERT_TRUE(run.machines->create(core::Caller{0, true}, spec, &m).ok());
        pull = run.ops->new_id();
        run.ops->start_image(pull, "img", 0, "image.pull");
        // Machine operations as an earlier hangard left them: stored, running.
        for (auto [id, action] : {std::pair{&start, "start"}, std::pair{&stop, "stop"}}) {
            *id = run.ops->new_id();
            store::OperationRow row;
            row.id = *id;
            row.machine = "vm1";
            row.action = action;
            row.status = "running";
            row.created_at = "2026-12-01T00:00:00Z";
            run.db.put_operation(row);
        }
        EXPECT_TRUE(run.db.flush());
    }
    Hangard run(dir.path);
    // An image's ends at once; a machine's once adoption has settled.
    EXPECT_NE(run.json(pull).find("\"status\":\"failed\""), std::string::npos);
    EXPECT_NE(run.json(pull).find("\"code\":\"interrupted\""), std::string::npos);
    EXPECT_NE(run.json(start).find("\"status\":\"running\""), std::string::npos);
    bool adopted = false;
    run.machines->load_and_adopt([&](size_t, size_t) {
        run.ops->adoption_settled();
        adopted = true;
    });
    run.io.run();
    ASSERT_TRUE(adopted);
    for (const auto& id : {start, stop}) {
        std::string j = run.json(id);
        EXPECT_NE(j.find("\"status\":\"failed\""), std::string::npos) << j;
        EXPECT_NE(j.find("\"code\":\"interrupted\""), std::string::npos) << j;
        EXPECT_NE(j.find("\"state\":\"stopped\""), std::string::npos) << j;
    }
    EXPECT_EQ(run.ops->running(), 0u);
}

TEST(Operations, TheStoreKeepsAsManyFinishedOnesAsMemory) {
    TempDir dir;
    std::string first, last;
    {
        Hangard run(dir.path);
        for (size_t i = 0; i < core::kKeptOperations + 5; ++i) {
            std::string id = run.ops->new_id();
            (i == 0 ? first : last) = id;
            run.ops->start_image(id, "img", 0, "image.pull");
            run.ops->finish_image(id, {});
        }
        EXPECT_TRUE(run.db.flush());
        EXPECT_EQ(run.json(first), "not_found");
    }
    Hangard run(dir.path);
    EXPECT_EQ(run.db.load_operations().size(), core::kKeptOperations);
    EXPECT_EQ(run.json(first), "not_found");
    EXPECT_NE(run.json(last).find("succeeded"), std::string::npos);
    EXPECT_EQ(run.ops->list().size(), core::kKeptOperations);
    EXPECT_EQ(run.ops->list().back()->id, last);
}
