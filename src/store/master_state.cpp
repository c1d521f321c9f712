// master_state: the bookkeeping behind master_service, guarded by one mutex.
#include "yutu/store/master_state.hpp"

#include <sys/mman.h>

#include <algorithm>
#include <limits>
#include <new>
#include <mutex>
#include <optional>
#include <queue>
#include <random>
#include <stdexcept>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "yutu/store/allocator.hpp"
#include "yutu/store/placement.hpp"

namespace yutu::store {

std::string_view to_string(master_op op) noexcept {
  switch (op) {
    case master_op::mount_segment: return "mount_segment";
    case master_op::unmount_segment: return "unmount_segment";
    case master_op::ping: return "ping";
    case master_op::put_start: return "put_start";
    case master_op::put_end: return "put_end";
    case master_op::put_revoke: return "put_revoke";
    case master_op::upsert_start: return "upsert_start";
    case master_op::batch_put_start: return "batch_put_start";
    case master_op::batch_put_end: return "batch_put_end";
    case master_op::batch_put_revoke: return "batch_put_revoke";
    case master_op::get_replica_list: return "get_replica_list";
    case master_op::batch_get_replica_list: return "batch_get_replica_list";
    case master_op::match_prefix: return "match_prefix";
    case master_op::exist_key: return "exist_key";
    case master_op::batch_exist_key: return "batch_exist_key";
    case master_op::get_size: return "get_size";
    case master_op::remove: return "remove";
    case master_op::batch_remove: return "batch_remove";
    case master_op::remove_all: return "remove_all";
    case master_op::batch_put_commit: return "batch_put_commit";
    case master_op::count_: break;
  }
  return "unknown";
}

namespace {

using ms = std::chrono::milliseconds;

// Deliberately not noexcept: libstdc++ then keeps each node's hash code in the node, so a lookup
// compares codes before keys and walks a bucket without hashing every key in it again (the keys are
// longer than the small-string buffer, so each rehash was also a cache miss). perf on batched puts:
// the map's lookups were 40 % of the master's CPU time.
struct string_hash {
  using is_transparent = void;
  std::size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

template <class V>
using string_map = std::unordered_map<std::string, V, string_hash, std::equal_to<>>;

struct replica_slot {
  std::uint32_t segment = 0;
  std::uint32_t generation = 0;
  allocation alloc;
};

// One write of an object: its replicas and what its put asked for.
struct version {
  std::vector<replica_slot> replicas;
  std::uint64_t size = 0;
  client_id writer;
  time_point started{};
  bool hard_pin = false;
  std::chrono::milliseconds soft_pin_ttl{0};  // 0: not soft-pinned
  std::string group;
};

struct object_entry {
  std::string key;
  std::size_t hash = 0;  // string_hash of key, kept for the table's growth and erase
  version cur;            // readable once `complete`
  std::unique_ptr<version> pending;  // an upsert in flight over a complete object
  time_point lease_until{};
  time_point soft_pin_until{};
  time_point last_access{};
  // Exact LRU over complete objects that are not hard-pinned, oldest at the head.
  object_entry* lru_prev = nullptr;
  object_entry* lru_next = nullptr;
  // In-flight writes (first put or upsert) in start order, for the discard timeout.
  object_entry* fl_prev = nullptr;
  object_entry* fl_next = nullptr;
  // The small fields together, without padding between them: every key's entry is fresh memory.
  std::uint32_t group_pos = 0;
  bool complete = false;  // false: the first put is in flight
  bool in_lru = false;
  bool in_flight_list = false;
  bool victim = false;  // scratch mark of an eviction round

  bool in_flight() const noexcept { return !complete || pending != nullptr; }
  time_point flight_started() const noexcept { return pending ? pending->started : cur.started; }
};

// The objects by key: open addressing with linear probing over (hash code, entry) slots, the entries
// allocated one by one (the LRU and in-flight lists link them, so their addresses must not move).
// A miss costs one probe of a contiguous array, a hit one more load of the entry; growing moves the
// slots only. With std::unordered_map every lookup walked nodes of ~280 bytes whose hash codes sit at
// their end (two cache misses a node), and each growth walked all of them again: perf on batched puts
// put the map's lookups and rehashes at 60 % of the master's CPU time.
constexpr std::size_t huge_page = 2 << 20;

// Under AddressSanitizer the pool hands each block to operator new instead, so that a dangling
// pointer to a removed entry is still reported.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool pool_blocks = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool pool_blocks = false;
#else
constexpr bool pool_blocks = true;
#endif
#else
constexpr bool pool_blocks = true;
#endif

// Zeroed memory straight from the kernel, asked to be backed by huge pages. The master's table grows
// by a few hundred bytes a key: through malloc that was a page fault every dozen keys plus an
// mprotect each time a thread's arena grew (perf: 20 % of the master's CPU on batched puts).
void* map_huge(std::size_t bytes) {
  void* p = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  (void)::madvise(p, bytes, MADV_HUGEPAGE);  // advice only: without it, ordinary pages
  return p;
}

// Fixed-size blocks for the object entries, carved from huge_page-sized mappings and reused through a
// free list; the mappings go back only with the pool.
template <class T>
class block_pool {
 public:
  block_pool() = default;
  block_pool(const block_pool&) = delete;
  block_pool& operator=(const block_pool&) = delete;
  ~block_pool() {
    for (void* c : chunks_) ::munmap(c, huge_page);
  }

  void* allocate() {
    if constexpr (!pool_blocks) return ::operator new(sizeof(T));
    if (free_ != nullptr) {
      void* p = free_;
      free_ = *static_cast<void**>(p);
      return p;
    }
    if (next_ == end_) refill();
    void* p = next_;
    next_ += stride;
    return p;
  }
  void deallocate(void* p) noexcept {
    if constexpr (!pool_blocks) {
      ::operator delete(p);
      return;
    }
    *static_cast<void**>(p) = free_;
    free_ = p;
  }

 private:
  static constexpr std::size_t stride = (sizeof(T) + alignof(T) - 1) / alignof(T) * alignof(T);
  static_assert(stride >= sizeof(void*) && stride <= huge_page);

  void refill() {
    chunks_.reserve(chunks_.size() + 1);
    void* c = map_huge(huge_page);
    chunks_.push_back(c);
    next_ = static_cast<std::byte*>(c);
    end_ = next_ + huge_page / stride * stride;
  }

  std::vector<void*> chunks_;
  void* free_ = nullptr;
  std::byte* next_ = nullptr;
  std::byte* end_ = nullptr;
};

class object_table {
 public:
  object_table() = default;
  object_table(const object_table&) = delete;
  object_table& operator=(const object_table&) = delete;
  ~object_table() {
    for (std::size_t i = 0; i < cap_; ++i)
      if (slots_[i].e != nullptr) destroy(*slots_[i].e);
    free_slots(slots_, cap_);
  }

  std::size_t size() const noexcept { return size_; }

  // Starts loading the slot where `key`'s probe begins. A batch asks for a later key's slot while it
  // works on this one: with a million keys the slots are not in cache, and the miss was most of a
  // new key's lookup.
  void prefetch(std::string_view key) const noexcept {
    if (cap_ != 0) __builtin_prefetch(&slots_[string_hash{}(key) & mask_]);
  }

  object_entry* find(std::string_view key) const {
    if (size_ == 0) return nullptr;
    const std::size_t h = string_hash{}(key);
    for (std::size_t i = h & mask_;; i = (i + 1) & mask_) {
      const slot& s = slots_[i];
      if (s.e == nullptr) return nullptr;
      if (s.hash == h && s.e->key == key) return s.e;
    }
  }

  // The entry of `key`, and whether it was created (default-constructed, its key set).
  std::pair<object_entry*, bool> try_emplace(std::string_view key) {
    // At most 3/4 full: 16-byte slots put four to a cache line, so the longer runs cost less than
    // the memory a sparser array takes (each doubling is fresh memory to clear).
    if ((size_ + 1) * 4 > cap_ * 3) grow();
    const std::size_t h = string_hash{}(key);
    std::size_t i = h & mask_;
    for (;; i = (i + 1) & mask_) {
      const slot& s = slots_[i];
      if (s.e == nullptr) break;
      if (s.hash == h && s.e->key == key) return {s.e, false};
    }
    void* mem = pool_.allocate();
    object_entry* e = nullptr;
    try {
      e = new (mem) object_entry();
      e->key = std::string(key);
    } catch (...) {
      if (e != nullptr) e->~object_entry();
      pool_.deallocate(mem);
      throw;
    }
    e->hash = h;
    slots_[i] = slot{h, e};
    ++size_;
    return {e, true};
  }

