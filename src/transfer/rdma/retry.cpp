// Rail health and rail choice for RDMA failover (see retry.hpp).
#include "yutu/transfer/rdma/retry.hpp"

namespace yutu::transfer::rdma {

rail_health::state rail_health::current(clock::time_point now) const noexcept {
  if (!paused_until_) return state::healthy;
  return now < *paused_until_ ? state::paused : state::probing;
}

void rail_health::on_error(const retry_policy& p, clock::time_point now) {
  if (paused_until_ && now >= *paused_until_) {
    // The probe failed: pause again at once.
    paused_until_ = now + p.pause;
    errors_.clear();
    ++pauses_;
    return;
  }
  errors_.push_back(now);
  while (!errors_.empty() && now - errors_.front() > p.error_window) errors_.pop_front();
  if (static_cast<int>(errors_.size()) >= p.error_threshold) {
    paused_until_ = now + p.pause;
    errors_.clear();
    ++pauses_;
  }
}

void rail_health::on_success() noexcept {
  paused_until_.reset();
  errors_.clear();
}

std::optional<std::size_t> pick_rail(const std::vector<rail_health>& rails, std::size_t preferred, int attempt,
                                     rail_health::clock::time_point now) {
  const std::size_t n = rails.size();
  if (n == 0) return std::nullopt;
  std::size_t start = (preferred + static_cast<std::size_t>(attempt)) % n;
  for (std::size_t k = 0; k < n; ++k) {
    std::size_t i = (start + k) % n;
    if (rails[i].usable(now)) return i;
  }
  return std::nullopt;
}

}  // namespace yutu::transfer::rdma
