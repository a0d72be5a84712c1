#include <gtest/gtest.h>

#include <vector>

#include "api/connection_budget.hpp"

using hangar::api::ConnectionBudget;
using Refusal = ConnectionBudget::Refusal;

TEST(ConnectionBudget, PerKeyLimitLeavesOthersIn) {
    ConnectionBudget b({10, 3, 2});
    std::vector<ConnectionBudget::Slot> held(3);
    for (auto& s : held) {
        EXPECT_EQ(b.take("1001", false, s), Refusal::none);
    }
    ConnectionBudget::Slot extra;
    EXPECT_EQ(b.take("1001", false, extra), Refusal::per_key);
    EXPECT_FALSE(extra);
    EXPECT_EQ(b.take("1002", false, extra), Refusal::none);
    EXPECT_EQ(b.used("1001"), 3u);
    EXPECT_EQ(b.used(), 4u);
    held.pop_back();  // a slot given back makes room for its key again
    ConnectionBudget::Slot again;
    EXPECT_EQ(b.take("1001", false, again), Refusal::none);
}

TEST(ConnectionBudget, ReservedShareIsForPrivilegedCallersOnly) {
    ConnectionBudget b({6, 100, 2});
    std::vector<ConnectionBudget::Slot> users(4);
    for (size_t i = 0; i < users.size(); ++i) {
        EXPECT_EQ(b.take("u" + std::to_string(i), false, users[i]), Refusal::none);
    }
    ConnectionBudget::Slot s;
    EXPECT_EQ(b.take("u9", false, s), Refusal::shared);  // the users' share is used up
    ConnectionBudget::Slot root1, root2, root3;
    EXPECT_EQ(b.take("0", true, root1), Refusal::none);
    EXPECT_EQ(b.take("0", true, root2), Refusal::none);
    EXPECT_EQ(b.take("0", true, root3), Refusal::total);  // privileged: bounded by the total
    root1.reset();
    EXPECT_EQ(b.take("u9", false, s), Refusal::shared);  // root's slot is not the users'
    EXPECT_EQ(b.take("0", true, root3), Refusal::none);
}

TEST(ConnectionBudget, PrivilegedCallersHaveNoPerKeyLimit) {
    ConnectionBudget b({5, 1, 1});
    std::vector<ConnectionBudget::Slot> root(5);
    for (auto& s : root) {
        EXPECT_EQ(b.take("0", true, s), Refusal::none);
    }
    EXPECT_EQ(b.used("0"), 0u);  // not counted per key
    EXPECT_EQ(b.used(), 5u);
}

TEST(ConnectionBudget, SlotsMoveAndGiveBackOnce) {
    ConnectionBudget b({2, 2, 0});
    ConnectionBudget::Slot a;
    ASSERT_EQ(b.take("k", false, a), Refusal::none);
    ConnectionBudget::Slot moved(std::move(a));
    EXPECT_FALSE(a);
    EXPECT_TRUE(moved);
    EXPECT_EQ(b.used(), 1u);
    ConnectionBudget::Slot other;
    ASSERT_EQ(b.take("k", false, other), Refusal::none);
    moved = std::move(other);  // the slot `moved` held is given back
    EXPECT_EQ(b.used(), 1u);
    moved.reset();
    EXPECT_EQ(b.used(), 0u);
    EXPECT_EQ(b.used("k"), 0u);
}
