// core::Machines' state machine against a fake runtime: every transition and exit reason of
// both machine types, the operation lock, deletes, restarts, adoption and machined's answer.
// No QEMU, no D-Bus: the fake records what the core asks and reports what a test tells it to.
#include <unistd.h>

#include <filesystem>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <boost/asio/io_context.hpp>
#include <boost/asio/post.hpp>

#include "core/event_bus.hpp"
#include "core/machines.hpp"
#include "drivers/qemu/runtime.hpp"
#include "store/db.hpp"

using namespace hangar;
using core::Action;
using core::AdoptFact;
using core::ExitFact;
using core::InstanceRef;
using core::Machine;

namespace {

class FakeRuntime final : public core::Runtime {
  public:
    FakeRuntime(boost::asio::io_context& io, core::MachineType t) : io_(io), type_(t) {}

    core::MachineType type() const override { return type_; }
    Status validate(MachineSpec&, const core::Privilege&) const override { return {}; }
    Status admit(const MachineSpec&) const override { return {}; }
    Status supports(core::Capability c, const std::string&) const override {
        return unsupported.count(c) ? Status{Errc::invalid_spec, "not for this type"} : Status{};
    }
    Status start(const MachineSpec&, const InstanceRef& ref, const core::Privilege&,
                 Done failed) override {
        calls.push_back("start");
        if (!refuse_start.ok()) {
            return refuse_start;
        }
        last = ref;
        fail_start = std::move(failed);
        return {};
    }
    void stop(const InstanceRef& ref, std::chrono::seconds timeout,
              const std::string& reason) override {
        calls.push_back("stop " + reason + " " + std::to_string(timeout.count()));
        last = ref;
    }
    void kill(const InstanceRef&, Done done) override {
        calls.push_back("kill");
        later(std::move(done), kill_result);
    }
    void pause(const InstanceRef&, Done done) override {
        calls.push_back("pause");
        later(std::move(done), command_result);
    }
    void resume(const InstanceRef&, Done done) override {
        calls.push_back("resume");
        later(std::move(done), command_result);
    }
    void reset(const InstanceRef&, Done done) override {
        calls.push_back("reset");
        later(std::move(done), command_result);
    }
    void adopt(const MachineSpec& spec, MachineState, const InstanceRef& ref,
               std::function<void(const Status&, const core::Adoption&)> done) override {
        last = ref;
        boost::asio::post(io_, [done = std::move(done), st = adopt_status,
                                a = adoption[spec.name]] { done(st, a); });
    }
    void exec(const MachineSpec&, const InstanceRef&, bool running, core::ExecRequest,
              ExecDone done) override {
        calls.push_back(running ? "exec running" : "exec stopped");
        exec_done = std::move(done);
    }
    void forget(const std::string& machine) override { calls.push_back("forget " + machine); }
    void detach_all() override { calls.push_back("detach"); }

    core::RuntimeSink& sink() { return *sink_; }

    std::vector<std::string> calls;
    InstanceRef last;
    Done fail_start;
    ExecDone exec_done;
    Status refuse_start, kill_result, command_result, adopt_status;
    std::map<std::string, core::Adoption> adoption;
    std::set<core::Capability> unsupported;

