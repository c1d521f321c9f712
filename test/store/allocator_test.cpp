// offset_allocator: exhaustive small cases, coalescing, alignment, random workloads checked against a
// reference interval set, and utilisation on the KVCache size mix.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <utility>
#include <vector>

#include "yutu/store/allocator.hpp"

using yutu::store::allocation;
using yutu::store::offset_allocator;

namespace {

using block_list = std::vector<std::pair<std::uint64_t, std::uint64_t>>;

// The free ranges a correct allocator must report: the complement of the live allocations, merged.
block_list complement(const std::map<std::uint64_t, std::uint64_t>& live, std::uint64_t base, std::uint64_t cap) {
  block_list out;
  std::uint64_t at = base;
  for (const auto& [addr, size] : live) {
    if (addr > at) out.emplace_back(at, addr - at);
    at = addr + size;
  }
  if (at < base + cap) out.emplace_back(at, base + cap - at);
  return out;
}

std::uint64_t largest(const block_list& b) {
  std::uint64_t m = 0;
  for (const auto& [a, s] : b) m = std::max(m, s);
  return m;
}

}  // namespace

TEST_CASE("the managed range is shrunk to whole alignment units") {
  offset_allocator a(100, 1000, 64);
  CHECK(a.base() == 128);
  CHECK(a.capacity() == 960);  // 1000 - 28 = 972, down to 15 units
  CHECK(a.free_bytes() == 960);
  CHECK(a.check_invariants());

  offset_allocator tiny(1, 60, 64);
  CHECK(tiny.capacity() == 0);
  CHECK_FALSE(tiny.allocate(1).has_value());

  CHECK_THROWS_AS(offset_allocator(0, 4096, 48), std::invalid_argument);
  CHECK_THROWS_AS(offset_allocator(0, 4096, 0), std::invalid_argument);
}

TEST_CASE("sizes are rounded to the alignment only, addresses are aligned") {
  for (const std::uint64_t align : {64ull, 4096ull}) {
    offset_allocator a(0x10000, 64ull << 20, align);
    std::uint64_t used = 0;
    for (const std::uint64_t size : {1ull, 63ull, 64ull, 65ull, 4095ull, 4096ull, 4097ull, 262144ull, 3271557ull}) {
      auto x = a.allocate(size);
      REQUIRE(x.has_value());
      CHECK(x->addr % align == 0);
      CHECK(x->size == (size + align - 1) / align * align);
      CHECK(x->size == a.rounded(size));
      used += x->size;
    }
    CHECK(a.used() == used);
    CHECK(a.check_invariants());
  }
  offset_allocator a(0, 1 << 20);
  auto z = a.allocate(0);
  REQUIRE(z.has_value());
  CHECK(z->size == 64);
}

TEST_CASE("small requests come from the top of a hole, large ones from the bottom") {
  offset_allocator a(0, 1 << 20, 64, 64 * 1024);
  auto small = a.allocate(4096);
  auto large = a.allocate(128 * 1024);
  REQUIRE(small.has_value());
  REQUIRE(large.has_value());
  CHECK(small->addr == (1u << 20) - 4096);
  CHECK(large->addr == 0);
  CHECK(a.check_invariants());
}

TEST_CASE("exact fit, overflow and an allocator that is full") {
  offset_allocator a(0, 4096);
  CHECK_FALSE(a.allocate(4097).has_value());
  auto all = a.allocate(4096);
  REQUIRE(all.has_value());
  CHECK(a.free_bytes() == 0);
  CHECK(a.stats().fragmentation == 0.0);
  CHECK_FALSE(a.allocate(1).has_value());
  a.free(*all);
  CHECK(a.free_blocks() == block_list{{0, 4096}});
  CHECK_FALSE(a.allocate(~0ull).has_value());
}

TEST_CASE("for_each_block walks every block in address order with its tag; allocate clears the tag") {
  offset_allocator a(4096, 1024, 64, 1 << 30);  // everything "small": carved from the top of a hole
  auto x = a.allocate(256);
  auto y = a.allocate(128);
  REQUIRE(x);
  REQUIRE(y);
  a.set_tag(*x, 7);
  a.set_tag(*y, 9);
  CHECK(a.tag(*x) == 7);
  struct seen {
    std::uint64_t size;
    bool used;
    std::uint64_t tag;
    bool operator==(const seen&) const = default;
  };
  std::vector<seen> blocks;
  a.for_each_block([&](std::uint64_t size, bool used, std::uint64_t tag) { blocks.push_back({size, used, tag}); });
  CHECK(blocks == std::vector<seen>{{640, false, 0}, {128, true, 9}, {256, true, 7}});
  a.free(*y);
  auto z = a.allocate(128);  // the same record again: no tag left over from y
  REQUIRE(z);
  CHECK(a.tag(*z) == 0);
  blocks.clear();
  a.for_each_block([&](std::uint64_t size, bool used, std::uint64_t tag) { blocks.push_back({size, used, tag}); });
  CHECK(blocks == std::vector<seen>{{640, false, 0}, {128, true, 0}, {256, true, 7}});
}