  // Removes and deletes `o`, which must be in the table.
  void erase(object_entry& o) noexcept {
    std::size_t i = o.hash & mask_;
    while (slots_[i].e != &o) i = (i + 1) & mask_;
    // Backward-shift deletion: move each later slot of the run whose home is not in (i, j] into the
    // hole, so that no probe sequence crosses an empty slot.
    for (std::size_t j = i;;) {
      j = (j + 1) & mask_;
      const slot& s = slots_[j];
      if (s.e == nullptr) break;
      const std::size_t home = s.hash & mask_;
      const bool stays = i <= j ? (i < home && home <= j) : (i < home || home <= j);
      if (!stays) {
        slots_[i] = s;
        i = j;
      }
    }
    slots_[i] = slot{};
    --size_;
    destroy(o);
  }

  // Every entry, for the walks that may erase as they go (rare: unmount, remove_all).
  std::vector<object_entry*> entries() const {
    std::vector<object_entry*> out;
    out.reserve(size_);
    for (std::size_t i = 0; i < cap_; ++i)
      if (slots_[i].e != nullptr) out.push_back(slots_[i].e);
    return out;
  }

 private:
  struct slot {
    std::size_t hash = 0;
    object_entry* e = nullptr;
  };

  // Small arrays from new[], large ones (a huge page and more) from map_huge.
  static slot* alloc_slots(std::size_t n) {
    if (n * sizeof(slot) < huge_page) return new slot[n]();
    return static_cast<slot*>(map_huge(n * sizeof(slot)));  // zero bytes: every slot empty
  }
  static void free_slots(slot* p, std::size_t n) noexcept {
    if (p == nullptr) return;
    if (n * sizeof(slot) < huge_page) {
      delete[] p;
    } else {
      ::munmap(p, n * sizeof(slot));
    }
  }

  void grow() {
    const std::size_t n = std::max<std::size_t>(16, cap_ * 2);
    slot* fresh = alloc_slots(n);
    slot* old = std::exchange(slots_, fresh);
    const std::size_t old_cap = std::exchange(cap_, n);
    mask_ = n - 1;
    for (std::size_t k = 0; k < old_cap; ++k) {
      const slot& s = old[k];
      if (s.e == nullptr) continue;
      std::size_t i = s.hash & mask_;
      while (slots_[i].e != nullptr) i = (i + 1) & mask_;
      slots_[i] = s;
    }
    free_slots(old, old_cap);
  }

  void destroy(object_entry& o) noexcept {
    o.~object_entry();
    pool_.deallocate(&o);
  }

  block_pool<object_entry> pool_;  // declared first: the entries in it go before it does
  slot* slots_ = nullptr;
  std::size_t cap_ = 0;
  std::size_t mask_ = 0;
  std::size_t size_ = 0;
};

// How many keys ahead a batch prefetches the object table's slots (see object_table::prefetch).
constexpr std::size_t prefetch_distance = 4;

struct segment_entry {
  segment_info info;
  client_id owner;
  std::uint32_t host = 0;
  std::uint32_t generation = 0;
  bool mounted = false;
  std::unique_ptr<offset_allocator> alloc;
  time_point last_watermark_eviction{};
  time_point usable_from{};      // quarantined until then (see master_state.hpp)
  std::uint64_t fenced_bytes = 0;  // ranges of a previous mounting held back (see fence_ranges)
};

struct client_entry {
  time_point last_seen{};
  std::vector<std::uint32_t> segments;
};

struct deferred_free {
  time_point at{};
  std::uint32_t segment = 0;
  std::uint32_t generation = 0;
  allocation alloc;
  bool fence = false;  // a range of a previous mounting, held back (see fence_ranges)
  bool operator>(const deferred_free& o) const noexcept { return at > o.at; }
};

// Deferred frees, earliest first; an unmount reads them all to fence what they still hold.
struct deferred_queue : std::priority_queue<deferred_free, std::vector<deferred_free>, std::greater<>> {
  const std::vector<deferred_free>& items() const noexcept { return c; }
};

// A range of an unmounted segment that a reader (inside its lease) or a writer (inside
// put_start_timeout) may still touch, and until when.
struct fence {
  std::uint64_t addr = 0;
  std::uint64_t size = 0;
  time_point until{};
};

// What an unmounted segment's next mounting must hold back, by segment name.
struct quarantined {
  std::vector<fence> fences;
  time_point whole_until{};  // more fences than max_fences: the whole segment waits instead
  time_point until{};        // when none of it matters any more
};
// Beyond this many ranges a segment is held back whole: bounded memory for the bookkeeping.
constexpr std::size_t max_fences = std::size_t{1} << 20;

template <class T>
void record(master_metrics& m, master_op op, const result<T>& r) {
  ++m.requests[static_cast<std::size_t>(op)];
  if (!r) ++m.failures[static_cast<std::size_t>(op)];
}

template <class T>
void record_batch(master_metrics& m, master_op op, const std::vector<result<T>>& rs) {
  const auto i = static_cast<std::size_t>(op);
  ++m.requests[i];
  m.items[i] += rs.size();
  std::uint64_t failed = 0;
  for (const auto& r : rs) failed += r ? 0 : 1;
  m.failed_items[i] += failed;
  if (failed > 0) ++m.failures[i];
}

}  // namespace

struct master_state::impl {
  master_config cfg;
  clock_fn clock;
  placement_strategy strategy = placement_strategy::random;
  mutable std::mutex mu;

  std::vector<segment_entry> segments;  // index = segment slot id
  std::vector<std::uint32_t> free_slots;
  string_map<std::uint32_t> segment_by_name;
  string_map<std::uint32_t> host_ids;
  std::vector<placement_target> targets;  // mounted segments, rebuilt on mount/unmount
  std::vector<std::uint32_t> target_of_slot;
  std::uint64_t max_capacity = 0;  // of one mounted segment
  placer placer_;
  std::vector<placed_replica> placed;     // scratch
  std::vector<std::uint32_t> preferred;   // scratch

  object_table objects;
  object_entry* lru_head = nullptr;
  object_entry* lru_tail = nullptr;
  object_entry* fl_head = nullptr;
  object_entry* fl_tail = nullptr;
  string_map<std::vector<object_entry*>> groups;

  string_map<client_entry> clients;
  deferred_queue deferred;
  // Segment names unmounted while their replicas could still be read or written: which ranges, and
  // until when.
  string_map<quarantined> quarantine;
  time_point next_release = time_point::max();  // the earliest usable_from of a quarantined segment
  time_point last_maintenance{};
  bool maintained_once = false;
  // The last evict_run that found no run, and for how large a put: a smaller one may still find one.
  time_point run_search_futile_at{};
  std::uint64_t run_search_futile_size = 0;

  master_metrics m;

  impl(master_config c, clock_fn fn) : cfg(std::move(c)), clock(std::move(fn)) {
    if (!clock) clock = [] { return master_clock::now(); };
    auto s = parse_placement_strategy(cfg.placement_strategy);
    if (!s) throw std::invalid_argument("master_config: unknown placement strategy " + cfg.placement_strategy);
    strategy = *s;
    if (cfg.allocator_alignment == 0 || (cfg.allocator_alignment & (cfg.allocator_alignment - 1)) != 0) {
      throw std::invalid_argument("master_config: allocator_alignment must be a power of two");
    }
    if (!(cfg.eviction_ratio >= 0 && cfg.eviction_ratio <= 1) ||
        !(cfg.eviction_high_watermark_ratio >= 0 && cfg.eviction_high_watermark_ratio <= 1)) {
      throw std::invalid_argument("master_config: eviction ratios must lie in [0, 1]");
    }
    std::uint64_t seed = cfg.seed;
    if (seed == 0) seed = (std::uint64_t{std::random_device{}()} << 32) | std::random_device{}();
    placer_ = placer(seed);
  }

