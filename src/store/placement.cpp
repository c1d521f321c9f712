// placer: preferred segments, the writer's host, then the strategy; distinct hosts first.
#include "yutu/store/placement.hpp"

#include <algorithm>

namespace yutu::store {

std::optional<placement_strategy> parse_placement_strategy(std::string_view name) noexcept {
  if (name == "random") return placement_strategy::random;
  if (name == "free_ratio_first") return placement_strategy::free_ratio_first;
  if (name == "local_first") return placement_strategy::local_first;
  return std::nullopt;
}

std::string_view to_string(placement_strategy s) noexcept {
  switch (s) {
    case placement_strategy::random: return "random";
    case placement_strategy::free_ratio_first: return "free_ratio_first";
    case placement_strategy::local_first: return "local_first";
  }
  return "random";
}

// splitmix64: cheap, and good enough to spread starts and samples.
std::uint64_t placer::next_random() noexcept {
  std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

bool placer::try_target(const placement_target& t, const placement_request& req, bool distinct_host,
                        std::vector<placed_replica>& out) const {
  for (const placed_replica& r : out) {
    if (r.segment == t.id || (distinct_host && r.host == t.host)) return false;
  }
  auto a = t.alloc->allocate(req.size);
  if (!a) return false;
  out.push_back(placed_replica{t.id, t.host, *a});
  return true;
}

void placer::place_random(std::span<const placement_target> targets, const placement_request& req,
                          std::vector<placed_replica>& out) {
  const std::size_t n = targets.size();
  const std::size_t probes = std::min(n, max_random_probes);
  const std::size_t start = next_random() % n;
  for (const bool distinct_host : {true, false}) {
    for (std::size_t i = 0, idx = start; i < probes; ++i, idx = idx + 1 == n ? 0 : idx + 1) {
      if (out.size() >= req.replicas) return;
      try_target(targets[idx], req, distinct_host, out);
    }
  }
}

void placer::place_free_ratio(std::span<const placement_target> targets, const placement_request& req,
                              std::vector<placed_replica>& out) {
  const std::size_t n = targets.size();
  const std::size_t d = std::min(n, 2 * (req.replicas - out.size()));
  sample_.clear();
  if (2 * d >= n) {
    // Partial Fisher-Yates over all indices.
    for (std::uint32_t i = 0; i < n; ++i) sample_.push_back(i);
    for (std::size_t i = 0; i < d; ++i) {
      std::swap(sample_[i], sample_[i + next_random() % (n - i)]);
    }
    sample_.resize(d);
  } else {
    // Rejection: d is small against n, so repeats are rare.
    while (sample_.size() < d) {
      const auto i = static_cast<std::uint32_t>(next_random() % n);
      if (std::find(sample_.begin(), sample_.end(), i) == sample_.end()) sample_.push_back(i);
    }
  }
  scored_.clear();
  for (const std::uint32_t i : sample_) {
    const offset_allocator& a = *targets[i].alloc;
    const double r = a.capacity() == 0 ? 0.0 : static_cast<double>(a.free_bytes()) / static_cast<double>(a.capacity());
    scored_.emplace_back(r, i);
  }
  std::sort(scored_.begin(), scored_.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  for (const bool distinct_host : {true, false}) {
    for (const auto& [r, i] : scored_) {
      if (out.size() >= req.replicas) return;
      try_target(targets[i], req, distinct_host, out);
    }
  }
  // Every sampled segment refused (full or fragmented): look anywhere rather than fail.
  if (out.size() < req.replicas) place_random(targets, req, out);
}

std::size_t placer::place(std::span<const placement_target> targets, const placement_request& req,
                          std::vector<placed_replica>& out) {
  const std::size_t before = out.size();
  if (targets.empty() || out.size() >= req.replicas) return 0;

  for (const std::uint32_t i : req.preferred) {
    if (out.size() >= req.replicas) break;
    if (i < targets.size()) try_target(targets[i], req, false, out);
  }

  if (req.strategy == placement_strategy::local_first && req.local_host && out.size() < req.replicas &&
      std::none_of(out.begin(), out.end(), [&](const placed_replica& r) { return r.host == *req.local_host; })) {
    const std::size_t n = targets.size();
    const std::size_t start = next_random() % n;
    for (std::size_t i = 0, idx = start; i < n; ++i, idx = idx + 1 == n ? 0 : idx + 1) {
      if (targets[idx].host == *req.local_host && try_target(targets[idx], req, false, out)) break;
    }
  }

  if (out.size() < req.replicas) {
    if (req.strategy == placement_strategy::free_ratio_first) {
      place_free_ratio(targets, req, out);
    } else {
      place_random(targets, req, out);
    }
  }
  return out.size() - before;
}

}  // namespace yutu::store