  private:
    void later(Done done, Status st) {
        boost::asio::post(io_, [done = std::move(done), st] { done(st); });
    }
    boost::asio::io_context& io_;
    core::MachineType type_;
};

// What one action's `done` was called with.
struct Outcome {
    std::optional<Status> status;
    auto callback() {
        return [this](const Status& st, const Machine*) { status = st; };
    }
    bool done() const { return status.has_value(); }
    bool ok() const { return status && status->ok(); }
};

class StateMachine : public ::testing::Test {
  protected:
    void SetUp() override {
        dir_ = std::filesystem::temp_directory_path() /
               ("hangar-sm-" + std::to_string(getpid()) + "-" +
                ::testing::UnitTest::GetInstance()->current_test_info()->name());
        std::filesystem::remove_all(dir_);
        std::filesystem::create_directories(dir_ / "machines");
        ASSERT_TRUE(db_.open((dir_ / "hangar.db").string(), nullptr).ok());
        events_ = std::make_unique<core::EventBus>(db_, 256);
        events_->subscribe([this](const core::Event& e) {
            if (e.type == "machine.state") {
                transitions.push_back(e.machine + ": " + *e.frame);
            }
        });
        make_machines();
    }
    void TearDown() override {
        machines.reset();
        events_.reset();
        // A delete's tree is removed by a child process that may still be at it.
        std::error_code ec;
        for (int i = 0; i < 100 && std::filesystem::exists(dir_, ec); ++i) {
            std::filesystem::remove_all(dir_, ec);
            usleep(10000);
        }
    }
    void make_machines() {
        machines.reset();
        core::MachinesConfig cfg;
        cfg.machines_dir = dir_ / "machines";
        machines = std::make_unique<core::Machines>(io, db_, *events_, cfg,
                                                    std::vector<core::Runtime*>{&vm, &ct});
    }
    void run() {
        io.restart();
        io.poll();
    }
    void create(const std::string& name, const char* type = "vm") {
        MachineSpec spec;
        spec.name = name;
        spec.type = type;
        const Machine* out = nullptr;
        ASSERT_TRUE(machines->create(root, spec, &out).ok());
    }
    const Machine& m(const std::string& name) { return *machines->all().at(name); }
    Status act(const std::string& name, Action a, Outcome& o, core::ActionArgs args = {}) {
        return machines->act(root, name, a, args, o.callback());
    }
    FakeRuntime& rt_of(const std::string& name) {
        return m(name).type == core::MachineType::vm ? vm : ct;
    }
    // Started and running, with pid 100.
    void running(const std::string& name, const char* type = "vm") {
        create(name, type);
        Outcome o;
        ASSERT_TRUE(act(name, Action::start, o).ok());
        FakeRuntime& rt = rt_of(name);
        rt.sink().on_pid(rt.last, 100);
        rt.sink().on_running(rt.last, "qmp:RESUME");
        run();
        ASSERT_TRUE(o.ok());
        ASSERT_EQ(m(name).state, MachineState::running);
    }
    void expect(const std::string& name, MachineState st, const std::string& reason) {
        EXPECT_EQ(to_string(m(name).state), to_string(st)) << m(name).state_reason;
        EXPECT_EQ(m(name).state_reason, reason);
    }
    ExitFact exit_fact(std::string how, bool clean, std::string reason = "") {
        ExitFact f;
        f.how = std::move(how);
        f.clean = clean;
        f.reason = std::move(reason);
        return f;
    }

    boost::asio::io_context io;
    FakeRuntime vm{io, core::MachineType::vm};
    FakeRuntime ct{io, core::MachineType::container};
    std::unique_ptr<core::Machines> machines;
    std::vector<std::string> transitions;
    core::Caller root{0, true, true, "unix"};

