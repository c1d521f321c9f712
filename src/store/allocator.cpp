// offset_allocator: two-level bitmap bins over externally kept block records.
#include "yutu/store/allocator.hpp"

#include <algorithm>
#include <bit>
#include <stdexcept>

namespace yutu::store {

namespace {

std::uint64_t align_up(std::uint64_t v, std::uint64_t a) noexcept { return (v + a - 1) & ~(a - 1); }

}  // namespace

offset_allocator::offset_allocator(std::uint64_t base, std::uint64_t size, std::uint64_t alignment,
                                   std::uint64_t large_threshold)
    : align_(alignment), large_threshold_(large_threshold), sl_bitmap_(fl_count, 0), bins_(bin_count, none) {
  if (alignment == 0 || !std::has_single_bit(alignment)) {
    throw std::invalid_argument("offset_allocator: alignment must be a power of two");
  }
  const std::uint64_t start = align_up(base, alignment);
  base_ = start;
  if (start < base || size < start - base) {
    capacity_ = 0;
  } else {
    capacity_ = std::min(size - (start - base), (std::uint64_t{1} << 63) - 1) & ~(alignment - 1);
  }
  if (capacity_ > 0) {
    head_ = new_node();
    nodes_[head_].offset = 0;
    nodes_[head_].size = capacity_;
    insert_free(head_);
  }
}

// Sizes below 2^sl_bits get one bin each; above, the power of two picks the first level and the next
// sl_bits bits below the top bit pick one of 32 equal steps inside it.
unsigned offset_allocator::bin_of(std::uint64_t size) noexcept {
  if (size < sl_count) return static_cast<unsigned>(size);
  const unsigned msb = 63u - static_cast<unsigned>(std::countl_zero(size));
  const unsigned fl = msb - sl_bits + 1;
  const unsigned sl = static_cast<unsigned>(size >> (msb - sl_bits)) & (sl_count - 1);
  return fl * sl_count + sl;
}

std::uint32_t offset_allocator::new_node() {
  if (node_pool_ != none) {
    const std::uint32_t n = node_pool_;
    node_pool_ = nodes_[n].bin_next;
    nodes_[n] = node{};
    return n;
  }
  if (nodes_.size() >= none) throw std::length_error("offset_allocator: too many blocks");
  nodes_.emplace_back();
  tags_.push_back(0);
  if (used_bits_.size() * 64 < nodes_.size()) used_bits_.push_back(0);
  return static_cast<std::uint32_t>(nodes_.size() - 1);
}

void offset_allocator::release_node(std::uint32_t n) noexcept {
  set_used(n, false);
  nodes_[n].size = 0;
  nodes_[n].bin_next = node_pool_;
  node_pool_ = n;
}

void offset_allocator::insert_free(std::uint32_t n) noexcept {
  node& b = nodes_[n];
  const unsigned bin = bin_of(b.size);
  set_used(n, false);
  b.bin_prev = none;
  b.bin_next = bins_[bin];
  if (b.bin_next != none) nodes_[b.bin_next].bin_prev = n;
  bins_[bin] = n;
  const unsigned fl = bin / sl_count;
  sl_bitmap_[fl] |= 1u << (bin % sl_count);
  fl_bitmap_ |= std::uint64_t{1} << fl;
}

void offset_allocator::remove_free(std::uint32_t n) noexcept {
  node& b = nodes_[n];
  const unsigned bin = bin_of(b.size);
  if (b.bin_prev != none) {
    nodes_[b.bin_prev].bin_next = b.bin_next;
  } else {
    bins_[bin] = b.bin_next;
  }
  if (b.bin_next != none) nodes_[b.bin_next].bin_prev = b.bin_prev;
  b.bin_prev = b.bin_next = none;
  if (bins_[bin] == none) {
    const unsigned fl = bin / sl_count;
    sl_bitmap_[fl] &= ~(1u << (bin % sl_count));
    if (sl_bitmap_[fl] == 0) fl_bitmap_ &= ~(std::uint64_t{1} << fl);
  }
}

// The head of the smallest non-empty bin above `bin`: every block in it is larger than every size
// that maps to `bin`.
std::uint32_t offset_allocator::find_in_larger_bins(unsigned bin) const noexcept {
  unsigned fl = bin / sl_count;
  const unsigned sl = bin % sl_count;
  std::uint32_t sl_map = sl + 1 < sl_count ? sl_bitmap_[fl] & (~0u << (sl + 1)) : 0;
  if (sl_map == 0) {
    const std::uint64_t fl_map = fl + 1 < 64 ? fl_bitmap_ & (~std::uint64_t{0} << (fl + 1)) : 0;
    if (fl_map == 0) return none;
    fl = static_cast<unsigned>(std::countr_zero(fl_map));
    sl_map = sl_bitmap_[fl];
  }
  return bins_[fl * sl_count + static_cast<unsigned>(std::countr_zero(sl_map))];
}

std::uint64_t offset_allocator::rounded(std::uint64_t size) const noexcept {
  if (size == 0) return align_;
  if (size > std::numeric_limits<std::uint64_t>::max() - align_) return 0;
  return align_up(size, align_);
}

std::optional<allocation> offset_allocator::allocate(std::uint64_t size) {
  const std::uint64_t want = rounded(size);
  if (want == 0 || want > capacity_ - used_) return std::nullopt;

  const unsigned bin = bin_of(want);
  std::uint32_t n = bins_[bin];
  std::uint32_t resume = none;
  for (unsigned probes = 0; n != none && nodes_[n].size < want; ++probes) {
    if (probes + 1 == same_bin_probes) {
      resume = nodes_[n].bin_next;
      n = none;
      break;
    }
    n = nodes_[n].bin_next;
  }
  if (n == none) n = find_in_larger_bins(bin);
  // Nothing larger: finish the scan of the own bin, so that a request fails only when no free block
  // fits at all. This is the nearly-full case, where utilisation matters more than a few probes.
  for (std::uint32_t r = resume; n == none && r != none; r = nodes_[r].bin_next) {
    if (nodes_[r].size >= want) n = r;
  }
  if (n == none) return std::nullopt;

  remove_free(n);
  const std::uint64_t rest = nodes_[n].size - want;
  std::uint32_t taken = n;
  if (rest > 0) {
    // Split; the record `n` keeps the lower address so that head_ never changes.
    const std::uint32_t r = new_node();
    node& b = nodes_[n];
    node& s = nodes_[r];
    s.phys_prev = n;
    s.phys_next = b.phys_next;
    if (b.phys_next != none) nodes_[b.phys_next].phys_prev = r;
    b.phys_next = r;
    if (want >= large_threshold_) {
      b.size = want;
      s.offset = b.offset + want;
      s.size = rest;
      insert_free(r);
    } else {
      b.size = rest;
      s.offset = b.offset + rest;
      s.size = want;
      insert_free(n);
      taken = r;
    }
  }
  set_used(taken, true);
  tags_[taken] = 0;
  used_ += want;
  ++allocations_;
  return allocation{base_ + nodes_[taken].offset, want, taken};
}

void offset_allocator::free(const allocation& a) {
  if (a.node >= nodes_.size()) throw std::invalid_argument("offset_allocator::free: unknown allocation");
  const std::uint32_t n = a.node;
  node& b = nodes_[n];
  if (!is_used(n) || base_ + b.offset != a.addr || b.size != a.size) {
    throw std::invalid_argument("offset_allocator::free: not a live allocation of this allocator");
  }
  used_ -= b.size;
  --allocations_;
  set_used(n, false);
  std::uint32_t keep = n;
  // Merge the next block into this one.
  if (const std::uint32_t nx = b.phys_next; nx != none && !is_used(nx)) {
    remove_free(nx);
    b.size += nodes_[nx].size;
    b.phys_next = nodes_[nx].phys_next;
    if (b.phys_next != none) nodes_[b.phys_next].phys_prev = n;
    release_node(nx);
  }
  // Merge this one into the previous block.
  if (const std::uint32_t pv = b.phys_prev; pv != none && !is_used(pv)) {
    remove_free(pv);
    node& p = nodes_[pv];
    p.size += b.size;
    p.phys_next = b.phys_next;
    if (p.phys_next != none) nodes_[p.phys_next].phys_prev = pv;
    release_node(n);
    keep = pv;
  }
  insert_free(keep);
}

std::uint32_t offset_allocator::split(std::uint32_t n, std::uint64_t at) {
  const std::uint32_t r = new_node();  // may move nodes_: no reference is held across it
  node& b = nodes_[n];
  node& s = nodes_[r];
  s.offset = b.offset + at;
  s.size = b.size - at;
  b.size = at;
  s.phys_prev = n;
  s.phys_next = b.phys_next;
  if (b.phys_next != none) nodes_[b.phys_next].phys_prev = r;
  b.phys_next = r;
  return r;
}

std::vector<allocation> offset_allocator::reserve_ranges(
    std::span<const std::pair<std::uint64_t, std::uint64_t>> ranges) {
  std::vector<allocation> out(ranges.size());
  std::uint32_t n = head_;
  for (std::size_t i = 0; i < ranges.size() && n != none; ++i) {
    const auto [addr, size] = ranges[i];
    if (size == 0 || addr < base_ || addr - base_ >= capacity_ || size > capacity_ - (addr - base_) ||
        (addr - base_) % align_ != 0 || size % align_ != 0)
      continue;
    const std::uint64_t off = addr - base_;
    while (n != none && nodes_[n].offset + nodes_[n].size <= off) n = nodes_[n].phys_next;
    if (n == none) break;
    if (is_used(n) || nodes_[n].offset > off || nodes_[n].offset + nodes_[n].size < off + size) continue;
    remove_free(n);
    if (nodes_[n].offset < off) {
      const std::uint32_t r = split(n, off - nodes_[n].offset);
      insert_free(n);
      n = r;
    }
    if (nodes_[n].size > size) insert_free(split(n, size));
    set_used(n, true);
    tags_[n] = 0;
    used_ += size;
    ++allocations_;
    out[i] = allocation{addr, size, n};
  }
  return out;
}

std::uint64_t offset_allocator::largest_free() const noexcept {
  if (fl_bitmap_ == 0) return 0;
  const unsigned fl = 63u - static_cast<unsigned>(std::countl_zero(fl_bitmap_));
  const unsigned sl = 31u - static_cast<unsigned>(std::countl_zero(sl_bitmap_[fl]));
  std::uint64_t best = 0;
  for (std::uint32_t n = bins_[fl * sl_count + sl]; n != none; n = nodes_[n].bin_next) {
    if (nodes_[n].size > best) best = nodes_[n].size;
  }
  return best;
}

allocator_stats offset_allocator::stats() const noexcept {
  allocator_stats s;
  s.capacity = capacity_;
  s.used = used_;
  s.free = capacity_ - used_;
  s.largest_free = largest_free();
  s.fragmentation = s.free == 0 ? 0.0 : 1.0 - static_cast<double>(s.largest_free) / static_cast<double>(s.free);
  s.allocations = allocations_;
  return s;
}

std::vector<std::pair<std::uint64_t, std::uint64_t>> offset_allocator::free_blocks() const {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  for (std::uint32_t n = head_; n != none; n = nodes_[n].phys_next) {
    if (!is_used(n)) out.emplace_back(base_ + nodes_[n].offset, nodes_[n].size);
  }
  return out;
}

bool offset_allocator::check_invariants() const {
  // Address order, contiguity, coalescing, counters.
  std::uint64_t expect = 0, used = 0, count = 0, free_count = 0;
  std::uint32_t prev = none;
  bool prev_free = false;
  for (std::uint32_t n = head_; n != none; n = nodes_[n].phys_next) {
    const node& b = nodes_[n];
    if (b.phys_prev != prev || b.offset != expect || b.size == 0 || b.size % align_ != 0) return false;
    if (!is_used(n) && prev_free) return false;
    if (is_used(n)) {
      used += b.size;
      ++count;
    } else {
      ++free_count;
    }
    prev_free = !is_used(n);
    expect += b.size;
    prev = n;
  }
  if (expect != capacity_ || used != used_ || count != allocations_) return false;
  // Bins: every listed block is free, in the right bin, doubly linked; bitmaps match.
  std::uint64_t listed = 0;
  for (unsigned bin = 0; bin < bin_count; ++bin) {
    const bool bit = (sl_bitmap_[bin / sl_count] >> (bin % sl_count)) & 1u;
    if (bit != (bins_[bin] != none)) return false;
    std::uint32_t p = none;
    for (std::uint32_t n = bins_[bin]; n != none; n = nodes_[n].bin_next) {
      const node& b = nodes_[n];
      if (is_used(n) || bin_of(b.size) != bin || b.bin_prev != p) return false;
      ++listed;
      p = n;
    }
  }
  for (unsigned fl = 0; fl < fl_count; ++fl) {
    if (((fl_bitmap_ >> fl) & 1u) != (sl_bitmap_[fl] != 0)) return false;
  }
  return listed == free_count;
}

}  // namespace yutu::store
