#include <gtest/gtest.h>

#include "core/quotas.hpp"

using hangar::Errc;
using hangar::core::HostSize;
using hangar::core::QuotaLimits;
using hangar::core::Quotas;
using hangar::core::QuotaUsage;

namespace {
Quotas small() {
    QuotaLimits l;
    l.machines = 3;
    l.vcpus = 4;
    l.memory_mib = 1024;
    l.images = 1;
    l.disk_bytes = 0;
    return Quotas(l, HostSize{2, 4096}, nullptr);
}
}  // namespace

TEST(Quotas, DefaultsAreDocumented) {
    QuotaLimits l;
    EXPECT_EQ(l.machines, 100u);
    EXPECT_EQ(l.vcpus, 64u);
    EXPECT_EQ(l.memory_mib, 256u * 1024);
    EXPECT_EQ(l.images, 50u);
    EXPECT_EQ(l.disk_bytes, uint64_t{1} << 40);
}

TEST(Quotas, GrowingPastALimitNamesItTheUseAndTheOption) {
    Quotas q = small();
    QuotaUsage before{2, 3, 512, 0, 0}, after = before;
    ++after.machines;
    after.vcpus += 1;
    EXPECT_TRUE(q.check(1001, before, after).ok());  // at the limit is allowed
    after.vcpus += 1;
    auto st = q.check(1001, before, after);
    EXPECT_EQ(st.code(), Errc::conflict);
    EXPECT_EQ(st.message(), "uid 1001 would use 5 vCPUs; the quota is 4 (--quota-cpus)");
    after = before;
    after.machines = 4;
    EXPECT_EQ(q.check(7, before, after).message(),
              "uid 7 would own 4 machines; the quota is 3 (--quota-machines)");
    after = before;
    after.memory_mib = 2048;
    EXPECT_EQ(q.check(7, before, after).message(),
              "uid 7 would use 2048 MiB of memory; the quota is 1024 (--quota-memory-mib)");
}

TEST(Quotas, AUseOverALoweredQuotaMayShrinkOrStay) {
    Quotas q = small();
    QuotaUsage before{5, 10, 4096, 3, 0}, after = before;
    EXPECT_TRUE(q.check(1001, before, after).ok());
    after.vcpus = 9;
    after.memory_mib = 2048;
    EXPECT_TRUE(q.check(1001, before, after).ok());
    after.memory_mib = 4097;
    EXPECT_FALSE(q.check(1001, before, after).ok());
}

TEST(Quotas, OneMachineIsBoundedByTheHost) {
    Quotas q = small();
    EXPECT_TRUE(q.check_host(2, 4096).ok());
    EXPECT_EQ(q.check_host(3, 128).code(), Errc::invalid_spec);
    EXPECT_EQ(q.check_host(3, 128).message(), "cpus 3 is more than this host's 2 online CPUs");
    EXPECT_EQ(q.check_host(1, 4097).message(),
              "memory_mib 4097 is more than this host's 4096 MiB of memory");
}

TEST(Quotas, APullNeedsRoomOnDiskAndAnImage) {
    Quotas q = small();  // nothing attached: every use is 0, the disk quota 0
    EXPECT_EQ(q.check_pull(1001).message(),
              "uid 1001 uses 0 bytes of disk; the quota is 0 (--quota-disk-gib)");
    EXPECT_TRUE(q.exempt(0));
    EXPECT_FALSE(q.exempt(1001));
}

TEST(Quotas, HostProbeReadsTheHost) {
    HostSize h = HostSize::probe();
    EXPECT_GE(h.cpus, 1u);
    EXPECT_GT(h.memory_mib, 0u);
}
