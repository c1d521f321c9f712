// Failover policy of the RDMA transport: which rail (local NIC, peer NIC) a slice tries next, and
// when a rail that keeps failing is paused and later probed. Pure logic over a clock value passed in,
// so tests drive time by hand.
//
// A rail with `error_threshold` errors inside `error_window` is paused for `pause`; when the pause
// ends, the rail is probing: one slice may try it, success makes it healthy, failure pauses it again.
// A slice is retried at most `max_retries` times, each time on the next usable rail in preference
// order after the one that failed; when no rail is usable or the retries are spent, the request fails
// with te_errc::retries_exhausted (the engine may then fall back to another transport).
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <vector>

namespace yutu::transfer::rdma {

struct retry_policy {
  int max_retries = 8;
  int error_threshold = 5;
  std::chrono::milliseconds error_window{5'000};
  std::chrono::milliseconds pause{30'000};
};

class rail_health {
 public:
  using clock = std::chrono::steady_clock;
  enum class state : std::uint8_t { healthy, paused, probing };

  state current(clock::time_point now) const noexcept;
  bool usable(clock::time_point now) const noexcept { return current(now) != state::paused; }
  void on_error(const retry_policy& p, clock::time_point now);
  void on_success() noexcept;
  std::uint64_t pauses() const noexcept { return pauses_; }

 private:
  std::deque<clock::time_point> errors_;
  std::optional<clock::time_point> paused_until_;
  std::uint64_t pauses_ = 0;
};

// The rail to try for attempt `attempt` (0 = first try) of a slice whose preferred rail is
// `preferred`: rotates from there through `rails` and skips paused ones. nullopt when all are paused.
std::optional<std::size_t> pick_rail(const std::vector<rail_health>& rails, std::size_t preferred, int attempt,
                                     rail_health::clock::time_point now);

}  // namespace yutu::transfer::rdma
