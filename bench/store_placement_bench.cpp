// store_placement_bench: the master's placement path in process (choose segments, allocate, free), on
// one core, against a plain std::map first-fit allocator replaying the same trace in the same run.
//
//   16 segments of 4 GiB (offsets only: no memory is touched), object sizes 4 KiB 70 % / 256 KiB 20 % /
//   3.12 MiB 10 %, 1 and 3 replicas, strategies random (Mooncake's default) and free_ratio_first.
//   fill     from empty until the first put that cannot place all its replicas: puts/s and utilisation
//   steady   filled to 80 %, then alternately free a random live object and put a new one: puts/s,
//            each put paired with one free (Mooncake publishes ~1.02 M allocations/s for 1 replica and
//            322 K/s for 3 over 16 segments, allocation alone)
//   churned  after the steady phase, fill until the first failure: utilisation
//   baseline the segment choices and frees of the steady phase replayed on offset_allocator alone and
//            on a std::map first-fit allocator (coalescing on free): allocator ops/s and their ratio
//
// Timings are thread CPU time (the machine is shared), the best of --repeats runs. The last line of stdout is one JSON object with every figure.
#include <time.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "yutu/store/allocator.hpp"
#include "yutu/store/placement.hpp"

namespace {

// Thread CPU time: the machine is shared, and wall time would charge other processes' turns to us.
struct clk {
  using duration = std::chrono::nanoseconds;
  using time_point = std::chrono::time_point<clk, duration>;
  static time_point now() noexcept {
    timespec ts{};
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return time_point(duration(std::int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec));
  }
};
using json = nlohmann::json;
using namespace yutu::store;

constexpr std::size_t segment_count = 16;
constexpr std::uint64_t segment_bytes = 4ull << 30;
constexpr std::uint64_t sizes[3] = {4096, 262144, 3271557};  // 3.12 MiB

std::uint64_t pick_size(std::uint64_t r) {
  const auto p = r % 100;
  return p < 70 ? sizes[0] : p < 90 ? sizes[1] : sizes[2];
}

double seconds(clk::duration d) { return std::chrono::duration<double>(d).count(); }

// What the steady phase did, for the allocator-only replays.
struct trace_op {
  bool is_free = false;
  std::uint32_t id = 0;  // object id
  std::uint8_t n = 0;
  std::uint8_t seg[3] = {};
  std::uint64_t size = 0;
};

struct cluster {
  std::vector<std::unique_ptr<offset_allocator>> allocs;
  std::vector<placement_target> targets;
  cluster() {
    for (std::uint32_t i = 0; i < segment_count; ++i) {
      allocs.push_back(std::make_unique<offset_allocator>(std::uint64_t{i + 1} << 40, segment_bytes));
      targets.push_back(placement_target{allocs.back().get(), i, i});  // one host per segment
    }
  }
  std::uint64_t used() const {
    std::uint64_t u = 0;
    for (const auto& a : allocs) u += a->used();
    return u;
  }
  double utilisation() const { return static_cast<double>(used()) / (segment_count * static_cast<double>(segment_bytes)); }
};

struct run_result {
  std::size_t replicas = 1;
  placement_strategy strategy = placement_strategy::random;
  double fill_puts_per_s = 0;
  double util_fill = 0;
  double steady_puts_per_s = 0;
  std::vector<double> steady_runs;
  double util_churned = 0;
  double alloc_only_ops_per_s = 0;
  double map_ops_per_s = 0;
  std::uint64_t map_failures = 0;
  std::uint64_t replayed_ops = 0;
};

// Live objects sit in one flat array, `replicas` entries each (32 bytes a replica), the way a compact
// object table would hold them.
struct live_set {
  std::size_t stride = 1;
  std::vector<placed_replica> r;
  std::size_t size() const noexcept { return r.size() / stride; }
  placed_replica* at(std::size_t i) noexcept { return r.data() + i * stride; }
  void remove(std::size_t i) {
    std::copy_n(r.end() - static_cast<std::ptrdiff_t>(stride), stride, at(i));
    r.resize(r.size() - stride);
  }
};

// Puts one object; on a partial placement, gives back what it got and reports failure.
bool put(placer& p, cluster& c, const placement_request& req, std::vector<placed_replica>& scratch, live_set& live) {
  scratch.clear();
  p.place(c.targets, req, scratch);
  if (scratch.size() < req.replicas) {
    for (const auto& r : scratch) c.allocs[r.segment]->free(r.alloc);
    return false;
  }
  live.r.insert(live.r.end(), scratch.begin(), scratch.end());
  return true;
}

// Frees object i and removes it from the set.
void drop(cluster& c, live_set& live, std::size_t i) {
  const placed_replica* o = live.at(i);
  for (std::size_t k = 0; k < live.stride; ++k) c.allocs[o[k].segment]->free(o[k].alloc);
  live.remove(i);
}

// The plain baseline: free ranges in a std::map, first fit from the lowest address.
class map_first_fit {
 public:
  explicit map_first_fit(std::uint64_t cap) { free_.emplace(0, cap); }
  std::optional<std::uint64_t> allocate(std::uint64_t size) {
    size = (size + 63) & ~std::uint64_t{63};
    for (auto it = free_.begin(); it != free_.end(); ++it) {
      if (it->second < size) continue;
      const std::uint64_t off = it->first, rest = it->second - size;
      free_.erase(it);
      if (rest > 0) free_.emplace(off + size, rest);
      return off;
    }
    return std::nullopt;
  }
  void release(std::uint64_t off, std::uint64_t size) {
    size = (size + 63) & ~std::uint64_t{63};
    auto next = free_.lower_bound(off);
    if (next != free_.begin()) {
      auto prev = std::prev(next);
      if (prev->first + prev->second == off) {
        off = prev->first;
        size += prev->second;
        free_.erase(prev);
      }
    }
    if (next != free_.end() && off + size == next->first) {
      size += next->second;
      free_.erase(next);
    }
    free_.emplace(off, size);
  }

