// The per-segment space allocator of the master: hands out [addr, addr+size) ranges of a segment that
// lives in another process's memory, so it keeps its bookkeeping outside the managed range.
//
// TLSF-style: free blocks sit in size bins indexed by a two-level bitmap (a power of two, then 32
// linear steps inside it), so finding a bin that holds a fitting block is O(1). Sizes are only
// rounded up to the alignment, never to a bin size: the bins decide where to look, not how much to
// give (Mooncake's first offset allocator rounded requests to bin sizes and lost up to a third of the
// space on awkward sizes). A request first tries, with a few probes, the blocks of its own bin (they
// may be just large enough: first fit within the bin class), then takes the smallest larger bin,
// whose every block fits, and only when there is none scans the rest of its own bin: an allocation
// fails only when no free block fits. Small requests are carved from the top of a free block and large
// ones from the bottom, so small and large objects drift to opposite ends of the holes they share
// (on the 4 KiB / 256 KiB / 3.12 MiB mix this halves the fragmentation measure after churn). Freed
// blocks coalesce with free neighbours at once.
//
// Not thread-safe: the master guards it with its own lock.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <span>
#include <utility>
#include <vector>

namespace yutu::store {

// One allocated range. `node` identifies the allocator's record so that free() is O(1).
struct allocation {
  static constexpr std::uint32_t no_node = std::numeric_limits<std::uint32_t>::max();
  std::uint64_t addr = 0;  // absolute address (the allocator's base + offset)
  std::uint64_t size = 0;  // bytes reserved: the request rounded up to the alignment
  std::uint32_t node = no_node;

  bool valid() const noexcept { return node != no_node; }
  friend bool operator==(const allocation&, const allocation&) = default;
};

struct allocator_stats {
  std::uint64_t capacity = 0;
  std::uint64_t used = 0;  // reserved bytes, alignment rounding included
  std::uint64_t free = 0;
  std::uint64_t largest_free = 0;
  double fragmentation = 0;  // 1 - largest_free / free (0 when nothing is free)
  std::uint64_t allocations = 0;
};

class offset_allocator {
 public:
  static constexpr std::uint64_t default_alignment = 64;
  // Requests at least this large are carved from the bottom of a free block, smaller ones from the
  // top (see the header comment).
  static constexpr std::uint64_t default_large_threshold = 64 * 1024;

  // Manages [base, base + size), shrunk inward to whole `alignment` units (a power of two) and to
  // less than 2^63 bytes.
  offset_allocator(std::uint64_t base, std::uint64_t size, std::uint64_t alignment = default_alignment,
                   std::uint64_t large_threshold = default_large_threshold);

  offset_allocator(offset_allocator&&) noexcept = default;
  offset_allocator& operator=(offset_allocator&&) noexcept = default;
  offset_allocator(const offset_allocator&) = delete;
  offset_allocator& operator=(const offset_allocator&) = delete;

  // nullopt exactly when no free block holds the rounded size. A 0-byte request reserves one
  // alignment unit, so that every allocation has its own address.
  std::optional<allocation> allocate(std::uint64_t size);
  // Throws std::invalid_argument for an allocation this allocator did not hand out or already took
  // back: that is a broken invariant of the caller, not a run-time condition.
  void free(const allocation& a);
  // Takes exactly the given ranges, (absolute address, size) sorted by address, disjoint and
  // aligned, each wholly inside one free block: for a re-mounted segment, the ranges of its previous
  // mounting that a reader or writer may still touch. One walk over the blocks, O(blocks + ranges).
  // A range that is not wholly free (or not aligned, or outside the managed range) is skipped: its
  // allocation in the result is invalid().
  std::vector<allocation> reserve_ranges(std::span<const std::pair<std::uint64_t, std::uint64_t>> ranges);

  std::uint64_t base() const noexcept { return base_; }
  std::uint64_t capacity() const noexcept { return capacity_; }
  std::uint64_t alignment() const noexcept { return align_; }
  std::uint64_t used() const noexcept { return used_; }
  std::uint64_t free_bytes() const noexcept { return capacity_ - used_; }
  std::uint64_t allocation_count() const noexcept { return allocations_; }
  // The largest free block; scans only the highest non-empty bin.
  std::uint64_t largest_free() const noexcept;
  allocator_stats stats() const noexcept;
  // The request size rounded as allocate() would reserve it.
  std::uint64_t rounded(std::uint64_t size) const noexcept;

