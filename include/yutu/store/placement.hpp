// Replica placement: which segments receive the replicas of a new object. It allocates as it chooses,
// because "has enough free bytes" does not mean "has a large enough hole"; a segment whose allocator
// refuses is skipped and the next candidate is tried.
//
// Every replica lands on a distinct segment, and on a distinct host where the hosts allow it (a
// first pass insists on new hosts, a second pass accepts any segment not used yet). Preferred
// segments are tried first, in the caller's order; then, with local_first, the writer's host; then
// the strategy:
//   random            consecutive scan from a random start, at most min(100, n) probes per pass
//                     (Mooncake's default, best effort).
//   free_ratio_first  the best, by free ratio, of 2 * replicas segments sampled at random.
//   local_first       one replica on the writer's host, the others as `random`.
//
// Why free_ratio_first samples instead of ranking every segment (Mooncake issue #3688): a node that
// restarts empty has the best free ratio in the cluster by far, so a global ranking sends it every new
// write until it is as full as the others, and its NIC becomes the cluster's bottleneck for writes and,
// later, for the reads of everything recent. With d = 2 * replicas random candidates a segment can only
// be chosen when it is sampled, so its share of new replicas is at most d / n (2/9 = 22 % with one
// empty segment among nine and one replica, against 100 % for a global ranking and 11 % fair), while
// it still receives about twice its fair share and so catches up with the others.
//
// Not thread-safe (the random state): the master calls it under its lock.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string_view>
#include <utility>
#include <vector>

#include "yutu/store/allocator.hpp"

namespace yutu::store {

enum class placement_strategy : std::uint8_t { random, free_ratio_first, local_first };

std::optional<placement_strategy> parse_placement_strategy(std::string_view name) noexcept;
std::string_view to_string(placement_strategy s) noexcept;

// One segment as placement sees it.
struct placement_target {
  offset_allocator* alloc = nullptr;
  std::uint32_t id = 0;    // the caller's id for the segment, copied into placed_replica
  std::uint32_t host = 0;  // small integer naming the host (equal hosts, equal numbers)
};

struct placed_replica {
  std::uint32_t segment = 0;  // placement_target::id
  std::uint32_t host = 0;     // placement_target::host
  allocation alloc;
};

struct placement_request {
  std::uint64_t size = 0;
  std::size_t replicas = 1;
  placement_strategy strategy = placement_strategy::random;
  std::optional<std::uint32_t> local_host;     // the writer's host, for local_first
  std::span<const std::uint32_t> preferred;    // indices into the target span, tried first in order
};

class placer {
 public:
  static constexpr std::size_t max_random_probes = 100;

  explicit placer(std::uint64_t seed = 0x9e3779b97f4a7c15ull) noexcept : state_(seed) {}

  // Allocates until `out` holds req.replicas replicas or no candidate is left; replicas already in
  // `out` count (a retry after eviction completes a partial placement) and their segments and hosts
  // are avoided. Returns how many replicas this call added.
  std::size_t place(std::span<const placement_target> targets, const placement_request& req,
                    std::vector<placed_replica>& out);

  std::uint64_t next_random() noexcept;

 private:
  bool try_target(const placement_target& t, const placement_request& req, bool distinct_host,
                  std::vector<placed_replica>& out) const;
  void place_random(std::span<const placement_target> targets, const placement_request& req,
                    std::vector<placed_replica>& out);
  void place_free_ratio(std::span<const placement_target> targets, const placement_request& req,
                        std::vector<placed_replica>& out);

  std::uint64_t state_;
  std::vector<std::uint32_t> sample_;  // reused, so that a placement does not allocate
  std::vector<std::pair<double, std::uint32_t>> scored_;
};

}  // namespace yutu::store
