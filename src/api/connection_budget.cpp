#include "api/connection_budget.hpp"

namespace hangar::api {

ConnectionBudget::Slot& ConnectionBudget::Slot::operator=(Slot&& o) noexcept {
    if (this != &o) {
        reset();
        budget_ = o.budget_;
        key_ = std::move(o.key_);
        privileged_ = o.privileged_;
        o.budget_ = nullptr;
    }
    return *this;
}

void ConnectionBudget::Slot::reset() {
    if (budget_) {
        budget_->give_back(key_, privileged_);
        budget_ = nullptr;
    }
}

ConnectionBudget::Refusal ConnectionBudget::take(const std::string& key, bool privileged,
                                                 Slot& slot) {
    slot.reset();
    if (used_ >= limits_.total) {
        return Refusal::total;
    }
    if (!privileged) {
        if (used(key) >= limits_.per_key) {
            return Refusal::per_key;
        }
        size_t shared = limits_.total > limits_.reserved ? limits_.total - limits_.reserved : 0;
        if (unprivileged_ >= shared) {
            return Refusal::shared;
        }
        ++unprivileged_;
        ++per_key_[key];
    }
    ++used_;
    slot.budget_ = this;
    slot.key_ = key;
    slot.privileged_ = privileged;
    return Refusal::none;
}

size_t ConnectionBudget::used(const std::string& key) const {
    auto it = per_key_.find(key);
    return it == per_key_.end() ? 0 : it->second;
}

void ConnectionBudget::give_back(const std::string& key, bool privileged) {
    --used_;
    if (!privileged) {
        --unprivileged_;
        if (auto it = per_key_.find(key); it != per_key_.end() && --it->second == 0) {
            per_key_.erase(it);
        }
    }
}

}  // namespace hangar::api