  private:
    std::filesystem::path dir_;
    store::Db db_;
    std::unique_ptr<core::EventBus> events_;
};

TEST_F(StateMachine, StartIsStartingUntilTheRuntimeReportsRunning) {
    create("a");
    Outcome o;
    ASSERT_TRUE(act("a", Action::start, o).ok());
    expect("a", MachineState::starting, "api:start");
    EXPECT_EQ(m("a").op, core::Op::start);
    EXPECT_TRUE(m("a").live);
    run();
    EXPECT_FALSE(o.done());
    vm.sink().on_pid(vm.last, 4242);
    EXPECT_EQ(m("a").pid, 4242);
    vm.sink().on_running(vm.last, "qmp:RESUME");
    expect("a", MachineState::running, "qmp:RESUME");
    EXPECT_TRUE(o.ok());
    EXPECT_EQ(m("a").op, core::Op::none);
}

TEST_F(StateMachine, AStartTheRuntimeRefusesChangesNothingAndAnswersLater) {
    create("a");
    vm.refuse_start = {Errc::invalid_spec, "boot.disk gone"};
    Outcome o;
    ASSERT_TRUE(act("a", Action::start, o).ok());
    EXPECT_FALSE(o.done());  // never from inside act
    run();
    ASSERT_TRUE(o.done());
    EXPECT_EQ(o.status->code(), Errc::invalid_spec);
    expect("a", MachineState::stopped, "api:create");
    EXPECT_TRUE(transitions.empty());
    EXPECT_FALSE(m("a").live);
}

TEST_F(StateMachine, AFailedStartIsStoppedWithItsReason) {
    create("a");
    Outcome o;
    ASSERT_TRUE(act("a", Action::start, o).ok());
    vm.fail_start({Errc::internal, "qemu: no such file"});
    expect("a", MachineState::stopped, "api:start failed: qemu: no such file");
    ASSERT_TRUE(o.done());
    EXPECT_EQ(o.status->code(), Errc::internal);
    EXPECT_FALSE(m("a").live);
}

TEST_F(StateMachine, StartNeedsAStoppedMachineAndAFreeLock) {
    running("a");
    Outcome o;
    EXPECT_EQ(act("a", Action::start, o).code(), Errc::invalid_state);
    Outcome stop;
    ASSERT_TRUE(act("a", Action::stop, stop).ok());
    for (Action a : {Action::start, Action::stop, Action::pause, Action::restart}) {
        Outcome x;
        EXPECT_EQ(act("a", a, x).code(), Errc::busy);
    }
    bool deleted = false;
    Status del;
    machines->remove(root, "a", false, [&](const Status& st) { deleted = true, del = st; });
    run();
    EXPECT_TRUE(deleted);
    EXPECT_EQ(del.code(), Errc::invalid_state);
}

TEST_F(StateMachine, PauseAndResumeCompleteWithTheRuntimesReports) {
    running("a");
    Outcome p;
    ASSERT_TRUE(act("a", Action::pause, p).ok());
    run();
    EXPECT_FALSE(p.done());
    vm.sink().on_paused(vm.last, "qmp:STOP");
    expect("a", MachineState::paused, "qmp:STOP");
    EXPECT_TRUE(p.ok());
    Outcome again;
    EXPECT_EQ(act("a", Action::pause, again).code(), Errc::invalid_state);
    Outcome r;
    ASSERT_TRUE(act("a", Action::resume, r).ok());
    vm.sink().on_running(vm.last, "qmp:RESUME");
    expect("a", MachineState::running, "qmp:RESUME");
    EXPECT_TRUE(r.ok());
}

TEST_F(StateMachine, APauseTheRuntimeCannotDoFailsTheOperation) {
    running("a");
    vm.command_result = {Errc::timeout, "QMP did not answer"};
    Outcome p;
    ASSERT_TRUE(act("a", Action::pause, p).ok());
    run();
    ASSERT_TRUE(p.done());
    EXPECT_EQ(p.status->code(), Errc::timeout);
    expect("a", MachineState::running, "qmp:RESUME");
    EXPECT_EQ(m("a").op, core::Op::none);
}

TEST_F(StateMachine, WhatAContainerCannotDoIsRefusedBeforeAnythingHappens) {
    ct.unsupported = {core::Capability::pause, core::Capability::reset};
    running("c", "container");
    Outcome o;
    EXPECT_EQ(act("c", Action::pause, o).code(), Errc::invalid_spec);
    core::ActionArgs reset;
    reset.reset = true;
    EXPECT_EQ(act("c", Action::restart, o, reset).code(), Errc::invalid_spec);
    EXPECT_EQ(m("c").state, MachineState::running);
    EXPECT_EQ(ct.calls, std::vector<std::string>{"start"});
}

TEST_F(StateMachine, GracefulStopEndsWithTheReasonTheRuntimeGives) {
    running("a");
    Outcome o;
    core::ActionArgs args;
    args.stop_timeout = std::chrono::seconds(7);
    ASSERT_TRUE(act("a", Action::stop, o, args).ok());
    expect("a", MachineState::stopping, "api:stop");
    EXPECT_EQ(vm.calls.back(), "stop api:stop 7");
    vm.sink().on_stopping(vm.last, {"qmp:SHUTDOWN guest=true reason=guest-shutdown", false});
    expect("a", MachineState::stopping, "api:stop");  // already stopping
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit status=0", true,
                                           "qmp:SHUTDOWN guest=true reason=guest-shutdown"));
    expect("a", MachineState::stopped, "qmp:SHUTDOWN guest=true reason=guest-shutdown");
    EXPECT_TRUE(o.ok());
    EXPECT_EQ(m("a").pid, 0);
    EXPECT_FALSE(m("a").live);
}