  // --- segments ---------------------------------------------------------------------------------

  void rebuild_targets(time_point now) {
    targets.clear();
    max_capacity = 0;
    next_release = time_point::max();
    target_of_slot.assign(segments.size(), UINT32_MAX);
    for (std::uint32_t i = 0; i < segments.size(); ++i) {
      const segment_entry& s = segments[i];
      if (!s.mounted) continue;
      if (s.usable_from > now) {
        next_release = std::min(next_release, s.usable_from);
        continue;
      }
      target_of_slot[i] = static_cast<std::uint32_t>(targets.size());
      targets.push_back(placement_target{s.alloc.get(), i, s.host});
      max_capacity = std::max(max_capacity, s.alloc->capacity());
    }
  }

  std::uint32_t host_id(std::string_view host) {
    auto it = host_ids.find(host);
    if (it != host_ids.end()) return it->second;
    const auto id = static_cast<std::uint32_t>(host_ids.size());
    host_ids.emplace(std::string(host), id);
    return id;
  }

  void free_now(const replica_slot& r) {
    segment_entry& s = segments[r.segment];
    if (s.mounted && s.generation == r.generation) s.alloc->free(r.alloc);
  }

  // Frees at `at`, or now if that has passed: memory someone may still touch waits until then.
  void free_at(const std::vector<replica_slot>& rs, time_point at, time_point now) {
    for (const replica_slot& r : rs) {
      if (at <= now) {
        free_now(r);
      } else {
        deferred.push(deferred_free{at, r.segment, r.generation, r.alloc});
        segment_entry& s = segments[r.segment];
        if (s.generation == r.generation && s.mounted) s.alloc->set_tag(r.alloc, 0);  // owned by nobody until freed
      }
    }
  }

  // Marks o's readable replicas as o's in their allocators, for evict_run. Every entry whose replicas
  // carry its address frees them (allocate() clears the mark) or clears the marks (free_at) before
  // it goes, so a mark never outlives its entry.
  void own(object_entry& o) noexcept {
    for (const replica_slot& r : o.cur.replicas) {
      segment_entry& s = segments[r.segment];
      if (s.mounted && s.generation == r.generation) s.alloc->set_tag(r.alloc, reinterpret_cast<std::uintptr_t>(&o));
    }
  }

  void run_deferred(time_point now) {
    while (!deferred.empty() && deferred.top().at <= now) {
      const deferred_free d = deferred.top();
      deferred.pop();
      segment_entry& s = segments[d.segment];
      if (d.fence && s.mounted && s.generation == d.generation) s.fenced_bytes -= d.alloc.size;
      free_now(replica_slot{d.segment, d.generation, d.alloc});
    }
  }

  result<void> mount(const client_id& client, const segment_info& seg, time_point now) {
    if (seg.name.empty() || seg.size == 0 || client.empty()) return fail(errc::invalid_params);
    if (auto it = segment_by_name.find(seg.name); it != segment_by_name.end()) {
      const segment_entry& s = segments[it->second];
      if (s.owner == client && s.info.base == seg.base && s.info.size == seg.size &&
          s.info.engine_segment == seg.engine_segment) {
        clients[client].last_seen = now;
        return ok();
      }
      return fail(errc::segment_already_exists);
    }
    auto alloc = std::make_unique<offset_allocator>(seg.base, seg.size, cfg.allocator_alignment);
    if (alloc->capacity() == 0) return fail(errc::invalid_params);
    std::uint32_t slot;
    if (!free_slots.empty()) {
      slot = free_slots.back();
      free_slots.pop_back();
    } else {
      slot = static_cast<std::uint32_t>(segments.size());
      segments.emplace_back();
    }
    segment_entry& s = segments[slot];
    s.info = seg;
    s.owner = client;
    s.host = host_id(seg.host);
    s.mounted = true;
    s.alloc = std::move(alloc);
    s.last_watermark_eviction = time_point{};
    s.usable_from = time_point{};
    s.fenced_bytes = 0;
    if (auto q = quarantine.find(seg.name); q != quarantine.end()) {
      if (q->second.whole_until > now) s.usable_from = q->second.whole_until;
      fence_ranges(slot, q->second.fences, now);
      quarantine.erase(q);
    }
    segment_by_name.emplace(seg.name, slot);
    client_entry& c = clients[client];
    c.last_seen = now;
    c.segments.push_back(slot);
    rebuild_targets(now);
    return ok();
  }

  // Takes the ranges of a previous mounting that someone may still touch out of the freshly mounted
  // segment `slot`, each until its own deadline: the rest of the segment takes new replicas at once.
  // (Holding the whole segment back instead cost a single-node cluster every put for up to 30 s
  // after a heartbeat gap, when clients held reservations there.)
  void fence_ranges(std::uint32_t slot, const std::vector<fence>& fences, time_point now) {
    segment_entry& s = segments[slot];
    const std::uint64_t a = s.alloc->alignment(), lo = s.alloc->base(), hi = lo + s.alloc->capacity();
    std::vector<fence> live;
    live.reserve(fences.size());
    for (const fence& f : fences) {
      if (f.until <= now || f.size == 0) continue;
      // Outward to whole allocator units, inside the managed range (the memory may have moved).
      std::uint64_t b = f.addr & ~(a - 1);
      std::uint64_t e = f.addr + f.size > f.addr ? (f.addr + f.size + a - 1) & ~(a - 1) : hi;
      b = std::max(b, lo);
      e = std::min(e, hi);
      if (b < e) live.push_back(fence{b, e - b, f.until});
    }
    std::sort(live.begin(), live.end(), [](const fence& x, const fence& y) { return x.addr < y.addr; });
    std::vector<fence> merged;
    for (const fence& f : live) {
      if (!merged.empty() && f.addr < merged.back().addr + merged.back().size) {
        fence& m_ = merged.back();
        m_.size = std::max(m_.addr + m_.size, f.addr + f.size) - m_.addr;
        m_.until = std::max(m_.until, f.until);
      } else {
        merged.push_back(f);
      }
    }
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    ranges.reserve(merged.size());
    for (const fence& f : merged) ranges.emplace_back(f.addr, f.size);
    const std::vector<allocation> got = s.alloc->reserve_ranges(ranges);
    for (std::size_t i = 0; i < got.size(); ++i) {
      if (!got[i].valid()) continue;  // cannot happen on a fresh allocator
      deferred.push(deferred_free{merged[i].until, slot, s.generation, got[i], true});
      s.fenced_bytes += got[i].size;
    }
  }

  // Drops every replica in the segment, then the segment.
  void unmount_slot(std::uint32_t slot) {
    const time_point now = clock();
    // What a reader (inside its lease) or a writer (inside put_start_timeout) may still touch through
    // a replica dropped here: the next mounting of this segment holds those ranges back until then.
    // Capped: no lease outlives default_kv_lease_ttl from now, and a write older than
    // put_start_timeout is stale.
    const time_point cap = now + std::max(cfg.default_kv_lease_ttl, cfg.put_start_timeout);
    quarantined q;
    const auto hold = [&](const allocation& al, time_point t) {
      t = std::min(t, cap);
      if (t <= now) return;
      q.until = std::max(q.until, t);
      if (q.fences.size() < max_fences) {
        q.fences.push_back(fence{al.addr, al.size, t});
      } else {
        q.whole_until = q.until;
      }
    };
    const auto drop = [slot, &hold](std::vector<replica_slot>& rs, time_point t) {
      for (const replica_slot& r : rs)
        if (r.segment == slot) hold(r.alloc, t);
      return std::erase_if(rs, [slot](const replica_slot& r) { return r.segment == slot; }) > 0;
    };
    for (object_entry* op : objects.entries()) {
      object_entry& o = *op;
      drop(o.cur.replicas, o.complete ? o.lease_until : o.cur.started + cfg.put_start_timeout);
      if (o.pending) {
        drop(o.pending->replicas, o.pending->started + cfg.put_start_timeout);
        if (o.pending->replicas.empty()) {
          o.pending.reset();
          unlink_flight(o);
        }
      }
      if (o.cur.replicas.empty()) {
        // Whatever is left of an upsert in flight has nothing to replace: drop it too.
        detach(o);
        if (o.pending) free_at(o.pending->replicas, o.pending->started + cfg.put_start_discard_timeout, clock());
        objects.erase(o);
      }
    }
    segment_entry& s = segments[slot];
    // Memory of this mounting whose free waits (a lease, a discarded write, or a fence of the
    // mounting before): the same holds for it.
    for (const deferred_free& d : deferred.items())
      if (d.segment == slot && d.generation == s.generation) hold(d.alloc, d.at);
    if (q.whole_until > now) q.fences.clear();
    // No entry of this name exists: the mount took (and erased) the last one.
    if (q.until > now) quarantine[s.info.name] = std::move(q);
    segment_by_name.erase(s.info.name);
    if (auto c = clients.find(s.owner); c != clients.end()) std::erase(c->second.segments, slot);
    s.mounted = false;
    ++s.generation;
    s.alloc.reset();
    s.owner.clear();
    s.usable_from = time_point{};
    s.fenced_bytes = 0;
    free_slots.push_back(slot);
    rebuild_targets(now);
  }

