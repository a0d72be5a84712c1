#pragma once
// Per-owner quotas and the host's bound on one machine. Every face (HTTP, D-Bus, hangarctl)
// goes through core::Machines and core::Images, which ask this class before they create,
// change or pull anything.
//
// Counted per owner (uid), whatever the machines' states (creating is reserving):
//   machines    machines it owns;
//   vcpus       the sum of their `cpus`;
//   memory_mib  the sum of their `memory_mib`;
//   images      images it owns plus its pulls in flight;
//   disk_bytes  its images' archive sizes (Image::size), per machine made from an image that
//               image's archive size (its copy of it), and its disks in the pools at their
//               size (what their guests see: a disk may fill up to it); a pull's size is not
//               known before it is downloaded, so a pull starts while the use is below the
//               quota.
// Root and members of the admin group are exempt; the host's bound applies to everyone.
#include <cstdint>
#include <functional>
#include <string>

#include "hangar/error.hpp"

namespace hangar::core {

class AdminGroup;
class Machines;
class Images;

// Defaults of the --quota-* options of hangard.
struct QuotaLimits {
    uint64_t machines = 100;
    uint64_t vcpus = 64;
    uint64_t memory_mib = 256 * 1024;  // 256 GiB
    uint64_t images = 50;
    uint64_t disk_bytes = uint64_t{1} << 40;  // 1 TiB
};

struct QuotaUsage {
    uint64_t machines = 0, vcpus = 0, memory_mib = 0, images = 0, disk_bytes = 0;
};

// What one machine may have at most: the host's online CPUs and physical memory.
struct HostSize {
    uint64_t cpus = 1;
    uint64_t memory_mib = 0;
    // sysconf(_SC_NPROCESSORS_ONLN) and _SC_PHYS_PAGES × _SC_PAGESIZE.
    static HostSize probe();
};

class Quotas {
  public:
    Quotas(QuotaLimits limits, HostSize host, const AdminGroup* admins)
        : limits_(limits), host_(host), admins_(admins) {}
    // What is counted; until attached, nothing is (every use reads as 0).
    void attach(const Machines* machines, const Images* images) {
        machines_ = machines;
        images_ = images;
    }

    // The bytes of the disks in the pools that `uid` owns (core::Disks).
    void set_disk_usage(std::function<uint64_t(uint32_t uid)> f) { disk_usage_ = std::move(f); }

    const QuotaLimits& limits() const { return limits_; }
    const HostSize& host() const { return host_; }
    // Root and admins have no quota.
    bool exempt(uint32_t uid) const;
    QuotaUsage usage(uint32_t uid) const;
    // The archive size of local image `name` (what a container made from it counts); 0 when
    // there is no such image.
    uint64_t image_bytes(const std::string& name) const;

    // invalid_spec when a machine of `cpus` and `memory_mib` is bigger than the host.
    Status check_host(uint64_t cpus, uint64_t memory_mib) const;
    // conflict naming the first quota that `after` passes where it grows from `before`
    // (a use already over a lowered quota may shrink or stay).
    Status check(uint32_t uid, const QuotaUsage& before, const QuotaUsage& after) const;
    // Whether `uid` may start one more pull (images count, disk below the quota).
    Status check_pull(uint32_t uid) const;

  private:
    QuotaLimits limits_;
    HostSize host_;
    const AdminGroup* admins_;
    const Machines* machines_ = nullptr;
    const Images* images_ = nullptr;
    std::function<uint64_t(uint32_t)> disk_usage_;
};

}  // namespace hangar::core