TEST_F(StateMachine, AForcedStopSaysSo) {
    running("a");
    Outcome o;
    ASSERT_TRUE(act("a", Action::stop, o).ok());
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit status=0", true,
                                           "api:stop: guest did not power off within 1 s"));
    expect("a", MachineState::stopped, "api:stop: guest did not power off within 1 s");
    EXPECT_TRUE(o.ok());
}

TEST_F(StateMachine, KillWhileRunningIsStoppedByApiKill) {
    running("a");
    Outcome o;
    ASSERT_TRUE(act("a", Action::kill, o).ok());
    EXPECT_EQ(vm.calls.back(), "kill");
    run();
    EXPECT_FALSE(o.done());  // the exit completes it
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false));
    expect("a", MachineState::stopped, "api:kill");
    EXPECT_TRUE(o.ok());
}

TEST_F(StateMachine, KillPreemptsAStartAndAHungStop) {
    create("a");
    Outcome start, kill1;
    ASSERT_TRUE(act("a", Action::start, start).ok());
    ASSERT_TRUE(act("a", Action::kill, kill1).ok());
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false));
    expect("a", MachineState::stopped, "api:kill");
    EXPECT_TRUE(kill1.ok());
    ASSERT_TRUE(start.done());
    EXPECT_EQ(start.status->code(), Errc::conflict);

    running("b");
    Outcome stop, kill2;
    ASSERT_TRUE(act("b", Action::stop, stop).ok());
    ASSERT_TRUE(act("b", Action::kill, kill2).ok());
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false,
                                           "qmp:SHUTDOWN guest=false reason=host-signal"));
    expect("b", MachineState::stopped, "api:kill");  // hangard's reason wins
    EXPECT_TRUE(stop.ok());
    EXPECT_TRUE(kill2.ok());
}

TEST_F(StateMachine, KillWhileLaunchFailsIsTheKillsEnd) {
    create("a");
    Outcome start, kill;
    ASSERT_TRUE(act("a", Action::start, start).ok());
    ASSERT_TRUE(act("a", Action::kill, kill).ok());
    vm.fail_start({Errc::internal, "QMP handshake failed"});
    expect("a", MachineState::stopped, "api:kill");
    EXPECT_TRUE(kill.ok());
    EXPECT_TRUE(start.done() && !start.ok());
}

TEST_F(StateMachine, KillNeedsSomethingRunningAndReportsWhatCannotBeKilled) {
    create("a");
    Outcome o;
    EXPECT_EQ(act("a", Action::kill, o).code(), Errc::invalid_state);
    running("b");
    vm.kill_result = {Errc::unavailable, "KillUnit: access denied"};
    ASSERT_TRUE(act("b", Action::kill, o).ok());
    run();
    ASSERT_TRUE(o.done());
    EXPECT_EQ(o.status->code(), Errc::unavailable);
    expect("b", MachineState::running, "qmp:RESUME");
    EXPECT_TRUE(m("b").exit_reason.empty());
}

TEST_F(StateMachine, AnUnaskedEndIsStoppedWhenCleanElseCrashed) {
    running("a");
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit status=0", true));
    expect("a", MachineState::stopped, "pidfd:exit status=0");
    running("b");
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false));
    expect("b", MachineState::crashed, "pidfd:exit signal=9 (KILL)");
    // A crashed machine starts again.
    Outcome o;
    EXPECT_TRUE(act("b", Action::start, o).ok());
}

