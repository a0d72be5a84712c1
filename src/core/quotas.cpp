#include "core/quotas.hpp"

#include <unistd.h>

#include "core/admin_group.hpp"
#include "core/images.hpp"
#include "core/machines.hpp"

namespace hangar::core {

HostSize HostSize::probe() {
    HostSize h;
    long cpus = sysconf(_SC_NPROCESSORS_ONLN);
    long pages = sysconf(_SC_PHYS_PAGES);
    long page = sysconf(_SC_PAGESIZE);
    h.cpus = cpus > 0 ? static_cast<uint64_t>(cpus) : 1;
    h.memory_mib = pages > 0 && page > 0
                       ? static_cast<uint64_t>(pages) * static_cast<uint64_t>(page) >> 20
                       : 0;
    return h;
}

bool Quotas::exempt(uint32_t uid) const {
    return uid == 0 || (admins_ && admins_->is_admin(uid));
}

uint64_t Quotas::image_bytes(const std::string& name) const {
    const Image* img = nullptr;
    if (!images_ || !images_->get(name, &img) || !img) {
        return 0;
    }
    return img->size;
}

QuotaUsage Quotas::usage(uint32_t uid) const {
    QuotaUsage u;
    if (machines_) {
        for (const auto& [name, m] : machines_->all()) {
            if (m->spec.owner != uid) {
                continue;
            }
            ++u.machines;
            u.vcpus += m->spec.cpus;
            u.memory_mib += m->spec.memory_mib;
            if (!m->spec.image.empty()) {  // its copy of the image
                u.disk_bytes += image_bytes(m->spec.image);
            }
        }
    }
    if (images_) {
        for (const Image* img : images_->list()) {
            if (img->owner == uid) {
                ++u.images;
                u.disk_bytes += img->size;
            }
        }
        u.images += images_->pulling(uid);
    }
    if (disk_usage_) {
        u.disk_bytes += disk_usage_(uid);
    }
    return u;
}

Status Quotas::check_host(uint64_t cpus, uint64_t memory_mib) const {
    if (cpus > host_.cpus) {
        return {Errc::invalid_spec, "cpus " + std::to_string(cpus) + " is more than this host's " +
                                        std::to_string(host_.cpus) + " online CPUs"};
    }
    if (host_.memory_mib && memory_mib > host_.memory_mib) {
        return {Errc::invalid_spec, "memory_mib " + std::to_string(memory_mib) +
                                        " is more than this host's " +
                                        std::to_string(host_.memory_mib) + " MiB of memory"};
    }
    return {};
}

Status Quotas::check(uint32_t uid, const QuotaUsage& before, const QuotaUsage& after) const {
    struct Dim {
        uint64_t before, after, limit;
        const char* verb;
        const char* unit;
        const char* option;
    };
    for (const Dim& d : {
             Dim{before.machines, after.machines, limits_.machines, "own", " machines",
                 "--quota-machines"},
             Dim{before.vcpus, after.vcpus, limits_.vcpus, "use", " vCPUs", "--quota-cpus"},
             Dim{before.memory_mib, after.memory_mib, limits_.memory_mib, "use", " MiB of memory",
                 "--quota-memory-mib"},
             Dim{before.images, after.images, limits_.images, "have",
                 " images (pulls in flight included)", "--quota-images"},
             Dim{before.disk_bytes, after.disk_bytes, limits_.disk_bytes, "use", " bytes of disk",
                 "--quota-disk-gib"},
         }) {
        if (d.after > d.before && d.after > d.limit) {
            return {Errc::conflict, "uid " + std::to_string(uid) + " would " + d.verb + " " +
                                        std::to_string(d.after) + d.unit + "; the quota is " +
                                        std::to_string(d.limit) + " (" + d.option + ")"};
        }
    }
    return {};
}

Status Quotas::check_pull(uint32_t uid) const {
    QuotaUsage before = usage(uid);
    if (before.disk_bytes >= limits_.disk_bytes) {
        return {Errc::conflict, "uid " + std::to_string(uid) + " uses " +
                                    std::to_string(before.disk_bytes) +
                                    " bytes of disk; the quota is " +
                                    std::to_string(limits_.disk_bytes) + " (--quota-disk-gib)"};
    }
    QuotaUsage after = before;
    ++after.images;
    return check(uid, before, after);
}

}  // namespace hangar::core