 private:
  std::map<std::uint64_t, std::uint64_t> free_;
};

// Replays `trace`: [0, timed_from) untimed (the fill to 80 %), then the rest timed until `budget`
// seconds have passed or `limit` ops were done. Returns (ops timed, seconds, failures).
struct replay_result {
  std::uint64_t ops = 0;
  double secs = 0;
  std::uint64_t failures = 0;
};

template <class Alloc, class Handle>
replay_result replay(const std::vector<trace_op>& trace, std::size_t timed_from, std::uint64_t limit, double budget,
                     std::uint32_t ids) {
  std::vector<std::unique_ptr<Alloc>> segs;
  for (std::size_t i = 0; i < segment_count; ++i) segs.push_back(std::make_unique<Alloc>(segment_bytes));
  std::vector<std::array<Handle, 3>> handles(ids);
  std::vector<std::uint8_t> present(ids, 0);
  replay_result r;
  clk::time_point t0{};
  for (std::size_t k = 0; k < trace.size(); ++k) {
    if (k == timed_from) t0 = clk::now();
    if (k >= timed_from) {
      if (r.ops >= limit) break;
      if ((r.ops & 1023) == 0 && seconds(clk::now() - t0) > budget) break;
      ++r.ops;
    }
    const trace_op& op = trace[k];
    if (op.is_free) {
      if (!present[op.id]) continue;
      for (std::uint8_t i = 0; i < op.n; ++i) Alloc::release(*segs[op.seg[i]], handles[op.id][i]);
      present[op.id] = 0;
    } else {
      bool okay = true;
      for (std::uint8_t i = 0; i < op.n; ++i) {
        auto h = Alloc::take(*segs[op.seg[i]], op.size);
        if (!h) {
          okay = false;
          for (std::uint8_t j = 0; j < i; ++j) Alloc::release(*segs[op.seg[j]], handles[op.id][j]);
          break;
        }
        handles[op.id][i] = *h;
      }
      present[op.id] = okay ? 1 : 0;
      if (!okay && k >= timed_from) ++r.failures;
    }
  }
  r.secs = seconds(clk::now() - t0);
  return r;
}

struct yutu_alloc {
  offset_allocator a;
  explicit yutu_alloc(std::uint64_t cap) : a(0, cap) {}
  static std::optional<allocation> take(yutu_alloc& s, std::uint64_t size) { return s.a.allocate(size); }
  static void release(yutu_alloc& s, const allocation& h) { s.a.free(h); }
};

struct map_alloc {
  map_first_fit m;
  explicit map_alloc(std::uint64_t cap) : m(cap) {}
  static std::optional<std::pair<std::uint64_t, std::uint64_t>> take(map_alloc& s, std::uint64_t size) {
    auto off = s.m.allocate(size);
    if (!off) return std::nullopt;
    return std::make_pair(*off, size);
  }
  static void release(map_alloc& s, const std::pair<std::uint64_t, std::uint64_t>& h) { s.m.release(h.first, h.second); }
};

run_result run(std::size_t replicas, placement_strategy strategy, std::uint64_t steady_iters, int repeats,
               bool with_baseline) {
  run_result res;
  res.replicas = replicas;
  res.strategy = strategy;
  placement_request req;
  req.replicas = replicas;
  req.strategy = strategy;
  std::vector<placed_replica> scratch;
  scratch.reserve(8);

  // Fill from empty to the first failure.
  {
    cluster c;
    placer p(1);
    std::mt19937_64 rng(42);
    std::vector<std::uint64_t> pre(1'000'000);  // more than 64 GiB of the mix
    for (auto& x : pre) x = pick_size(rng());
    live_set live{replicas, {}};
    live.r.reserve(pre.size() / 2 * replicas);
    const auto t0 = clk::now();
    std::size_t i = 0;
    for (; i < pre.size(); ++i) {
      req.size = pre[i];
      if (!put(p, c, req, scratch, live)) break;
    }
    const double secs = seconds(clk::now() - t0);
    res.fill_puts_per_s = static_cast<double>(i) / secs;
    res.util_fill = c.utilisation();
  }

  cluster c;
  placer p(2);
  std::mt19937_64 rng(7);
  live_set live{replicas, {}};
  std::vector<std::uint32_t> live_id;  // kept only while tracing
  std::vector<trace_op> trace;
  std::uint32_t next_id = 0;
  const auto traced_put = [&]() {
    if (!put(p, c, req, scratch, live)) return false;
    trace_op t;
    t.id = next_id;
    t.n = static_cast<std::uint8_t>(replicas);
    for (std::size_t k = 0; k < replicas; ++k) t.seg[k] = static_cast<std::uint8_t>(scratch[k].segment);
    t.size = req.size;
    trace.push_back(t);
    live_id.push_back(next_id++);
    return true;
  };
  // Fill to 80 %.
  while (c.utilisation() < 0.8) {
    req.size = pick_size(rng());
    if (!traced_put()) break;
  }
  const std::size_t timed_from = trace.size();
  // Traced churn (untimed; also the warm-up): the trace the allocator replays use.
  const std::uint64_t trace_iters = with_baseline ? std::min<std::uint64_t>(steady_iters, 400'000) : 0;
  for (std::uint64_t k = 0; k < trace_iters; ++k) {
    const std::size_t v = rng() % live.size();
    trace_op f;
    f.is_free = true;
    f.id = live_id[v];
    f.n = static_cast<std::uint8_t>(replicas);
    for (std::size_t j = 0; j < replicas; ++j) f.seg[j] = static_cast<std::uint8_t>(live.at(v)[j].segment);
    trace.push_back(f);
    drop(c, live, v);
    live_id[v] = live_id.back();
    live_id.pop_back();
    req.size = pick_size(rng());
    traced_put();
  }
  live_id = {};

  // Timed churn, with pre-drawn randomness so that the loop measures placement and allocation.
  std::vector<std::uint64_t> draws(2 * steady_iters);
  for (int rep = 0; rep < repeats; ++rep) {
    for (auto& x : draws) x = rng();
    const auto t0 = clk::now();
    for (std::uint64_t k = 0; k < steady_iters; ++k) {
      drop(c, live, draws[2 * k] % live.size());
      req.size = pick_size(draws[2 * k + 1]);
      put(p, c, req, scratch, live);
    }
    const double secs = seconds(clk::now() - t0);
    res.steady_runs.push_back(static_cast<double>(steady_iters) / secs);
  }
  res.steady_puts_per_s = *std::max_element(res.steady_runs.begin(), res.steady_runs.end());

  // Churned: fill to the first failure.
  for (;;) {
    req.size = pick_size(rng());
    if (!put(p, c, req, scratch, live)) break;
  }
  res.util_churned = c.utilisation();

  if (with_baseline) {
    // The map replay bounds the op count; the offset allocator then replays exactly as many.
    replay_result best_map, best_yutu;
    for (int rep = 0; rep < repeats; ++rep) {
      auto m = replay<map_alloc, std::pair<std::uint64_t, std::uint64_t>>(trace, timed_from, UINT64_MAX, 3.0, next_id);
      if (rep == 0 || m.ops / m.secs > best_map.ops / best_map.secs) best_map = m;
    }
    for (int rep = 0; rep < repeats; ++rep) {
      auto y = replay<yutu_alloc, allocation>(trace, timed_from, best_map.ops, 1e9, next_id);
      if (rep == 0 || y.ops / y.secs > best_yutu.ops / best_yutu.secs) best_yutu = y;
    }
    res.replayed_ops = best_yutu.ops;
    res.map_failures = best_map.failures;
    res.alloc_only_ops_per_s = static_cast<double>(best_yutu.ops) / best_yutu.secs;
    res.map_ops_per_s = static_cast<double>(best_map.ops) / best_map.secs;
  }
  return res;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t iters = 2'000'000;
  int repeats = 3;
  bool baseline = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--quick") {
      iters = 200'000;
      repeats = 1;
    } else if (a == "--no-baseline") {
      baseline = false;
    } else if (a == "--iterations" && i + 1 < argc) {
      iters = std::strtoull(argv[++i], nullptr, 10);
    } else if (a == "--repeats" && i + 1 < argc) {
      repeats = std::atoi(argv[++i]);
    } else {
      std::fprintf(stderr, "store_placement_bench [--quick] [--no-baseline] [--iterations N] [--repeats N]\n");
      return 2;
    }
  }