TEST_F(StateMachine, AGuestPanicIsACrash) {
    running("a");
    ExitFact f = exit_fact("pidfd:exit status=0", true, "qmp:GUEST_PANICKED");
    f.crash = true;
    vm.sink().on_exited(vm.last, f);
    expect("a", MachineState::crashed, "qmp:GUEST_PANICKED pidfd:exit status=0");
}

TEST_F(StateMachine, AGuestPowerOffIsStoppingThenStopped) {
    running("a");
    vm.sink().on_stopping(vm.last, {"qmp:SHUTDOWN guest=true reason=guest-shutdown", false});
    expect("a", MachineState::stopping, "qmp:SHUTDOWN guest=true reason=guest-shutdown");
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit status=0", true,
                                           "qmp:SHUTDOWN guest=true reason=guest-shutdown"));
    expect("a", MachineState::stopped, "qmp:SHUTDOWN guest=true reason=guest-shutdown");
}

TEST_F(StateMachine, RestartWithResetStaysRunning) {
    running("a");
    Outcome o;
    core::ActionArgs args;
    args.reset = true;
    ASSERT_TRUE(act("a", Action::restart, o, args).ok());
    run();
    EXPECT_EQ(vm.calls.back(), "reset");
    EXPECT_TRUE(o.ok());
    expect("a", MachineState::running, "qmp:RESUME");
}

TEST_F(StateMachine, GracefulRestartStopsAndStartsANewInstance) {
    running("a");
    uint64_t first = vm.last.generation;
    Outcome o;
    ASSERT_TRUE(act("a", Action::restart, o).ok());
    expect("a", MachineState::stopping, "api:restart");
    EXPECT_EQ(vm.calls.back().rfind("stop api:restart", 0), 0u);
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit status=0", true,
                                           "qmp:SHUTDOWN guest=true reason=guest-shutdown"));
    expect("a", MachineState::starting, "api:restart");
    EXPECT_NE(vm.last.generation, first);
    EXPECT_FALSE(o.done());
    vm.sink().on_running(vm.last, "qmp:RESUME");
    EXPECT_TRUE(o.ok());
    expect("a", MachineState::running, "qmp:RESUME");
}

TEST_F(StateMachine, AMachineThatRebootsItselfIsStartedAgain) {
    running("c", "container");
    ExitFact f = exit_fact("systemd:result=exit-code status=133", false, core::kContainerReboot);
    f.reboot = true;
    ct.sink().on_exited(ct.last, f);
    expect("c", MachineState::starting, core::kContainerReboot);
    ct.sink().on_running(ct.last, "systemd:active");
    expect("c", MachineState::running, "systemd:active");
}

TEST_F(StateMachine, ARebootAfterAKillIsNotStartedAgain) {
    running("c", "container");
    Outcome o;
    ASSERT_TRUE(act("c", Action::kill, o).ok());
    ExitFact f = exit_fact("systemd:result=exit-code status=133", false, core::kContainerReboot);
    f.reboot = true;
    ct.sink().on_exited(ct.last, f);
    expect("c", MachineState::stopped, "api:kill");
}

TEST_F(StateMachine, DeleteRemovesAStoppedMachineAndForcesARunningOne) {
    create("a");
    bool done = false;
    machines->remove(root, "a", false, [&](const Status& st) { done = st.ok(); });
    EXPECT_EQ(machines->all().count("a"), 0u);
    run();
    EXPECT_TRUE(done);
    EXPECT_EQ(vm.calls.back(), "forget a");

    running("b");
    Status refused;
    machines->remove(root, "b", false, [&](const Status& st) { refused = st; });
    run();
    EXPECT_EQ(refused.code(), Errc::invalid_state);
    Outcome stop;
    ASSERT_TRUE(act("b", Action::stop, stop).ok());
    bool deleted = false;
    machines->remove(root, "b", true, [&](const Status& st) { deleted = st.ok(); });
    EXPECT_EQ(vm.calls.back(), "kill");
    Status twice;
    machines->remove(root, "b", true, [&](const Status& st) { twice = st; });
    run();
    EXPECT_EQ(twice.code(), Errc::busy);
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false));
    EXPECT_TRUE(deleted);
    EXPECT_TRUE(stop.ok());
    EXPECT_EQ(machines->all().count("b"), 0u);
}