TEST_CASE("free of a foreign or freed allocation is a broken invariant") {
  offset_allocator a(0, 1 << 20);
  auto x = a.allocate(1000);
  REQUIRE(x.has_value());
  allocation forged = *x;
  forged.addr += 64;
  CHECK_THROWS_AS(a.free(forged), std::invalid_argument);
  allocation unknown = *x;
  unknown.node = 12345;
  CHECK_THROWS_AS(a.free(unknown), std::invalid_argument);
  a.free(*x);
  CHECK_THROWS_AS(a.free(*x), std::invalid_argument);
  CHECK(a.check_invariants());
  CHECK(a.used() == 0);
}

TEST_CASE("freeing coalesces with both neighbours") {
  offset_allocator a(0, 64 * 10, 64, 0);  // everything from the bottom: addresses in request order
  auto x = a.allocate(64 * 2);
  auto y = a.allocate(64 * 3);
  auto z = a.allocate(64 * 1);
  REQUIRE((x && y && z));
  CHECK(x->addr == 0);
  CHECK(y->addr == 128);
  CHECK(z->addr == 320);
  a.free(*y);
  CHECK(a.free_blocks() == block_list{{128, 192}, {384, 256}});
  a.free(*x);  // merges with the hole after it
  CHECK(a.free_blocks() == block_list{{0, 320}, {384, 256}});
  CHECK(a.largest_free() == 320);
  CHECK(a.stats().fragmentation == doctest::Approx(1.0 - 320.0 / 576.0));
  a.free(*z);  // merges with both sides
  CHECK(a.free_blocks() == block_list{{0, 640}});
  CHECK(a.check_invariants());
  CHECK(a.allocation_count() == 0);
}

TEST_CASE("reserve_ranges takes exactly the ranges given, skips what is not wholly free, and frees back whole") {
  offset_allocator a(1024, 64 * 100, 64);
  // The first range starts the managed range, the last ends it, two touch each other.
  block_list want{{1024, 128}, {1024 + 640, 64}, {1024 + 704, 192}, {1024 + 64 * 99, 64}};
  auto got = a.reserve_ranges(want);
  REQUIRE(got.size() == want.size());
  for (std::size_t i = 0; i < want.size(); ++i) {
    REQUIRE(got[i].valid());
    CHECK(got[i].addr == want[i].first);
    CHECK(got[i].size == want[i].second);
  }
  CHECK(a.check_invariants());
  CHECK(a.used() == 128 + 64 + 192 + 64);
  CHECK(a.free_blocks() == block_list{{1024 + 128, 512}, {1024 + 896, 64 * 85}});
  // Taken, unaligned, outside, empty, overlapping the end: each skipped, the rest still taken.
  auto more = a.reserve_ranges(block_list{{0, 64},
                                          {1024 + 130, 64},
                                          {1024 + 192, 0},
                                          {1024 + 256, 64},
                                          {1024 + 640, 64},
                                          {1024 + 64 * 98, 128},
                                          {1024 + 64 * 200, 64}});
  REQUIRE(more.size() == 7);
  CHECK_FALSE(more[0].valid());
  CHECK_FALSE(more[1].valid());
  CHECK_FALSE(more[2].valid());
  CHECK(more[3].valid());
  CHECK_FALSE(more[4].valid());
  CHECK_FALSE(more[5].valid());
  CHECK_FALSE(more[6].valid());
  CHECK(a.check_invariants());
  // Ordinary allocations go around them.
  std::vector<allocation> rest;
  while (auto x = a.allocate(64)) rest.push_back(*x);
  CHECK(a.free_bytes() == 0);
  for (const allocation& x : rest)
    for (const auto& [addr, size] : want) CHECK((x.addr + x.size <= addr || x.addr >= addr + size));
  for (const allocation& x : rest) a.free(x);
  for (const allocation& x : got) a.free(x);
  a.free(more[3]);
  CHECK(a.check_invariants());
  CHECK(a.free_blocks() == block_list{{1024, 6400}});
  CHECK(a.allocation_count() == 0);
}

TEST_CASE("exhaustive: every size combination of 4 blocks freed in every order comes back whole") {
  // 4 blocks of 1..3 units in a 12-unit allocator (it fits exactly at the largest sizes), freed in
  // all 24 orders, under both carving policies.
  for (const std::uint64_t threshold : {0ull, 64ull * 2}) {
    for (int code = 0; code < 81; ++code) {
      std::uint64_t sizes[4];
      for (int i = 0, c = code; i < 4; ++i, c /= 3) sizes[i] = 64 * static_cast<std::uint64_t>(1 + c % 3);
      std::vector<int> order{0, 1, 2, 3};
      do {
        offset_allocator a(4096, 64 * 12, 64, threshold);
        std::map<std::uint64_t, std::uint64_t> live;
        allocation got[4];
        for (int i = 0; i < 4; ++i) {
          auto x = a.allocate(sizes[i]);
          REQUIRE(x.has_value());
          got[i] = *x;
          live.emplace(x->addr, x->size);
        }
        for (const int i : order) {
          a.free(got[i]);
          live.erase(got[i].addr);
          REQUIRE(a.check_invariants());
          REQUIRE(a.free_blocks() == complement(live, 4096, 64 * 12));
        }
        REQUIRE(a.free_blocks() == block_list{{4096, 64 * 12}});
      } while (std::next_permutation(order.begin(), order.end()));
    }
  }
}

