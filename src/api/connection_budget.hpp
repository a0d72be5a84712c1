#pragma once
// How many connections one listener holds: in all, per key (a uid, a client address), and a
// share that only privileged callers (root, the admin group) may use, so no one caller — and
// no crowd of unprivileged ones — can take every connection. Nothing here knows sockets.
#include <cstddef>
#include <string>
#include <unordered_map>

namespace hangar::api {

class ConnectionBudget {
  public:
    struct Limits {
        size_t total = 0;     // every connection of this budget
        size_t per_key = 0;   // one key's (unprivileged callers only)
        size_t reserved = 0;  // of `total`, kept for privileged callers
    };
    enum class Refusal { none, per_key, shared, total };

    // A taken slot; gives itself back when destroyed. Move-only.
    class Slot {
      public:
        Slot() = default;
        Slot(Slot&& o) noexcept { *this = std::move(o); }
        Slot& operator=(Slot&& o) noexcept;
        Slot(const Slot&) = delete;
        Slot& operator=(const Slot&) = delete;
        ~Slot() { reset(); }
        void reset();
        explicit operator bool() const { return budget_ != nullptr; }

      private:
        friend class ConnectionBudget;
        ConnectionBudget* budget_ = nullptr;
        std::string key_;
        bool privileged_ = false;
    };

    explicit ConnectionBudget(Limits limits) : limits_(limits) {}
    ConnectionBudget(const ConnectionBudget&) = delete;
    ConnectionBudget& operator=(const ConnectionBudget&) = delete;

    // Takes a slot for `key`, or says why not (`slot` stays empty). Privileged callers are
    // bounded by `total` alone; the others by `per_key` each and `total - reserved` together.
    Refusal take(const std::string& key, bool privileged, Slot& slot);
    size_t used() const { return used_; }
    size_t used(const std::string& key) const;
    const Limits& limits() const { return limits_; }

  private:
    void give_back(const std::string& key, bool privileged);

    Limits limits_;
    size_t used_ = 0;
    size_t unprivileged_ = 0;
    std::unordered_map<std::string, size_t> per_key_;
};

}  // namespace hangar::api