TEST_F(StateMachine, AStartWaitingWhenItsMachineIsDeletedIsTold) {
    create("a");
    Outcome start;
    ASSERT_TRUE(act("a", Action::start, start).ok());
    bool deleted = false;
    machines->remove(root, "a", true, [&](const Status& st) { deleted = st.ok(); });
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false));
    EXPECT_TRUE(deleted);
    ASSERT_TRUE(start.done());
    EXPECT_EQ(start.status->message(), "the machine was deleted");
}

TEST_F(StateMachine, ReportsAboutAnEndedInstanceAreDropped) {
    running("a");
    InstanceRef old = vm.last;
    vm.sink().on_exited(old, exit_fact("pidfd:exit status=0", true));
    Outcome o;
    ASSERT_TRUE(act("a", Action::start, o).ok());
    vm.sink().on_running(old, "qmp:RESUME");
    vm.sink().on_exited(old, exit_fact("pidfd:exit signal=9 (KILL)", false));
    expect("a", MachineState::starting, "api:start");
    EXPECT_FALSE(o.done());
}

TEST_F(StateMachine, SpecChangesWaitUntilNothingRuns) {
    running("a");
    MachineSpec spec = m("a").spec;
    spec.cpus = 2;
    const Machine* out = nullptr;
    EXPECT_EQ(machines->update(root, "a", spec, {"cpus"}, &out).code(), Errc::invalid_state);
    spec.cpus = 1;
    spec.description = "web";
    EXPECT_TRUE(machines->update(root, "a", spec, {"description"}, &out).ok());
}

TEST_F(StateMachine, OthersMachinesDoNotExistForAUser) {
    create("a");
    core::Caller user{1000, false, true, "unix"};
    Outcome o;
    EXPECT_EQ(machines->act(user, "a", Action::start, {}, o.callback()).code(), Errc::not_found);
    EXPECT_TRUE(machines->list(user, std::nullopt, "").empty());
}

// ---- machined -------------------------------------------------------------------------

TEST_F(StateMachine, AnEndFromOutsideWaitsForWhoDidIt) {
    std::function<void(std::string)> answer;
    machines->set_exit_explainer(
        [&](const Machine&, std::function<void(std::string)> a) { answer = std::move(a); });
    for (const char* type : {"vm", "container"}) {
        std::string name = std::string("t-") + type;
        running(name, type);
        FakeRuntime& rt = rt_of(name);
        rt.sink().on_stopping(rt.last, {"qmp:SHUTDOWN guest=false reason=host-signal", true});
        ASSERT_TRUE(answer);
        expect(name, MachineState::stopping, "qmp:SHUTDOWN guest=false reason=host-signal");
        rt.sink().on_exited(rt.last, exit_fact("pidfd:exit status=0", true,
                                               "qmp:SHUTDOWN guest=false reason=host-signal"));
        EXPECT_EQ(m(name).state, MachineState::stopping);  // the exit waits for the answer
        std::exchange(answer, nullptr)(core::kMachinedTerminated);
        expect(name, MachineState::stopped, core::kMachinedTerminated);
    }
}

TEST_F(StateMachine, AnEndFromOutsideNobodyClaimsKeepsTheRuntimesReason) {
    machines->set_exit_explainer(
        [&](const Machine&, std::function<void(std::string)> a) { a(""); });
    running("a");
    vm.sink().on_stopping(vm.last, {"qmp:SHUTDOWN guest=false reason=host-signal", true});
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit status=0", true,
                                           "qmp:SHUTDOWN guest=false reason=host-signal"));
    expect("a", MachineState::stopped, "qmp:SHUTDOWN guest=false reason=host-signal");
}