  // --- clients and maintenance ------------------------------------------------------------------

  void maintain(time_point now) {
    if (now >= next_release) rebuild_targets(now);  // a quarantine ended
    if (maintained_once && now - last_maintenance < cfg.maintenance_interval) {
      run_deferred(now);
      return;
    }
    tick_locked(now);
  }

  void tick_locked(time_point now) {
    if (now >= next_release) rebuild_targets(now);
    if (maintained_once && cfg.stall_threshold.count() > 0 && now - last_maintenance > cfg.stall_threshold) {
      // The master itself was not running: nobody could have heard the clients' heartbeats.
      const auto gap = now - last_maintenance;
      for (auto& [id, c] : clients) c.last_seen += gap;
      ++m.forgiven_stalls;
    }
    last_maintenance = now;
    maintained_once = true;
    for (auto it = clients.begin(); it != clients.end();) {
      if (now - it->second.last_seen > cfg.client_ttl) {
        const std::vector<std::uint32_t> segs = it->second.segments;
        for (const std::uint32_t s : segs) unmount_slot(s);
        it = clients.erase(it);
        ++m.expired_clients;
      } else {
        ++it;
      }
    }
    // Writes abandoned for put_start_discard_timeout: their writer is gone, the memory can be reused.
    while (fl_head && now - fl_head->flight_started() >= cfg.put_start_discard_timeout) {
      object_entry& o = *fl_head;
      ++m.discarded_puts;
      if (o.pending) {
        free_at(o.pending->replicas, now, now);
        o.pending.reset();
        unlink_flight(o);
      } else {
        erase_object(o, now, true);
      }
    }
    run_deferred(now);
    std::erase_if(quarantine, [now](const auto& q) { return q.second.until <= now; });
  }

  ping_result ping(const client_id& client, time_point now) {
    ping_result r;
    r.view_version = cfg.view_version;
    auto [it, inserted] = clients.try_emplace(client);
    it->second.last_seen = now;
    r.need_remount = inserted;
    return r;
  }

  // --- object lists -----------------------------------------------------------------------------

  void lru_unlink(object_entry& o) noexcept {
    if (!o.in_lru) return;
    (o.lru_prev ? o.lru_prev->lru_next : lru_head) = o.lru_next;
    (o.lru_next ? o.lru_next->lru_prev : lru_tail) = o.lru_prev;
    o.lru_prev = o.lru_next = nullptr;
    o.in_lru = false;
  }

  void touch(object_entry& o, time_point now) noexcept {
    o.last_access = now;
    lru_unlink(o);
    // Never evicted, so never in the list an eviction round walks.
    if (o.cur.hard_pin) return;
    o.lru_prev = lru_tail;
    o.lru_next = nullptr;
    (lru_tail ? lru_tail->lru_next : lru_head) = &o;
    lru_tail = &o;
    o.in_lru = true;
  }

  void link_flight(object_entry& o) noexcept {
    o.fl_prev = fl_tail;
    o.fl_next = nullptr;
    (fl_tail ? fl_tail->fl_next : fl_head) = &o;
    fl_tail = &o;
    o.in_flight_list = true;
  }

  void unlink_flight(object_entry& o) noexcept {
    if (!o.in_flight_list) return;
    (o.fl_prev ? o.fl_prev->fl_next : fl_head) = o.fl_next;
    (o.fl_next ? o.fl_next->fl_prev : fl_tail) = o.fl_prev;
    o.fl_prev = o.fl_next = nullptr;
    o.in_flight_list = false;
  }

  void group_add(object_entry& o) {
    if (o.cur.group.empty()) return;
    auto& members = groups[o.cur.group];
    o.group_pos = static_cast<std::uint32_t>(members.size());
    members.push_back(&o);
  }

  void group_remove(object_entry& o) {
    if (o.cur.group.empty()) return;
    auto it = groups.find(o.cur.group);
    if (it == groups.end()) return;
    auto& members = it->second;
    if (o.group_pos < members.size() && members[o.group_pos] == &o) {
      members[o.group_pos] = members.back();
      members[o.group_pos]->group_pos = o.group_pos;
      members.pop_back();
    }
    if (members.empty()) groups.erase(it);
  }

  // Out of every list; the replicas stay the caller's business.
  void detach(object_entry& o) {
    lru_unlink(o);
    unlink_flight(o);
    if (o.complete) group_remove(o);
  }

  // Removes the object, freeing its replicas now (`immediate`) or when nobody can touch them any
  // more: a lease for the readable version, the discard timeout for a write in flight.
  void erase_object(object_entry& o, time_point now, bool immediate) {
    detach(o);
    if (immediate) {
      free_at(o.cur.replicas, now, now);
      if (o.pending) free_at(o.pending->replicas, now, now);
    } else {
      if (o.complete) {
        free_at(o.cur.replicas, o.lease_until, now);
      } else {
        free_at(o.cur.replicas, o.cur.started + cfg.put_start_discard_timeout, now);
      }
      if (o.pending) free_at(o.pending->replicas, o.pending->started + cfg.put_start_discard_timeout, now);
    }
    objects.erase(o);
  }

  // --- placement and eviction -------------------------------------------------------------------

  bool leased(const object_entry& o, time_point now) const noexcept { return o.lease_until > now; }
  bool soft_pinned(const object_entry& o, time_point now) const noexcept { return o.soft_pin_until > now; }
  bool is_protected(const object_entry& o, time_point now) const noexcept {
    return !o.complete || o.pending || o.cur.hard_pin || leased(o, now);
  }

  static std::uint64_t bytes_in(const object_entry& o, std::optional<std::uint32_t> seg) noexcept {
    std::uint64_t b = 0;
    for (const replica_slot& r : o.cur.replicas) {
      if (!seg || r.segment == *seg) b += r.alloc.size;
    }
    return b;
  }

  // Frees at least `target` bytes (counted in segment `seg` only, if given) in LRU order. Returns the
  // bytes freed as counted.
  std::uint64_t evict(std::uint64_t target, std::optional<std::uint32_t> seg, time_point now) {
    ++m.attempted_evictions;
    std::vector<object_entry*> victims;
    std::uint64_t freed = 0;
    for (const bool allow_soft : {false, true}) {
      for (object_entry* o = lru_head; o && freed < target; o = o->lru_next) {
        if (o->victim || (seg && bytes_in(*o, seg) == 0) || !evictable(*o, allow_soft, now)) continue;
        freed += take_victim(*o, seg, victims);
      }
    }
    erase_victims(victims, now);
    return freed;
  }

  // Takes o, or its whole group, as victims, each object once. Returns the bytes taken (in `seg`
  // only, if given).
  std::uint64_t take_victim(object_entry& o, std::optional<std::uint32_t> seg, std::vector<object_entry*>& victims) {
    auto take = [&](object_entry& x) -> std::uint64_t {
      if (x.victim) return 0;
      x.victim = true;
      victims.push_back(&x);
      return bytes_in(x, seg);
    };
    if (o.cur.group.empty()) return take(o);
    std::uint64_t taken = 0;
    for (object_entry* x : groups.at(o.cur.group)) taken += take(*x);
    return taken;
  }