  std::vector<run_result> results;
  for (const std::size_t r : {std::size_t{1}, std::size_t{3}}) {
    for (const auto s : {placement_strategy::random, placement_strategy::free_ratio_first}) {
      results.push_back(run(r, s, iters, repeats, baseline && s == placement_strategy::random));
    }
  }

  std::printf("store placement: %zu segments x %llu GiB, sizes 4 KiB 70%% / 256 KiB 20%% / 3.12 MiB 10%%, one core\n",
              segment_count, static_cast<unsigned long long>(segment_bytes >> 30));
  std::printf("%-3s %-17s %12s %12s %10s %10s %14s %14s %8s\n", "rep", "strategy", "steady put/s", "fill put/s",
              "util fill", "util churn", "alloc-only/s", "map f-fit/s", "ratio");
  json rows = json::array();
  for (const auto& r : results) {
    const double ratio = r.map_ops_per_s > 0 ? r.alloc_only_ops_per_s / r.map_ops_per_s : 0;
    std::printf("%-3zu %-17s %12.0f %12.0f %9.2f%% %9.2f%% %14.0f %14.0f %8.1f\n", r.replicas,
                std::string(to_string(r.strategy)).c_str(), r.steady_puts_per_s, r.fill_puts_per_s, r.util_fill * 100,
                r.util_churned * 100, r.alloc_only_ops_per_s, r.map_ops_per_s, ratio);
    json row{{"replicas", r.replicas},
             {"strategy", std::string(to_string(r.strategy))},
             {"steady_puts_per_s", r.steady_puts_per_s},
             {"steady_runs", r.steady_runs},
             {"fill_puts_per_s", r.fill_puts_per_s},
             {"util_at_first_failure_fill", r.util_fill},
             {"util_at_first_failure_churned", r.util_churned}};
    if (r.map_ops_per_s > 0) {
      row["alloc_only_ops_per_s"] = r.alloc_only_ops_per_s;
      row["map_first_fit_ops_per_s"] = r.map_ops_per_s;
      row["speedup_vs_map_first_fit"] = ratio;
      row["replayed_ops"] = r.replayed_ops;
      row["map_first_fit_failures"] = r.map_failures;
    }
    rows.push_back(std::move(row));
  }
  std::printf("steady: free one random live object + put one new (placement + allocation), filled to 80%%;\n"
              "alloc-only/map: the same steady trace replayed on the allocators alone (ops = puts + frees).\n");
  json out{{"bench", "store_placement"},
           {"segments", segment_count},
           {"segment_bytes", segment_bytes},
           {"iterations", iters},
           {"repeats", repeats},
           {"mooncake_published_allocs_per_s", {{"replicas_1", 1.02e6}, {"replicas_3", 322e3}}},
           {"targets", {{"steady_puts_per_s_1_replica", 2e6}, {"util_at_first_failure", 0.95}}},
           {"results", std::move(rows)}};
  std::printf("%s\n", out.dump().c_str());
  return 0;
}