TEST_F(StateMachine, AStopHangardAskedForIsNotExplained) {
    int asked = 0;
    machines->set_exit_explainer([&](const Machine&, std::function<void(std::string)> a) {
        ++asked;
        a(core::kMachinedTerminated);
    });
    running("a");
    Outcome o;
    ASSERT_TRUE(act("a", Action::kill, o).ok());
    vm.sink().on_stopping(vm.last, {"qmp:SHUTDOWN guest=false reason=host-signal", true});
    vm.sink().on_exited(vm.last, exit_fact("pidfd:exit signal=9 (KILL)", false));
    EXPECT_EQ(asked, 0);
    expect("a", MachineState::stopped, "api:kill");
}

// ---- adoption -------------------------------------------------------------------------

class Adoption : public StateMachine {
  protected:
    // Stores `name` in state `stored`, then loads it into a new Machines whose runtime
    // finds `found`.
    const Machine& adopt(const std::string& name, MachineState stored, core::Adoption found,
                         Status st = {}) {
        create(name);
        if (stored != MachineState::stopped) {
            Outcome o;
            EXPECT_TRUE(act(name, Action::start, o).ok());
            vm.sink().on_pid(vm.last, 77);
            if (stored != MachineState::starting) {
                vm.sink().on_running(vm.last, "qmp:RESUME");
            }
            if (stored == MachineState::paused) {
                vm.sink().on_paused(vm.last, "qmp:STOP");
            } else if (stored == MachineState::stopping) {
                vm.sink().on_stopping(vm.last, {"qmp:SHUTDOWN guest=true", false});
            }
            run();
        }
        EXPECT_EQ(m(name).state, stored);
        vm.adoption[name] = found;
        vm.adopt_status = st;
        make_machines();
        settled = false;
        machines->load_and_adopt([this](size_t a, size_t) { settled = true, adopted = a; });
        run();
        EXPECT_TRUE(settled);
        return m(name);
    }
    bool settled = false;
    size_t adopted = 0;
};

TEST_F(Adoption, EachFactBecomesAState) {
    struct Case {
        MachineState stored;
        core::Adoption found;
        MachineState state;
        std::string reason;
        bool live;
    } cases[] = {
        {MachineState::running,
         {AdoptFact::running, "adopt:qmp status=running", 9},
         MachineState::running,
         "qmp:RESUME",
         true},
        {MachineState::running,
         {AdoptFact::paused, "adopt:qmp status=paused", 9},
         MachineState::paused,
         "adopt:qmp status=paused",
         true},
        {MachineState::starting,
         {AdoptFact::starting, "adopt:qmp status=prelaunch", 9},
         MachineState::starting,
         "api:start",
         true},
        {MachineState::running,
         {AdoptFact::stopping, "qmp:SHUTDOWN guest=true (while hangard was down)", 9},
         MachineState::stopping,
         "qmp:SHUTDOWN guest=true (while hangard was down)",
         true},
        {MachineState::running,
         {AdoptFact::failing, "adopt:qmp status=guest-panicked", 9},
         MachineState::running,
         "qmp:RESUME",
         true},
        {MachineState::running,
         {AdoptFact::gone, "QEMU pid 9 is gone", 0},
         MachineState::crashed,
         "adopt: QEMU pid 9 is gone (exited while hangard was down)",
         false},
        {MachineState::stopping,
         {AdoptFact::gone, "QEMU pid 9 is gone", 0},
         MachineState::stopped,
         "adopt: QEMU pid 9 is gone",
         false},
        {MachineState::stopped,
         {AdoptFact::none, "", 0},
         MachineState::stopped,
         "api:create",
         false},
    };
    int i = 0;
    for (const auto& c : cases) {
        std::string name = "m" + std::to_string(i++);
        const Machine& got = adopt(name, c.stored, c.found);
        EXPECT_EQ(to_string(got.state), to_string(c.state)) << name;
        EXPECT_EQ(got.state_reason, c.reason) << name;
        EXPECT_EQ(got.live, c.live) << name;
        EXPECT_EQ(got.pid, c.live ? 9 : 0) << name;
        EXPECT_EQ(got.op, core::Op::none) << name;
    }
}