  void erase_victims(const std::vector<object_entry*>& victims, time_point now) {
    for (object_entry* o : victims) {
      m.evicted_bytes += bytes_in(*o, std::nullopt);
      erase_object(*o, now, true);
    }
    m.evicted_keys += victims.size();
    if (!victims.empty()) ++m.successful_evictions;
  }

  // May `o` go in an eviction round (soft-pinned ones only when allow_soft)? A grouped object only
  // with every member of its group.
  bool evictable(const object_entry& o, bool allow_soft, time_point now) const {
    auto ok = [&](const object_entry& x) { return !is_protected(x, now) && (allow_soft || !soft_pinned(x, now)); };
    if (!ok(o)) return false;
    if (o.cur.group.empty()) return true;
    const auto& members = groups.at(o.cur.group);
    return std::all_of(members.begin(), members.end(), [&](const object_entry* x) { return ok(*x); });
  }

  // The last resort of a put that nothing could place, LRU eviction included: the free bytes lie in
  // holes none of which fits, between objects LRU eviction did not reach or may not take (leased,
  // pinned, in flight, reserved, or freed later). Finds, over the segments, the run of adjacent
  // blocks, each free or held by an evictable object, that covers `size` with the fewest bytes of
  // live objects, evicts exactly those (soft-pinned ones only if no run avoids them), and allocates
  // the replica there. Without it a segment half free could refuse every large put for as long as
  // small objects were scattered over it. The owner of each block is the mark own() left in the
  // allocator, so the search walks the blocks of each segment once and no object list: O(blocks),
  // under the lock, on this failure path only; a search that finds nothing is not repeated within
  // eviction_min_interval for a put as large or larger.
  bool evict_run(std::uint64_t size, time_point now) {
    if (run_search_futile_at != time_point{} && now - run_search_futile_at < cfg.eviction_min_interval &&
        size >= run_search_futile_size) {
      return false;
    }
    struct block {
      std::uint64_t size;
      std::uint64_t live;  // bytes of an evictable object; 0: free
      object_entry* o;
    };
    struct best_run {
      std::uint64_t cost = std::numeric_limits<std::uint64_t>::max();
      std::uint32_t target = 0;
      std::size_t first = 0, last = 0;
    };
    std::vector<block> blocks, best_blocks;
    for (const bool allow_soft : {false, true}) {
      best_run best;
      for (std::uint32_t t = 0; t < targets.size(); ++t) {
        const offset_allocator& a = *targets[t].alloc;
        const std::uint64_t need = a.rounded(size);
        if (need > a.capacity()) continue;
        blocks.clear();
        bool improved = false;
        std::size_t first = 0;
        std::uint64_t len = 0, cost = 0;
        a.for_each_block([&](std::uint64_t bsize, bool used, std::uint64_t tag) {
          // The owner of an allocated block, from the mark own() left (0: a write in flight, a
          // reservation, memory waiting for its readers).
          auto* o = reinterpret_cast<object_entry*>(static_cast<std::uintptr_t>(tag));
          if (used && (o == nullptr || !evictable(*o, allow_soft, now))) {
            // No run crosses this block.
            blocks.push_back(block{bsize, 0, nullptr});
            first = blocks.size();
            len = cost = 0;
            return;
          }
          blocks.push_back(block{bsize, used ? bsize : 0, o});
          len += bsize;
          cost += blocks.back().live;
          while (len - blocks[first].size >= need) {
            len -= blocks[first].size;
            cost -= blocks[first].live;
            ++first;
          }
          if (len >= need && cost < best.cost) {
            best = best_run{cost, t, first, blocks.size() - 1};
            improved = true;
          }
        });
        if (improved) best_blocks.assign(blocks.begin() + static_cast<std::ptrdiff_t>(best.first),
                                         blocks.begin() + static_cast<std::ptrdiff_t>(best.last) + 1);
      }
      if (best.cost == std::numeric_limits<std::uint64_t>::max()) continue;
      std::vector<object_entry*> victims;
      for (const block& b : best_blocks)
        if (b.o) take_victim(*b.o, std::nullopt, victims);
      ++m.attempted_evictions;
      erase_victims(victims, now);
      const placement_target& t = targets[best.target];
      auto a = t.alloc->allocate(size);
      if (!a) return false;  // cannot happen: the run coalesced into one free block of at least `need`
      placed.push_back(placed_replica{t.id, t.host, *a});
      ++m.run_evictions;
      run_search_futile_at = time_point{};
      return true;
    }
    run_search_futile_at = now;
    run_search_futile_size = size;
    return false;
  }

  std::uint64_t total_capacity() const noexcept {
    std::uint64_t c = 0;
    for (const placement_target& t : targets) c += t.alloc->capacity();
    return c;
  }

  void watermark_check(time_point now) {
    if (!cfg.enable_eviction) return;
    for (const placed_replica& p : placed) {
      segment_entry& s = segments[p.segment];
      const auto cap = static_cast<double>(s.alloc->capacity());
      if (static_cast<double>(s.alloc->used()) <= cfg.eviction_high_watermark_ratio * cap) continue;
      if (s.last_watermark_eviction != time_point{} && now - s.last_watermark_eviction < cfg.eviction_min_interval) {
        continue;
      }
      s.last_watermark_eviction = now;
      evict(static_cast<std::uint64_t>(cfg.eviction_ratio * cap), p.segment, now);
    }
  }

  result<std::vector<replica_slot>> allocate_replicas(const client_id& client, std::uint64_t size,
                                                      const replicate_config& rc, time_point now) {
    // Larger than any segment: no eviction can help, so none is attempted.
    if (targets.empty() || size > max_capacity) return fail(errc::no_available_handle);
    placement_request req;
    req.size = size;
    req.replicas = rc.replica_num;
    req.strategy = rc.prefer_local ? placement_strategy::local_first : strategy;
    if (req.strategy == placement_strategy::local_first) {
      if (!rc.local_host.empty()) {
        if (auto h = host_ids.find(rc.local_host); h != host_ids.end()) req.local_host = h->second;
      } else if (auto c = clients.find(client); c != clients.end() && !c->second.segments.empty()) {
        req.local_host = segments[c->second.segments.front()].host;
      }
    }
    preferred.clear();
    for (const std::string& name : rc.preferred_segments) {
      if (auto it = segment_by_name.find(name); it != segment_by_name.end()) {
        preferred.push_back(target_of_slot[it->second]);
        continue;
      }
      for (std::uint32_t t = 0; t < targets.size(); ++t) {
        if (segments[targets[t].id].info.engine_segment == name) preferred.push_back(t);
      }
    }
    req.preferred = preferred;

    placed.clear();
    placer_.place(targets, req, placed);
    const std::size_t reachable = std::min(req.replicas, targets.size());
    if (placed.size() < reachable && cfg.enable_eviction) {
      const auto round = static_cast<std::uint64_t>(cfg.eviction_ratio * static_cast<double>(total_capacity()));
      evict(std::max<std::uint64_t>(round, size * (reachable - placed.size())), std::nullopt, now);
      placer_.place(targets, req, placed);
      // Only a put that would fail evicts a run: a missing second replica is not worth it.
      if (placed.empty() && evict_run(size, now)) placer_.place(targets, req, placed);
    }
    if (placed.empty()) return fail(errc::no_available_handle);
    watermark_check(now);
    std::vector<replica_slot> out;
    out.reserve(placed.size());
    for (const placed_replica& p : placed) out.push_back(replica_slot{p.segment, segments[p.segment].generation, p.alloc});
    return out;
  }

  std::vector<replica_desc> describe(const std::vector<replica_slot>& rs, replica_status st) const {
    std::vector<replica_desc> out;
    out.reserve(rs.size());
    for (const replica_slot& r : rs) {
      const segment_entry& s = segments[r.segment];
      out.push_back(replica_desc{s.info.name, s.info.engine_segment, r.alloc.addr, r.alloc.size, st});
    }
    return out;
  }

  // --- operations (lock held) -------------------------------------------------------------------

  static bool stale(const object_entry& o, const master_config& c, time_point now) noexcept {
    return now - o.flight_started() >= c.put_start_timeout;
  }