TEST_CASE("random workload against a reference interval set") {
  for (const std::uint64_t seed : {1ull, 2ull, 3ull}) {
    std::mt19937_64 rng(seed);
    const std::uint64_t base = 1ull << 40, cap = 16ull << 20;
    offset_allocator a(base, cap);
    std::map<std::uint64_t, std::uint64_t> live;  // the reference
    std::vector<allocation> handles;
    std::uint64_t failures = 0;
    for (int step = 0; step < 20000; ++step) {
      const bool do_alloc = handles.empty() || rng() % 100 < 55;
      if (do_alloc) {
        // Sizes spread over many bins, including awkward ones in the middle of a bin.
        const std::uint64_t size = 1 + rng() % (rng() % 4 == 0 ? (1u << 20) : (1u << 14));
        const block_list free_ref = complement(live, base, cap);
        auto x = a.allocate(size);
        const std::uint64_t want = (size + 63) / 64 * 64;
        // Fails exactly when no free block of the reference holds the rounded size.
        REQUIRE(x.has_value() == (largest(free_ref) >= want));
        if (!x) {
          ++failures;
          continue;
        }
        REQUIRE(x->size == want);
        REQUIRE(x->addr >= base);
        REQUIRE(x->addr + x->size <= base + cap);
        // No overlap with the neighbours in address order.
        auto next = live.lower_bound(x->addr);
        if (next != live.end()) REQUIRE(x->addr + x->size <= next->first);
        if (next != live.begin()) {
          auto prev = std::prev(next);
          REQUIRE(prev->first + prev->second <= x->addr);
        }
        live.emplace(x->addr, x->size);
        handles.push_back(*x);
      } else {
        const std::size_t i = rng() % handles.size();
        a.free(handles[i]);
        live.erase(handles[i].addr);
        handles[i] = handles.back();
        handles.pop_back();
      }
      if (step % 97 == 0) {
        REQUIRE(a.check_invariants());
        const block_list free_ref = complement(live, base, cap);
        REQUIRE(a.free_blocks() == free_ref);
        const auto st = a.stats();
        const std::uint64_t used = std::accumulate(live.begin(), live.end(), std::uint64_t{0},
                                                   [](std::uint64_t s, const auto& kv) { return s + kv.second; });
        REQUIRE(st.used == used);
        REQUIRE(st.free == cap - used);
        REQUIRE(st.largest_free == largest(free_ref));
        REQUIRE(st.allocations == live.size());
      }
    }
    CHECK(failures > 0);  // the workload did reach the full state it is meant to check
    for (const allocation& h : handles) a.free(h);
    CHECK(a.free_blocks() == block_list{{base, cap}});
  }
}

namespace {

std::uint64_t mix_size(std::mt19937_64& rng) {
  const auto r = rng() % 100;
  return r < 70 ? 4096 : r < 90 ? 262144 : 3271557;  // 4 KiB 70 %, 256 KiB 20 %, 3.12 MiB 10 %
}

}  // namespace

TEST_CASE("utilisation on the KVCache mix stays above 95 % before the first failure") {
  for (const std::uint64_t seed : {1ull, 7ull}) {
    std::mt19937_64 rng(seed);
    offset_allocator a(0, 1ull << 30);
    std::vector<allocation> live;
    // From empty.
    for (;;) {
      auto x = a.allocate(mix_size(rng));
      if (!x) break;
      live.push_back(*x);
    }
    const double fill = static_cast<double>(a.used()) / static_cast<double>(a.capacity());
    CHECK(fill >= 0.95);
    // After churn at 80 %: random frees and allocations, then fill again to the first failure.
    while (static_cast<double>(a.used()) > 0.8 * static_cast<double>(a.capacity())) {
      const std::size_t i = rng() % live.size();
      a.free(live[i]);
      live[i] = live.back();
      live.pop_back();
    }
    for (int k = 0; k < 100000; ++k) {
      const std::size_t i = rng() % live.size();
      a.free(live[i]);
      live[i] = live.back();
      live.pop_back();
      if (auto x = a.allocate(mix_size(rng))) live.push_back(*x);
    }
    for (;;) {
      auto x = a.allocate(mix_size(rng));
      if (!x) break;
      live.push_back(*x);
    }
    const double churned = static_cast<double>(a.used()) / static_cast<double>(a.capacity());
    MESSAGE("seed " << seed << ": fill " << fill << ", after churn " << churned);
    CHECK(churned >= 0.95);
    CHECK(a.check_invariants());
  }
}