TEST_F(Adoption, AFailingGuestIsCrashedWhenItsQemuEnds) {
    const Machine& got = adopt("a", MachineState::running,
                               {AdoptFact::failing, "adopt:qmp status=guest-panicked", 9});
    EXPECT_EQ(adopted, 1u);
    ExitFact f = exit_fact("pidfd:exit status=0", false, "adopt:qmp status=guest-panicked");
    f.crash = true;
    vm.sink().on_exited(vm.last, f);
    EXPECT_EQ(got.state, MachineState::crashed);
    EXPECT_EQ(got.state_reason, "adopt:qmp status=guest-panicked pidfd:exit status=0");
}

TEST_F(Adoption, UnreachableIsUnresponsiveAndAnErrorIsGone) {
    const Machine& a = adopt("a", MachineState::running,
                             {AdoptFact::unresponsive, "QMP unreachable after adoption", 9});
    EXPECT_TRUE(a.unresponsive);
    EXPECT_EQ(a.state, MachineState::running);
    const Machine& b = adopt("b", MachineState::running, {}, {Errc::not_found, "QEMU is gone"});
    EXPECT_EQ(b.state, MachineState::crashed);
    EXPECT_EQ(b.state_reason, "adopt: QEMU is gone (exited while hangard was down)");
}

TEST_F(Adoption, LaterKeepsTheStoredStateUntilTheRuntimeReports) {
    const Machine& a = adopt("a", MachineState::running,
                             {AdoptFact::later, "unknown: hangard has no systemd connection", 0});
    EXPECT_TRUE(a.live);
    EXPECT_TRUE(a.unresponsive);
    EXPECT_EQ(a.state_reason, "qmp:RESUME (unknown: hangard has no systemd connection)");
    EXPECT_EQ(adopted, 0u);
    const Machine& b = adopt("b", MachineState::stopped, {AdoptFact::later, "", 0});
    EXPECT_FALSE(b.live);
    vm.sink().on_running(vm.last, "adopt:systemd active");  // found running after all
    EXPECT_EQ(b.state, MachineState::running);
    EXPECT_TRUE(b.live);
}

TEST(QemuAdoption, EachQmpStatusHasAPlan) {
    using qemu::plan_adoption;
    auto p = plan_adoption("running", MachineState::running);
    EXPECT_EQ(p.fact, AdoptFact::running);
    EXPECT_EQ(p.reason, "adopt:qmp status=running");
    p = plan_adoption("paused", MachineState::running);
    EXPECT_EQ(p.fact, AdoptFact::paused);
    p = plan_adoption("paused", MachineState::starting);  // an interrupted start
    EXPECT_EQ(p.fact, AdoptFact::starting);
    EXPECT_TRUE(p.cont);
    p = plan_adoption("prelaunch", MachineState::stopped);
    EXPECT_EQ(p.fact, AdoptFact::starting);
    EXPECT_TRUE(p.cont);
    p = plan_adoption("shutdown", MachineState::running);
    EXPECT_EQ(p.fact, AdoptFact::stopping);
    EXPECT_TRUE(p.quit);
    EXPECT_FALSE(p.crash);
    for (const char* s : {"guest-panicked", "internal-error"}) {
        p = plan_adoption(s, MachineState::running);
        EXPECT_EQ(p.fact, AdoptFact::failing);
        EXPECT_TRUE(p.quit && p.crash);
        EXPECT_EQ(p.reason, std::string("adopt:qmp status=") + s);
    }
    p = plan_adoption("", MachineState::running);
    EXPECT_EQ(p.fact, AdoptFact::unresponsive);
    EXPECT_FALSE(p.quit || p.cont);
}

}  // namespace