  version make_version(const client_id& client, std::uint64_t size, const replicate_config& rc, time_point now,
                       std::vector<replica_slot> rs) const {
    version v;
    v.replicas = std::move(rs);
    v.size = size;
    v.writer = client;
    v.started = now;
    v.hard_pin = rc.with_hard_pin;
    if (rc.with_soft_pin) {
      v.soft_pin_ttl = rc.soft_pin_ttl.count() > 0 ? rc.soft_pin_ttl : cfg.default_kv_soft_pin_ttl;
      v.soft_pin_ttl = std::min(v.soft_pin_ttl, cfg.max_soft_pin_ttl);
    }
    v.group = rc.group_id;
    return v;
  }

  result<std::vector<replica_desc>> put_start(const client_id& client, std::string_view key, std::uint64_t size,
                                              const replicate_config& rc, bool upsert, time_point now) {
    if (key.empty()) return fail(errc::invalid_key);
    if (size == 0 || rc.replica_num == 0) return fail(errc::invalid_params);
    // One probe for a new key: its entry is created now, and dropped again if no replica fits.
    auto [op, inserted] = objects.try_emplace(key);
    if (inserted) {
      auto rs = [&] {
        try {
          return allocate_replicas(client, size, rc, now);
        } catch (...) {
          objects.erase(*op);  // no half-made key left behind
          throw;
        }
      }();
      if (!rs) {
        objects.erase(*op);
        return fail(rs.error());
      }
      return start(*op, client, size, rc, now, std::move(*rs));
    }
    {
      object_entry& o = *op;
      if (!o.complete) {
        if (!stale(o, cfg, now)) return fail(errc::object_already_exists);
        ++m.preempted_puts;
        erase_object(o, now, false);
      } else if (!upsert) {
        return fail(errc::object_already_exists);
      } else {
        if (o.pending) {
          if (!stale(o, cfg, now)) return fail(errc::object_already_exists);
          ++m.preempted_puts;
          free_at(o.pending->replicas, o.pending->started + cfg.put_start_discard_timeout, now);
          o.pending.reset();
          unlink_flight(o);
        }
        auto rs = allocate_replicas(client, size, rc, now);
        if (!rs) return fail(rs.error());
        // Eviction inside the allocation may have taken the object itself.
        object_entry* o2p = objects.find(key);
        if (o2p == nullptr) {
          return start_new(client, key, size, rc, now, std::move(*rs));
        }
        object_entry& o2 = *o2p;
        o2.pending = std::make_unique<version>(make_version(client, size, rc, now, std::move(*rs)));
        link_flight(o2);
        return describe(o2.pending->replicas, replica_status::processing);
      }
    }
    auto rs = allocate_replicas(client, size, rc, now);
    if (!rs) return fail(rs.error());
    return start_new(client, key, size, rc, now, std::move(*rs));
  }

  result<std::vector<replica_desc>> start_new(const client_id& client, std::string_view key, std::uint64_t size,
                                              const replicate_config& rc, time_point now,
                                              std::vector<replica_slot> rs) {
    return start(*objects.try_emplace(key).first, client, size, rc, now, std::move(rs));
  }

  result<std::vector<replica_desc>> start(object_entry& o, const client_id& client, std::uint64_t size,
                                          const replicate_config& rc, time_point now, std::vector<replica_slot> rs) {
    o.cur = make_version(client, size, rc, now, std::move(rs));
    o.complete = false;
    link_flight(o);
    return describe(o.cur.replicas, replica_status::processing);
  }

  void apply_pins(object_entry& o, time_point now) noexcept {
    o.soft_pin_until = o.cur.soft_pin_ttl.count() > 0 ? now + o.cur.soft_pin_ttl : time_point{};
  }

  result<void> put_end(const client_id& client, std::string_view key, time_point now) {
    object_entry* op = objects.find(key);
    if (op == nullptr) return fail(errc::object_not_found);
    object_entry& o = *op;
    if (!o.complete) {
      if (o.cur.writer != client) return fail(errc::illegal_client);
      o.complete = true;
      own(o);
      unlink_flight(o);
      apply_pins(o, now);
      group_add(o);
      touch(o, now);
      return ok();
    }
    if (!o.pending) return fail(errc::invalid_write);
    if (o.pending->writer != client) return fail(errc::illegal_client);
    // Readers holding a lease on the old version keep reading it until the lease ends.
    free_at(o.cur.replicas, o.lease_until, now);
    group_remove(o);
    o.cur = std::move(*o.pending);
    o.pending.reset();
    own(o);
    unlink_flight(o);
    apply_pins(o, now);
    group_add(o);
    touch(o, now);
    return ok();
  }

  result<void> put_revoke(const client_id& client, std::string_view key, time_point now) {
    object_entry* op = objects.find(key);
    if (op == nullptr) return fail(errc::object_not_found);
    object_entry& o = *op;
    if (!o.complete) {
      if (o.cur.writer != client) return fail(errc::illegal_client);
      erase_object(o, now, true);
      return ok();
    }
    if (!o.pending) return fail(errc::invalid_write);
    if (o.pending->writer != client) return fail(errc::illegal_client);
    free_at(o.pending->replicas, now, now);
    o.pending.reset();
    unlink_flight(o);
    return ok();
  }

  // A reservation (a first put in flight under a placeholder key) becomes `key`, complete: the
  // version moves over, replicas and all, and the placeholder's entry goes.
  result<void> put_commit(const client_id& client, std::string_view placeholder, std::string_view key,
                          time_point now) {
    object_entry* pp = objects.find(placeholder);
    if (pp == nullptr) return fail(errc::object_not_found);
    if (pp->complete || pp->pending) return fail(errc::invalid_write);
    if (pp->cur.writer != client) return fail(errc::illegal_client);
    // Past put_start_timeout the placeholder's memory may have been quarantined and handed out again
    // after an unmount: the bytes written there are not trusted.
    if (stale(*pp, cfg, now)) return fail(errc::invalid_write);
    auto [kp, inserted] = objects.try_emplace(key);
    if (!inserted) {
      object_entry& k = *kp;
      if (&k == pp || k.complete || !stale(k, cfg, now)) return fail(errc::object_already_exists);
      ++m.preempted_puts;
      erase_object(k, now, false);
      kp = objects.try_emplace(key).first;
    }
    object_entry& p = *pp;
    object_entry& o = *kp;
    o.cur = std::move(p.cur);
    unlink_flight(p);
    objects.erase(p);
    o.complete = true;
    own(o);
    apply_pins(o, now);
    group_add(o);
    touch(o, now);
    return ok();
  }

  result<replica_list> get(std::string_view key, time_point now) {
    object_entry* op = objects.find(key);
    if (op == nullptr) return fail(errc::object_not_found);
    object_entry& o = *op;
    if (!o.complete) return fail(errc::replica_is_not_ready);
    return lease(o, now);
  }

  replica_list lease(object_entry& o, time_point now) {
    o.lease_until = std::max(o.lease_until, now + cfg.default_kv_lease_ttl);
    touch(o, now);
    replica_list l;
    l.size = o.cur.size;
    l.replicas = describe(o.cur.replicas, replica_status::complete);
    l.lease_ttl = cfg.default_kv_lease_ttl;
    return l;
  }

  result<void> remove(std::string_view key, bool force, time_point now) {
    object_entry* op = objects.find(key);
    if (op == nullptr) return fail(errc::object_not_found);
    object_entry& o = *op;
    if (!force) {
      if (o.in_flight()) return fail(errc::replica_is_not_ready);
      if (leased(o, now)) return fail(errc::object_has_lease);
    }
    erase_object(o, now, false);
    return ok();
  }

  std::uint64_t remove_all(bool force, time_point now) {
    std::uint64_t n = 0;
    for (object_entry* op : objects.entries()) {
      object_entry& o = *op;
      if (!force && (o.in_flight() || leased(o, now))) continue;
      erase_object(o, now, false);
      ++n;
    }
    return n;
  }

  // --- reporting --------------------------------------------------------------------------------