  // Walks every block and bin and checks the allocator's invariants (address order, no gap, no two
  // free neighbours, bins and bitmaps consistent, counters right). For tests; O(blocks).
  bool check_invariants() const;
  // Free blocks as (absolute address, size), in address order. For tests; O(blocks).
  std::vector<std::pair<std::uint64_t, std::uint64_t>> free_blocks() const;
  // A caller's word on an allocation (the master: which object owns it), 0 from allocate() on.
  // `a` must be live.
  void set_tag(const allocation& a, std::uint64_t tag) noexcept { tags_[a.node] = tag; }
  std::uint64_t tag(const allocation& a) const noexcept { return tags_[a.node]; }
  // Calls f(size, allocated, tag) for every block, free (tag 0) or not, in address order; the blocks
  // tile the managed range without gaps. O(blocks): for the master's search of a run of blocks to
  // evict when no free block is large enough.
  template <class F>
  void for_each_block(F&& f) const {
    for (std::uint32_t n = head_; n != none; n = nodes_[n].phys_next) {
      const bool used = is_used(n);
      f(nodes_[n].size, used, used ? tags_[n] : std::uint64_t{0});
    }
  }

 private:
  static constexpr std::uint32_t none = std::numeric_limits<std::uint32_t>::max();
  static constexpr unsigned sl_bits = 5;
  static constexpr unsigned sl_count = 1u << sl_bits;
  static constexpr unsigned fl_count = 64 - sl_bits + 1;
  static constexpr unsigned bin_count = fl_count * sl_count;
  // Blocks of the request's own bin looked at before moving to a larger bin.
  static constexpr unsigned same_bin_probes = 8;

  // 32 bytes, aligned: one cache line each, never two. A free reads its own record at random; whether
  // its neighbours are allocated comes from a bitmap small enough to stay in cache, so their records
  // are read only when they are free and must be merged.
  struct alignas(32) node {
    std::uint64_t offset = 0;
    std::uint64_t size = 0;
    std::uint32_t phys_prev = none;  // neighbours in address order
    std::uint32_t phys_next = none;
    std::uint32_t bin_prev = none;   // links in the bin's free list, or the node pool's free list
    std::uint32_t bin_next = none;
  };
  static_assert(sizeof(node) == 32);

  static unsigned bin_of(std::uint64_t size) noexcept;
  bool is_used(std::uint32_t n) const noexcept { return (used_bits_[n >> 6] >> (n & 63)) & 1u; }
  void set_used(std::uint32_t n, bool u) noexcept {
    const std::uint64_t bit = std::uint64_t{1} << (n & 63);
    used_bits_[n >> 6] = u ? used_bits_[n >> 6] | bit : used_bits_[n >> 6] & ~bit;
  }
  std::uint32_t new_node();
  void release_node(std::uint32_t n) noexcept;
  void insert_free(std::uint32_t n) noexcept;
  void remove_free(std::uint32_t n) noexcept;
  std::uint32_t find_in_larger_bins(unsigned bin) const noexcept;
  // Splits block n (not in a bin) at `at` bytes into it; the new upper record is returned.
  std::uint32_t split(std::uint32_t n, std::uint64_t at);

  std::uint64_t base_ = 0;
  std::uint64_t capacity_ = 0;
  std::uint64_t align_ = default_alignment;
  std::uint64_t large_threshold_ = default_large_threshold;
  std::uint64_t used_ = 0;
  std::uint64_t allocations_ = 0;
  std::uint32_t head_ = none;       // the block at offset 0
  std::uint32_t node_pool_ = none;  // recycled node records
  std::vector<node> nodes_;
  std::vector<std::uint64_t> used_bits_;  // bit n: record n is an allocated block
  std::vector<std::uint64_t> tags_;       // by record, beside them: read only by for_each_block
  std::uint64_t fl_bitmap_ = 0;
  std::vector<std::uint32_t> sl_bitmap_;  // fl_count words
  std::vector<std::uint32_t> bins_;       // bin_count list heads
};

}  // namespace yutu::store