  master_metrics snapshot() const {
    master_metrics r = m;
    for (const placement_target& t : targets) {
      r.total_capacity += t.alloc->capacity();
      r.allocated += t.alloc->used();
    }
    r.key_count = objects.size();
    r.segment_count = targets.size();
    const time_point now = clock();
    for (const segment_entry& s : segments) {
      r.quarantined_segments += s.mounted && s.usable_from > now ? 1 : 0;
      if (s.mounted) r.fenced_bytes += s.fenced_bytes;
    }
    r.active_clients = clients.size();
    return r;
  }
};

master_state::master_state(master_config cfg, clock_fn clock)
    : impl_(std::make_unique<impl>(std::move(cfg), std::move(clock))) {}

master_state::~master_state() = default;

const master_config& master_state::config() const noexcept { return impl_->cfg; }

// --- synchronous cores ------------------------------------------------------------------------------

result<void> master_state::mount_segment_sync(const client_id& client, const segment_info& seg) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->mount(client, seg, now);
  record(impl_->m, master_op::mount_segment, r);
  return r;
}

result<void> master_state::unmount_segment_sync(const client_id& client, std::string_view segment_name) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  result<void> r = ok();
  if (auto it = impl_->segment_by_name.find(segment_name); it == impl_->segment_by_name.end()) {
    r = fail(errc::segment_not_found);
  } else if (impl_->segments[it->second].owner != client) {
    r = fail(errc::illegal_client);
  } else {
    impl_->unmount_slot(it->second);
  }
  record(impl_->m, master_op::unmount_segment, r);
  return r;
}

result<ping_result> master_state::ping_sync(const client_id& client) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  // Maintenance first: a client silent past its TTL is expired before this ping could revive it.
  impl_->maintain(now);
  result<ping_result> r = client.empty() ? result<ping_result>(fail(errc::invalid_params)) : impl_->ping(client, now);
  record(impl_->m, master_op::ping, r);
  return r;
}

result<std::vector<replica_desc>> master_state::put_start_sync(const client_id& client, std::string_view key,
                                                               std::uint64_t size, const replicate_config& cfg) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->put_start(client, key, size, cfg, false, now);
  record(impl_->m, master_op::put_start, r);
  return r;
}

result<std::vector<replica_desc>> master_state::upsert_start_sync(const client_id& client, std::string_view key,
                                                                  std::uint64_t size, const replicate_config& cfg) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->put_start(client, key, size, cfg, true, now);
  record(impl_->m, master_op::upsert_start, r);
  return r;
}

result<void> master_state::put_end_sync(const client_id& client, std::string_view key) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->put_end(client, key, now);
  record(impl_->m, master_op::put_end, r);
  return r;
}

result<void> master_state::put_revoke_sync(const client_id& client, std::string_view key) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->put_revoke(client, key, now);
  record(impl_->m, master_op::put_revoke, r);
  return r;
}

std::vector<result<std::vector<replica_desc>>> master_state::batch_put_start_sync(
    const client_id& client, std::span<const std::string> keys, std::span<const std::uint64_t> sizes,
    const replicate_config& cfg) {
  std::vector<result<std::vector<replica_desc>>> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (sizes.size() != keys.size()) {
      out.emplace_back(fail(errc::invalid_params));
    } else {
      if (i + prefetch_distance < keys.size()) impl_->objects.prefetch(keys[i + prefetch_distance]);
      out.push_back(impl_->put_start(client, keys[i], sizes[i], cfg, false, now));
    }
  }
  record_batch(impl_->m, master_op::batch_put_start, out);
  return out;
}

std::vector<result<void>> master_state::batch_put_end_sync(const client_id& client,
                                                           std::span<const std::string> keys) {
  std::vector<result<void>> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i + prefetch_distance < keys.size()) impl_->objects.prefetch(keys[i + prefetch_distance]);
    out.push_back(impl_->put_end(client, keys[i], now));
  }
  record_batch(impl_->m, master_op::batch_put_end, out);
  return out;
}

std::vector<result<void>> master_state::batch_put_commit_sync(const client_id& client,
                                                              std::span<const std::string> placeholders,
                                                              std::span<const std::string> keys) {
  std::vector<result<void>> out;
  std::lock_guard lock(impl_->mu);
  if (placeholders.size() != keys.size()) {
    out.assign(std::max(placeholders.size(), keys.size()), fail(errc::invalid_params));
  } else {
    out.reserve(keys.size());
    const time_point now = impl_->clock();
    impl_->maintain(now);
    for (std::size_t i = 0; i < keys.size(); ++i) out.push_back(impl_->put_commit(client, placeholders[i], keys[i], now));
  }
  record_batch(impl_->m, master_op::batch_put_commit, out);
  return out;
}

std::vector<result<void>> master_state::batch_put_revoke_sync(const client_id& client,
                                                              std::span<const std::string> keys) {
  std::vector<result<void>> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  for (const std::string& k : keys) out.push_back(impl_->put_revoke(client, k, now));
  record_batch(impl_->m, master_op::batch_put_revoke, out);
  return out;
}

result<replica_list> master_state::get_replica_list_sync(std::string_view key) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->get(key, now);
  record(impl_->m, master_op::get_replica_list, r);
  return r;
}

std::vector<result<replica_list>> master_state::batch_get_replica_list_sync(std::span<const std::string> keys) {
  std::vector<result<replica_list>> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (i + prefetch_distance < keys.size()) impl_->objects.prefetch(keys[i + prefetch_distance]);
    out.push_back(impl_->get(keys[i], now));
  }
  record_batch(impl_->m, master_op::batch_get_replica_list, out);
  return out;
}

result<match_result> master_state::match_prefix_sync(std::span<const std::string> keys) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  match_result mr;
  for (const std::string& k : keys) {
    object_entry* o = impl_->objects.find(k);
    if (o == nullptr || !o->complete) break;
    mr.replicas.push_back(impl_->lease(*o, now));
    ++mr.hits;
  }
  result<match_result> r = std::move(mr);
  record(impl_->m, master_op::match_prefix, r);
  return r;
}

result<bool> master_state::exist_sync(std::string_view key) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  const object_entry* o = impl_->objects.find(key);
  result<bool> r = o != nullptr && o->complete;
  record(impl_->m, master_op::exist_key, r);
  return r;
}

std::vector<result<bool>> master_state::batch_exist_sync(std::span<const std::string> keys) {
  std::vector<result<bool>> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  for (const std::string& k : keys) {
    const object_entry* o = impl_->objects.find(k);
    out.emplace_back(o != nullptr && o->complete);
  }
  record_batch(impl_->m, master_op::batch_exist_key, out);
  return out;
}

result<std::uint64_t> master_state::get_size_sync(std::string_view key) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  result<std::uint64_t> r = fail(errc::object_not_found);
  if (const object_entry* o = impl_->objects.find(key); o != nullptr) {
    r = o->complete ? result<std::uint64_t>(o->cur.size)
                            : result<std::uint64_t>(fail(errc::replica_is_not_ready));
  }
  record(impl_->m, master_op::get_size, r);
  return r;
}

result<void> master_state::remove_sync(std::string_view key, bool force) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  auto r = impl_->remove(key, force, now);
  record(impl_->m, master_op::remove, r);
  return r;
}

std::vector<result<void>> master_state::batch_remove_sync(std::span<const std::string> keys, bool force) {
  std::vector<result<void>> out;
  out.reserve(keys.size());
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  for (const std::string& k : keys) out.push_back(impl_->remove(k, force, now));
  record_batch(impl_->m, master_op::batch_remove, out);
  return out;
}

result<std::uint64_t> master_state::remove_all_sync(bool force) {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  impl_->maintain(now);
  result<std::uint64_t> r = impl_->remove_all(force, now);
  record(impl_->m, master_op::remove_all, r);
  return r;
}

void master_state::tick() {
  std::lock_guard lock(impl_->mu);
  impl_->tick_locked(impl_->clock());
}

// --- reporting --------------------------------------------------------------------------------------

master_metrics master_state::metrics() const {
  std::lock_guard lock(impl_->mu);
  return impl_->snapshot();
}

std::string master_state::metrics_text() const {
  const master_metrics m = metrics();
  std::string out;
  const auto metric = [&out](std::string_view name, std::string_view type, std::string_view help, std::uint64_t v) {
    fmt::format_to(std::back_inserter(out), "# HELP {0} {1}\n# TYPE {0} {2}\n{0} {3}\n", name, help, type, v);
  };
  metric("master_total_capacity_bytes", "gauge", "Total capacity across all mounted segments", m.total_capacity);
  metric("master_allocated_bytes", "gauge", "Bytes currently allocated across all segments", m.allocated);
  metric("master_key_count", "gauge", "Number of keys managed by the master", m.key_count);
  metric("master_mounted_segments", "gauge", "Number of mounted segments taking new replicas", m.segment_count);
  metric("master_quarantined_segments", "gauge",
         "Segments mounted again while old leases or writes may still touch them; no new replicas yet",
         m.quarantined_segments);
  metric("master_fenced_bytes", "gauge",
         "Bytes of re-mounted segments held back while old leases or writes may still touch them",
         m.fenced_bytes);
  metric("master_active_clients", "gauge", "Number of live clients", m.active_clients);
  for (std::size_t i = 0; i < master_op_count; ++i) {
    const auto op = to_string(static_cast<master_op>(i));
    metric(fmt::format("master_{}_requests_total", op), "counter", fmt::format("{} requests received", op),
           m.requests[i]);
    metric(fmt::format("master_{}_failures_total", op), "counter", fmt::format("{} requests that failed", op),
           m.failures[i]);
    if (op.starts_with("batch_")) {
      metric(fmt::format("master_{}_items_total", op), "counter", fmt::format("keys in {} requests", op), m.items[i]);
      metric(fmt::format("master_{}_failed_items_total", op), "counter", fmt::format("failed keys in {} requests", op),
             m.failed_items[i]);
    }
  }
  metric("master_evicted_keys_total", "counter", "Keys evicted", m.evicted_keys);
  metric("master_evicted_size_bytes_total", "counter", "Bytes freed by eviction (every replica)", m.evicted_bytes);
  metric("master_attempted_evictions_total", "counter", "Eviction rounds started", m.attempted_evictions);
  metric("master_successful_evictions_total", "counter", "Eviction rounds that evicted a key",
         m.successful_evictions);
  metric("master_run_evictions_total", "counter",
         "Puts placed by evicting a run of adjacent blocks (free bytes too scattered for LRU eviction)",
         m.run_evictions);
  metric("master_preempted_puts_total", "counter", "Stale in-flight puts pre-empted by a new put", m.preempted_puts);
  metric("master_discarded_puts_total", "counter", "In-flight puts reclaimed after the discard timeout",
         m.discarded_puts);
  metric("master_expired_clients_total", "counter", "Clients expired for silence", m.expired_clients);
  metric("master_forgiven_stalls_total", "counter", "Master stalls not charged to the clients' heartbeats",
         m.forgiven_stalls);
  return out;
}

std::string master_state::segments_json() const {
  std::lock_guard lock(impl_->mu);
  nlohmann::json segs = nlohmann::json::array();
  std::uint64_t cap = 0, used = 0;
  const time_point now = impl_->clock();
  for (const segment_entry& s : impl_->segments) {
    if (!s.mounted) continue;
    const allocator_stats st = s.alloc->stats();
    const auto quarantine_ms =
        s.usable_from > now ? std::chrono::duration_cast<ms>(s.usable_from - now).count() : std::int64_t{0};
    cap += st.capacity;
    used += st.used;
    segs.push_back({{"name", s.info.name},
                    {"engine_segment", s.info.engine_segment},
                    {"host", s.info.host},
                    {"transport", s.info.transport},
                    {"client", s.owner},
                    {"base", s.info.base},
                    {"size", s.info.size},
                    {"capacity", st.capacity},
                    {"used", st.used},
                    {"free", st.free},
                    {"largest_free", st.largest_free},
                    {"fragmentation", st.fragmentation},
                    {"allocations", st.allocations},
                    {"quarantine_ms_left", quarantine_ms},
                    {"fenced_bytes", s.fenced_bytes}});
  }
  nlohmann::json j{{"segments", std::move(segs)}, {"total_capacity", cap}, {"allocated", used}};
  return j.dump();
}

std::string master_state::query_key_json(std::string_view key) const {
  std::lock_guard lock(impl_->mu);
  const time_point now = impl_->clock();
  nlohmann::json j{{"key", key}};
  const object_entry* op = impl_->objects.find(key);
  if (op == nullptr) {
    j["found"] = false;
    j["error"] = "object not found";
    return j.dump();
  }
  const object_entry& o = *op;
  const auto left_ms = [now](time_point t) {
    return t > now ? std::chrono::duration_cast<ms>(t - now).count() : std::int64_t{0};
  };
  const replica_status st = o.complete ? replica_status::complete : replica_status::processing;
  nlohmann::json reps = nlohmann::json::array();
  for (const replica_desc& d : impl_->describe(o.cur.replicas, st)) {
    reps.push_back({{"segment", d.segment}, {"engine_segment", d.engine_segment}, {"addr", d.addr}, {"size", d.size}});
  }
  j["found"] = true;
  j["size"] = o.cur.size;
  j["status"] = o.complete ? "complete" : "processing";
  j["replicas"] = std::move(reps);
  j["lease_ms_left"] = left_ms(o.lease_until);
  j["soft_pin_ms_left"] = left_ms(o.soft_pin_until);
  j["hard_pin"] = o.cur.hard_pin;
  j["group"] = o.cur.group;
  j["upsert_in_flight"] = o.pending != nullptr;
  j["writer"] = o.pending ? o.pending->writer : o.cur.writer;  // the client whose write is newest
  return j.dump();
}

// --- master_service ---------------------------------------------------------------------------------

task<result<void>> master_state::mount_segment(client_id client, segment_info seg) {
  co_return mount_segment_sync(client, seg);
}
task<result<void>> master_state::unmount_segment(client_id client, std::string segment_name) {
  co_return unmount_segment_sync(client, segment_name);
}
task<result<ping_result>> master_state::ping(client_id client) { co_return ping_sync(client); }
task<result<std::vector<replica_desc>>> master_state::put_start(client_id client, std::string key, std::uint64_t size,
                                                              replicate_config cfg) {
  co_return put_start_sync(client, key, size, cfg);
}
task<result<void>> master_state::put_end(client_id client, std::string key) { co_return put_end_sync(client, key); }
task<result<void>> master_state::put_revoke(client_id client, std::string key) {
  co_return put_revoke_sync(client, key);
}
task<result<std::vector<replica_desc>>> master_state::upsert_start(client_id client, std::string key,
                                                                 std::uint64_t size, replicate_config cfg) {
  co_return upsert_start_sync(client, key, size, cfg);
}
task<std::vector<result<std::vector<replica_desc>>>> master_state::batch_put_start(client_id client,
                                                                                 std::vector<std::string> keys,
                                                                                 std::vector<std::uint64_t> sizes,
                                                                                 replicate_config cfg) {
  co_return batch_put_start_sync(client, keys, sizes, cfg);
}
task<std::vector<result<void>>> master_state::batch_put_end(client_id client, std::vector<std::string> keys) {
  co_return batch_put_end_sync(client, keys);
}
task<std::vector<result<void>>> master_state::batch_put_revoke(client_id client, std::vector<std::string> keys) {
  co_return batch_put_revoke_sync(client, keys);
}
task<std::vector<result<void>>> master_state::batch_put_commit(client_id client, std::vector<std::string> placeholders,
                                                               std::vector<std::string> keys) {
  co_return batch_put_commit_sync(client, placeholders, keys);
}
task<result<replica_list>> master_state::get_replica_list(std::string key) { co_return get_replica_list_sync(key); }
task<std::vector<result<replica_list>>> master_state::batch_get_replica_list(std::vector<std::string> keys) {
  co_return batch_get_replica_list_sync(keys);
}
task<result<match_result>> master_state::match_prefix(std::vector<std::string> keys) {
  co_return match_prefix_sync(keys);
}
task<result<bool>> master_state::exist(std::string key) { co_return exist_sync(key); }
task<std::vector<result<bool>>> master_state::batch_exist(std::vector<std::string> keys) {
  co_return batch_exist_sync(keys);
}
task<result<std::uint64_t>> master_state::get_size(std::string key) { co_return get_size_sync(key); }
task<result<void>> master_state::remove(std::string key, bool force) { co_return remove_sync(key, force); }
task<std::vector<result<void>>> master_state::batch_remove(std::vector<std::string> keys, bool force) {
  co_return batch_remove_sync(keys, force);
}
task<result<std::uint64_t>> master_state::remove_all(bool force) { co_return remove_all_sync(force); }

}  // namespace yutu::store
