// The store client (see client.hpp): segments, heartbeat, and the put/get paths over the engine.
#include "yutu/store/client.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <optional>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include <fmt/format.h>

#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/async_semaphore.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/log.hpp"
#include "yutu/scratch.hpp"
#include "yutu/store/allocator.hpp"
#include "yutu/store/rpc_client.hpp"
#include "yutu/transfer/metadata.hpp"

namespace yutu::store {

using transfer::opcode;
using transfer::transfer_request;

namespace {

// Resumes the awaiting coroutine on `e` (the caller's executor), unless it is already there or there
// is none (a plain thread: stay where we are).
struct hop_to {
  coro::executor* e;
  coro::resume_item item{};
  bool await_ready() const noexcept { return !e || e->running_in_this_thread(); }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    item.handle = h;
    e->post(&item);
  }
  void await_resume() const noexcept {}
};

// How the master refuses the commit of a reservation that is gone (a forced remove_all, an
// unmount, put_start_timeout), is not this client's, or is not a put in flight: nothing was
// committed, and the thread's other reservations of that size most likely went the same way.
bool reservation_gone(const std::error_code& ec) noexcept {
  return ec == errc::object_not_found || ec == errc::illegal_client || ec == errc::invalid_write;
}

struct io_part {
  std::byte* p = nullptr;
  std::uint64_t n = 0;
};

// The local memory of a batch of objects: object i is parts[begin[i], begin[i+1]), in order.
// Its arrays are scratch vectors: building one per call allocates nothing in steady state.
struct object_set {
  scratch_vec<io_part> parts;
  scratch_vec<std::size_t> begin;

  object_set() { begin->push_back(0); }
  void add(const void* p, std::uint64_t n) { parts->push_back({static_cast<std::byte*>(const_cast<void*>(p)), n}); }
  void next() { begin->push_back(parts->size()); }
  std::size_t size() const noexcept { return begin->size() - 1; }
  std::span<const io_part> of(std::size_t i) const noexcept {
    return std::span(*parts).subspan((*begin)[i], (*begin)[i + 1] - (*begin)[i]);
  }
  std::uint64_t bytes(std::size_t i) const noexcept {
    std::uint64_t s = 0;
    for (auto& p : of(i)) s += p.n;
    return s;
  }
};

// Appends the keys and objects at `idx`, in that order: the part of a batch that takes another path.
void select(std::span<const std::string> keys, const object_set& objs, std::span<const std::size_t> idx,
            std::vector<std::string>& out_keys, object_set& out_objs) {
  for (std::size_t i : idx) {
    out_keys.push_back(keys[i]);
    for (const io_part& p : objs.of(i)) out_objs.add(p.p, p.n);
    out_objs.next();
  }
}

// Calls f(piece, offset in the object) for each part of `parts` that the first `size` bytes of an
// object fill: how an object read lays out over a caller's buffers.
template <class F>
void for_each_piece(std::span<const io_part> parts, std::uint64_t size, F&& f) {
  std::uint64_t left = size, off = 0;
  for (const io_part& p : parts) {
    if (left == 0) break;
    const std::uint64_t len = std::min(p.n, left);
    if (len) f(io_part{p.p, len}, off);
    off += len;
    left -= len;
  }
}

// Populates [p, p + n) writable; touches every page where the kernel lacks MADV_POPULATE_WRITE (< 5.14).
std::error_code prefault(void* p, std::size_t n) {
#ifdef MADV_POPULATE_WRITE
  if (::madvise(p, n, MADV_POPULATE_WRITE) == 0) return {};
  if (errno != EINVAL) return {errno, std::generic_category()};
#endif
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  auto* b = static_cast<volatile unsigned char*>(p);
  for (std::size_t off = 0; off < n; off += page) b[off] = b[off];
  return {};
}

std::string random_id() {
  std::random_device rd;
  std::uint64_t a = (std::uint64_t(rd()) << 32) ^ rd(), b = (std::uint64_t(rd()) << 32) ^ rd();
  return fmt::format("{:08x}-{:04x}-{:04x}-{:04x}-{:012x}", a >> 32, (a >> 16) & 0xffff, a & 0xffff, b >> 48,
                     b & 0xffffffffffffull);
}

// A reservation's placeholder key: 0x7f, then 14 characters carrying 84 bits (20 fixed per client,
// 64 a counter from a random start), 15 bytes in all, which std::string keeps in place: no heap
// allocation for it in the client, the RPC codec or the master's table, where the former
// "\x7fyutu-reserved/<client id>/<n>" (about 55 bytes) took one at each step of every reserved put.
// Two clients' keys coincide with odds of about 2^-80 per pair of keys; a coincidence only makes
// that reservation's put_start fail with object_already_exists, which the refill takes as refused.
std::string placeholder_key(std::uint64_t fixed20, std::uint64_t n) {
  static constexpr char digits[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::string k(15, '\x7f');
  for (int i = 0; i < 10; ++i) k[1 + static_cast<std::size_t>(i)] = digits[(n >> (6 * i)) & 63];
  const std::uint64_t rest = (n >> 60) | (fixed20 << 4);
  for (int i = 0; i < 4; ++i) k[11 + static_cast<std::size_t>(i)] = digits[(rest >> (6 * i)) & 63];
  return k;
}

std::error_code first_error(const transfer::batch_result& r, std::size_t from, std::size_t to) {
  for (std::size_t k = from; k < to; ++k)
    if (r.errors[k]) return r.errors[k];
  return {};
}

}  // namespace

// A registered area the copying forms pass values through where the engine moves bytes over rdma,
// which reaches only registered memory (client_config::staging_buffer_size). The semaphore counts
// its free pages, so a call waits, first come first served, until the pages it needs are free; the
// allocator under `mu` then places them.
class staging_area {
 public:
  static constexpr std::uint64_t page = 4096;

  // Holds a piece of the area until destroyed.
  class lease {
   public:
    lease(staging_area* owner, allocation a, std::size_t pages) : owner_(owner), a_(a), pages_(pages) {}
    lease(lease&& o) noexcept : owner_(std::exchange(o.owner_, nullptr)), a_(o.a_), pages_(o.pages_) {}
    lease(const lease&) = delete;
    lease& operator=(const lease&) = delete;
    lease& operator=(lease&&) = delete;
    ~lease() {
      if (owner_) owner_->give_back(a_, pages_);
    }
    std::byte* data() const noexcept { return reinterpret_cast<std::byte*>(a_.addr); }

   private:
    staging_area* owner_;
    allocation a_;
    std::size_t pages_;
  };

  // `bytes` rounded up to whole pages; null when the memory cannot be had.
  static std::unique_ptr<staging_area> create(std::uint64_t bytes) {
    const std::uint64_t len = (bytes + page - 1) / page * page;
    auto* mem = static_cast<std::byte*>(std::aligned_alloc(page, len));
    if (!mem) return nullptr;
    return std::unique_ptr<staging_area>(new staging_area(mem, len));
  }
  ~staging_area() { std::free(mem_); }
  staging_area(const staging_area&) = delete;
  staging_area& operator=(const staging_area&) = delete;

  std::byte* data() const noexcept { return mem_; }
  std::uint64_t size() const noexcept { return len_; }

  // `bytes` of the area, waiting for other calls to give theirs back; buffer_overflow when more than
  // the whole area (such a value goes through put_from / get_into and registered memory).
  task<result<lease>> take(std::uint64_t bytes) {
    const std::uint64_t rounded = (std::max<std::uint64_t>(bytes, 1) + page - 1) / page * page;
    if (rounded > len_) co_return fail(errc::buffer_overflow);
    const std::size_t pages = rounded / page;
    if (auto r = co_await free_pages_.acquire(pages); !r) co_return fail(r.error());
    std::optional<allocation> a = place(rounded);
    if (!a) {
      // Enough pages, but not in one piece: wait until the area is empty (every page ours), where
      // anything up to its size fits, and give back what this call does not use.
      free_pages_.release(pages);
      const std::size_t all = len_ / page;
      if (auto r = co_await free_pages_.acquire(all); !r) co_return fail(r.error());
      a = place(rounded);
      free_pages_.release(all - pages);
      if (!a) co_return fail(errc::internal_error);  // an empty area refused what fits in it
    }
    co_return lease(this, *a, pages);
  }

 private:
  staging_area(std::byte* mem, std::uint64_t len)
      : mem_(mem), len_(len), alloc_(reinterpret_cast<std::uint64_t>(mem), len, page), free_pages_(len / page) {}

  std::optional<allocation> place(std::uint64_t bytes) {
    std::lock_guard lk(mu_);
    return alloc_.allocate(bytes);
  }
  void give_back(const allocation& a, std::size_t pages) noexcept {
    {
      std::lock_guard lk(mu_);
      alloc_.free(a);
    }
    free_pages_.release(pages);
  }

  std::byte* mem_;
  std::uint64_t len_;
  std::mutex mu_;
  offset_allocator alloc_;
  coro::async_semaphore free_pages_;
};

// ---------------------------------------------------------------------------------------------

struct client::impl {
  client_config cfg;
  client_id id;
  std::string host;  // the placement host named in our segments
  // Declared first, destroyed last: the heartbeat lives on it. The RPC client's connections live
  // on the engine's reactors, so the RPC client goes before the engine.
  std::unique_ptr<io::reactor_pool> pool;
  std::unique_ptr<master_service> owned_master;
  master_service* master = nullptr;
  std::unique_ptr<transfer::engine> eng;

  std::vector<segment_info> segs;
  std::byte* local_buf = nullptr;
  std::size_t local_len = 0;

  // Where the engine moves bytes over rdma: the registered area the copying forms pass values
  // through (null otherwise). Destroyed after the body of ~impl has let the engine go.
  std::unique_ptr<staging_area> staging;

  // Buffers registered through this client (register_buffer, the local buffer): changed rarely, read
  // by every put_from / get_into. Each engine thread checks against its own copy, taken again when
  // reg_version has moved, so the data path takes no lock shared by the threads; other threads read
  // the map under reg_mu. reg_version moves under reg_mu.
  mutable std::mutex reg_mu;
  std::map<std::uintptr_t, std::size_t> registered;
  std::atomic<std::uint64_t> reg_version{1};
  struct reg_copy {
    std::uint64_t version = 0;
    std::vector<std::pair<std::uintptr_t, std::size_t>> ranges;  // sorted by start
  };
  std::vector<std::unique_ptr<reg_copy>> reg_copies;  // by engine reactor index

  struct seg_entry {
    transfer::segment_id id = 0;
    int rank = 2;  // 0: this process, 1: this host, 2: another host
  };
  std::mutex seg_mu;
  std::unordered_map<std::string, seg_entry> seg_cache;

  std::stop_source hb_stop;
  coro::async_event hb_done;
  bool hb_running = false;
  std::atomic<bool> hb_exited{false};  // set last: nothing of ours is touched by the heartbeat after it
  std::atomic<bool> closed{false};
  std::atomic<std::uint64_t> rr{0};

  struct counters {
    std::atomic<std::uint64_t> puts{0}, put_failures{0}, put_bytes{0}, gets{0}, get_failures{0}, get_bytes{0},
        failovers{0}, revokes{0}, remounts{0}, heartbeat_failures{0}, cache_hits{0}, reserved_puts{0},
        reservation_fallbacks{0}, deferred_failures{0}, reservation_waits{0};
  } c;

  // The replica cache (client_config::replica_cache_max_age): one map per engine thread, touched only
  // by that thread, so a hit takes no lock. An entry is good while it is younger than its `until`
  // and nothing that may have made it wrong happened since it was taken: cache_epoch moves on this
  // client's own remove / upsert / remove_all and on a re-mount, the master's link_epoch when a
  // connection to it broke.
  struct cached_list {
    replica_list list;
    std::chrono::steady_clock::time_point t0;     // when the lookup that took the lease was sent
    std::chrono::steady_clock::time_point until;  // usable before this
    std::uint64_t epoch = 0;
    std::uint64_t link = 0;
    // The replica a single-key hit reads (read_cached_one), chosen once per entry: best transport,
    // rotating among equals so that keys spread over the replicas. Unset until first used.
    std::optional<seg_entry> pick;
    std::uint64_t pick_addr = 0;
  };
  struct replica_cache {
    std::unordered_map<std::string, cached_list> map;
  };
  std::vector<std::unique_ptr<replica_cache>> caches;  // by engine reactor index
  std::atomic<std::uint64_t> cache_epoch{0};

  // The engine reactor this thread runs, or npos.
  static constexpr std::size_t npos = io::reactor_pool::npos;
  std::size_t engine_index() const noexcept {
    return eng->reactors().index_of_current();
  }
  // This thread's cache, or none (off, or not on an engine thread).
  replica_cache* local_cache() noexcept {
    if (caches.empty()) return nullptr;
    const std::size_t i = engine_index();
    return i == npos ? nullptr : caches[i].get();
  }

  // Reserved puts (client_config::put_reservation_bytes): per engine thread, touched only by that
  // thread, so taking one costs no lock. A reservation is a put the master started under a
  // placeholder key; its replicas are this client's to write until it is committed or revoked.
  struct reservation {
    std::string placeholder;
    std::vector<replica_desc> replicas;
    std::chrono::steady_clock::time_point t0;  // when the put_start that made it was sent
    std::uint64_t epoch = 0;                   // reserve_epoch then
  };
  struct reserve_pool {
    std::uint64_t size = 0;
    std::deque<reservation> ready;  // oldest first
    bool refilling = false;
    std::chrono::steady_clock::time_point retry_after{};  // after a refill the master refused
    std::uint64_t used = 0;  // the thread's use count when last taken from (the least used goes first)
    std::vector<coro::async_event*> refill_waiters;  // puts waiting for the refill in flight

    // Moves every reservation's placeholder into `out`, to be given back.
    void drain_all(std::vector<std::string>& out) {
      for (auto& r : ready) out.push_back(std::move(r.placeholder));
      ready.clear();
    }
    // Moves those made at least `max_age` before `now` (the oldest are first) into `out`.
    void drain_expired(std::chrono::steady_clock::time_point now, std::chrono::milliseconds max_age,
                       std::vector<std::string>& out) {
      while (!ready.empty() && now - ready.front().t0 >= max_age) {
        out.push_back(std::move(ready.front().placeholder));
        ready.pop_front();
      }
    }
  };
  // A written reservation waiting for its deferred commit (client_config::defer_put_commit).
  struct pending_commit {
    std::string key;
    reservation r;
    std::uint64_t size = 0;
  };
  struct commit_waiter {
    std::uint64_t target = 0;  // done while committed >= target
    coro::async_event* ev = nullptr;
  };
  struct reserve_state {
    std::vector<reserve_pool> pools;
    std::uint64_t uses = 0;
    // Deferred commits: queued by this thread's puts, sent by one commit_pending() at a time, so
    // that the puts that come while a commit is in flight go together in the next one.
    std::vector<pending_commit> pending;
    bool committing = false;
    std::vector<commit_waiter> waiters;
    // Written only by this thread; read by wait_commits() from any thread to skip the hop here.
    std::atomic<std::uint64_t> enqueued{0}, committed{0};
  };
  static constexpr std::size_t max_reserve_pools = 4;
  std::vector<std::unique_ptr<reserve_state>> reserves;  // by engine reactor index; empty: off
  std::uint64_t placeholder_fixed = 0;  // 20 random bits (see placeholder_key)
  std::atomic<std::uint64_t> next_placeholder{0};
  // Moves when reservations may have gone at the master: this client's forced remove_all.
  std::atomic<std::uint64_t> reserve_epoch{0};
  coro::async_scope bg;  // refills, give-backs and deferred commits
  // Deferred puts whose commit failed, until flush() takes them.
  static constexpr std::size_t max_deferred_failures = 65536;
  std::mutex failed_mu;
  std::vector<deferred_failure> failed;

  // Reservations a thread keeps of one size. At most 256: a refill is one batch_put_start, and the
  // master holds its lock for the whole batch, so a larger one stalls the calls behind it (with
  // refills of up to 1024 64 KiB placeholders, store_bench's 64 KiB x 32 shm put p99 was 2.9-5.5 ms
  // against 1.5-2.7 ms without reservations).
  std::size_t reserve_target(std::uint64_t size) const noexcept {
    return static_cast<std::size_t>(std::clamp<std::uint64_t>(cfg.put_reservation_bytes / size, 2, 256));
  }
  static reserve_pool* find_pool(reserve_state& st, std::uint64_t size) noexcept {
    for (auto& p : st.pools)
      if (p.size == size) return &p;
    return nullptr;
  }

  // Takes reservations for n objects of `size` from this thread's pool into `out`, all or none;
  // starts a refill when the pool runs low and gives back the ones past their age.
  void take_reserved(std::uint64_t size, std::size_t n, std::vector<reservation>& out, std::size_t& thread) {
    if (reserves.empty() || size == 0 || size > cfg.put_reservation_max_object || closed.load()) return;
    const std::size_t ti = engine_index();
    if (ti == npos) return;
    thread = ti;
    reserve_state& st = *reserves[ti];
    std::vector<std::string> expired;
    reserve_pool* pl = find_pool(st, size);
    if (!pl) {
      if (st.pools.size() >= max_reserve_pools) {
        auto lru = std::min_element(st.pools.begin(), st.pools.end(),
                                    [](const reserve_pool& a, const reserve_pool& b) { return a.used < b.used; });
        if (lru->refilling) return;  // its refill will look for it when it returns
        lru->drain_all(expired);
        st.pools.erase(lru);
      }
      pl = &st.pools.emplace_back();
      pl->size = size;
    }
    const auto now = std::chrono::steady_clock::now();
    const std::uint64_t epoch = reserve_epoch.load(std::memory_order_acquire);
    if (!pl->ready.empty() && pl->ready.back().epoch != epoch) pl->drain_all(expired);
    pl->drain_expired(now, cfg.put_reservation_max_age, expired);
    if (pl->ready.size() >= n) {
      for (std::size_t k = 0; k < n; ++k) {
        out.push_back(std::move(pl->ready.front()));
        pl->ready.pop_front();
      }
    }
    pl->used = ++st.uses;
    const bool low = pl->ready.size() * 2 < reserve_target(size) || pl->ready.size() < n;
    const bool refill_now = low && !pl->refilling && now >= pl->retry_after;
    if (refill_now) pl->refilling = true;
    // Spawned last: with a master in this process the refill runs to its end inside spawn().
    if (refill_now) bg.spawn(refill(ti, size, std::max(n, reserve_target(size))));
    if (!expired.empty()) bg.spawn(give_back(std::move(expired)));
  }

  // On an engine thread: waits for the refill in flight of this thread's pool of `size`, if there
  // is one. Whether the pool then holds n reservations.
  task<bool> wait_refill(std::uint64_t size, std::size_t n) {
    const std::size_t ti = engine_index();
    if (ti == npos || reserves.empty()) co_return false;
    reserve_pool* pl = find_pool(*reserves[ti], size);
    if (pl && pl->refilling) {
      c.reservation_waits.fetch_add(1, std::memory_order_relaxed);
      coro::async_event ev;
      pl->refill_waiters.push_back(&ev);
      // A refilling pool is not dropped; a cancelled wait takes its entry out before `ev` goes.
      if (!co_await ev.wait()) std::erase(pl->refill_waiters, &ev);
      pl = find_pool(*reserves[ti], size);
    }
    co_return pl && pl->ready.size() >= n;
  }

  // Puts a reservation the caller did not use back, if this is still its thread and its pool.
  void return_reserved(std::size_t ti, std::uint64_t size, reservation r) {
    if (engine_index() == ti && !closed.load())
      if (reserve_pool* pl = find_pool(*reserves[ti], size)) {
        pl->ready.push_front(std::move(r));
        return;
      }
    std::vector<std::string> back{std::move(r.placeholder)};
    bg.spawn(give_back(std::move(back)));
  }

  task<void> refill(std::size_t ti, std::uint64_t size, std::size_t target) {
    coro::executor* home = coro::current_executor();
    std::size_t have = 0;
    if (reserve_pool* pl = find_pool(*reserves[ti], size)) have = pl->ready.size();
    const std::size_t want = target > have ? target - have : 0;
    std::vector<std::string> keys;
    keys.reserve(want);
    for (std::size_t k = 0; k < want; ++k)
      keys.push_back(placeholder_key(placeholder_fixed, next_placeholder.fetch_add(1, std::memory_order_relaxed)));
    std::vector<result<std::vector<replica_desc>>> starts;
    const auto t0 = std::chrono::steady_clock::now();
    const std::uint64_t epoch = reserve_epoch.load(std::memory_order_acquire);
    if (!keys.empty())
      starts = co_await master->batch_put_start(id, keys, std::vector<std::uint64_t>(keys.size(), size),
                                                cfg.replica_defaults);
    co_await hop_to{home, {}};
    reserve_pool* pl = find_pool(*reserves[ti], size);
    std::vector<std::string> back;
    bool refused = false;
    for (std::size_t k = 0; k < keys.size(); ++k) {
      if (k >= starts.size() || !starts[k]) {
        refused = true;
        continue;
      }
      if (pl && !closed.load())
        pl->ready.push_back(reservation{std::move(keys[k]), std::move(*starts[k]), t0, epoch});
      else
        back.push_back(std::move(keys[k]));
    }
    if (pl) {
      pl->refilling = false;
      // A master without room (or unreachable) is not asked again by every put.
      if (refused) pl->retry_after = std::chrono::steady_clock::now() + std::chrono::milliseconds(100);
      for (coro::async_event* ev : pl->refill_waiters) ev->set();
      pl->refill_waiters.clear();
    }
    if (!back.empty()) co_await give_back(std::move(back));
  }

  // One per engine thread while reservations are on: gives back reservations past their age even
  // when no put of their size comes to notice it, so that memory a finished workload reserved goes
  // back to the pool within put_reservation_max_age instead of at close().
  task<void> sweep(std::size_t ti) {
    co_await eng->reactors().at(ti).schedule();
    const auto period = std::min<std::chrono::milliseconds>(cfg.put_reservation_max_age / 2, std::chrono::seconds(1));
    for (;;) {
      auto slept = co_await io::sleep_for(std::max(period, std::chrono::milliseconds(1)));
      if (!slept || closed.load()) break;
      const auto now = std::chrono::steady_clock::now();
      std::vector<std::string> expired;
      for (auto& pl : reserves[ti]->pools) pl.drain_expired(now, cfg.put_reservation_max_age, expired);
      if (!expired.empty()) co_await give_back(std::move(expired));
    }
  }

  task<void> give_back(std::vector<std::string> placeholders) {
    auto rs = co_await master->batch_put_revoke(id, placeholders);
    for (std::size_t k = 0; k < rs.size(); ++k)
      if (!rs[k] && rs[k].error() != errc::object_not_found)
        log::info("store client {}: giving back reservation {} failed: {}", id, placeholders[k], rs[k].error().message());
  }

  // Queues the commit of a written reservation on this engine thread (ti), and starts the thread's
  // committer when none is running.
  void defer_commit(std::size_t ti, const std::string& key, reservation&& r, std::uint64_t size) {
    reserve_state& st = *reserves[ti];
    st.pending.push_back(pending_commit{key, std::move(r), size});
    st.enqueued.fetch_add(1, std::memory_order_release);
    if (st.committing) return;
    st.committing = true;
    bg.spawn(commit_pending(ti));
  }

  // Sends the thread's queued commits, one batch_put_commit at a time, until none is left.
  static constexpr std::size_t commit_gather_keys = 64;
  task<void> commit_pending(std::size_t ti) {
    coro::executor* home = coro::current_executor();
    reserve_state& st = *reserves[ti];
    while (!st.pending.empty()) {
      // A commit that would carry only a few keys first waits a little for more: each round trip
      // costs both sides two system calls and a wake-up, which at one commit per 64 KiB tcp put
      // was a third of the put's CPU time (store_bench, 2 cores).
      if (cfg.deferred_commit_gather.count() > 0 && st.pending.size() < commit_gather_keys)
        (void)co_await io::sleep_for(cfg.deferred_commit_gather);
      std::vector<pending_commit> batch;
      batch.swap(st.pending);
      std::vector<std::string> placeholders, keys;
      placeholders.reserve(batch.size());
      keys.reserve(batch.size());
      for (const pending_commit& pc : batch) {
        placeholders.push_back(pc.r.placeholder);
        keys.push_back(pc.key);
      }
      auto rs = co_await master->batch_put_commit(id, std::move(placeholders), std::move(keys));
      co_await hop_to{home, {}};
      std::vector<std::string> stale;
      std::vector<deferred_failure> lost;
      std::uint64_t landed = 0, landed_bytes = 0;
      for (std::size_t k = 0; k < batch.size(); ++k) {
        pending_commit& pc = batch[k];
        if (k < rs.size() && rs[k]) {
          ++landed;
          landed_bytes += pc.size;
          continue;
        }
        const std::error_code ec = k < rs.size() ? rs[k].error() : make_error_code(errc::internal_error);
        c.put_failures.fetch_add(1, std::memory_order_relaxed);
        c.deferred_failures.fetch_add(1, std::memory_order_relaxed);
        log::info("store client {}: deferred commit of {} failed: {}", id, pc.key, ec.message());
        lost.push_back(deferred_failure{std::move(pc.key), ec});
        if (ec == errc::object_already_exists) {
          return_reserved(ti, pc.size, std::move(pc.r));  // intact: the next put of its size takes it
          continue;
        }
        // Gone or refused (or the answer lost): the others of that size on this thread most likely
        // went the same way, and are given back rather than each failing once.
        if (reservation_gone(ec))
          if (reserve_pool* pl = find_pool(st, pc.size)) pl->drain_all(stale);
        stale.push_back(std::move(pc.r.placeholder));
      }
      if (landed) {
        c.puts.fetch_add(landed, std::memory_order_relaxed);
        c.put_bytes.fetch_add(landed_bytes, std::memory_order_relaxed);
        c.reserved_puts.fetch_add(landed, std::memory_order_relaxed);
      }
      if (!lost.empty()) {
        std::lock_guard lock(failed_mu);
        for (auto& f : lost)
          if (failed.size() < max_deferred_failures) failed.push_back(std::move(f));
      }
      const std::uint64_t done = st.committed.fetch_add(batch.size(), std::memory_order_release) + batch.size();
      std::erase_if(st.waiters, [done](const commit_waiter& w) {
        if (w.target > done) return false;
        w.ev->set();
        return true;
      });
      // In the background: with the master unreachable the revoke waits for its own deadline, and
      // the commits queued meanwhile should not wait behind it.
      if (!stale.empty()) bg.spawn(give_back(std::move(stale)));
    }
    st.committing = false;
  }

  // Waits until every commit deferred before this call has landed, on every engine thread;
  // operation_canceled on a stop request.
  task<result<void>> wait_commits() {
    if (!cfg.defer_put_commit || reserves.empty()) co_return ok();
    coro::executor* home = coro::current_executor();
    bool moved = false;
    for (std::size_t i = 0; i < reserves.size(); ++i) {
      reserve_state& st = *reserves[i];
      if (st.committed.load(std::memory_order_acquire) >= st.enqueued.load(std::memory_order_acquire)) continue;
      co_await eng->reactors().at(i).schedule();
      moved = true;
      const std::uint64_t target = st.enqueued.load(std::memory_order_relaxed);
      if (st.committed.load(std::memory_order_relaxed) >= target) continue;
      coro::async_event ev;
      st.waiters.push_back(commit_waiter{target, &ev});
      // Resumes here, on thread i; a cancelled wait takes its entry out before `ev` goes.
      if (auto w = co_await ev.wait(); !w) {
        std::erase_if(st.waiters, [&ev](const commit_waiter& x) { return x.ev == &ev; });
        co_await hop_to{home, {}};
        co_return fail(w.error());
      }
    }
    if (moved) co_await hop_to{home, {}};
    co_return ok();
  }

  // close(): every thread's reservations, taken on their threads, then revoked in one call.
  task<void> drop_reservations() {
    bg.request_stop();
    co_await bg.join();
    std::vector<std::string> all;
    for (std::size_t i = 0; i < reserves.size(); ++i) {
      co_await eng->reactors().at(i).schedule();
      for (auto& pl : reserves[i]->pools) pl.drain_all(all);
      reserves[i]->pools.clear();
    }
    if (!all.empty()) (void)co_await master->batch_put_revoke(id, std::move(all));
  }
  void drop_cached() noexcept {
    if (!caches.empty()) cache_epoch.fetch_add(1, std::memory_order_acq_rel);
  }
  // The entry for `key` if it is still good at t0 for these epochs.
  static const cached_list* cached(replica_cache& rc, const std::string& key, std::chrono::steady_clock::time_point t0,
                                   std::uint64_t epoch, std::uint64_t link) {
    auto it = rc.map.find(key);
    if (it == rc.map.end() || it->second.epoch != epoch || it->second.link != link || !(t0 < it->second.until))
      return nullptr;
    return &it->second;
  }
  // Keeps what a lookup sent at t0 returned, for the cache's age and at most half its lease.
  void remember(replica_cache& rc, const std::string& key, const replica_list& list,
                std::chrono::steady_clock::time_point t0, std::uint64_t epoch, std::uint64_t link) {
    if (list.lease_ttl.count() <= 0) return;
    auto age = std::min<std::chrono::steady_clock::duration>(cfg.replica_cache_max_age, list.lease_ttl / 2);
    if (rc.map.size() >= cfg.replica_cache_entries) rc.map.clear();
    rc.map.insert_or_assign(key, cached_list{list, t0, t0 + age, epoch, link, std::nullopt, 0});
  }

  ~impl() {
    // The heartbeat may still be inside a call to the master: let it end before the master goes.
    hb_stop.request_stop();
    while (hb_running && !hb_exited.load(std::memory_order_acquire))
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    // So may a refill or a give-back that a put started after close() joined them.
    bg.request_stop();
    while (bg.running() != 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    owned_master.reset();
    eng.reset();  // frees the contributed (shared) memory with it
    if (pool) pool->stop_and_join();
    if (local_buf) std::free(local_buf);
  }

  // Whether [a, a + n) lies inside one of `ranges` (sorted by start, not overlapping).
  template <class Ranges>
  static bool covers(const Ranges& ranges, std::uintptr_t a, std::uint64_t n) noexcept {
    auto it = std::upper_bound(ranges.begin(), ranges.end(), a,
                               [](std::uintptr_t x, const auto& r) { return x < r.first; });
    if (it == ranges.begin()) return false;
    --it;
    return a - it->first <= it->second && n <= it->second - (a - it->first);
  }

  bool is_registered(const void* p, std::uint64_t n) const {
    const auto a = reinterpret_cast<std::uintptr_t>(p);
    if (const std::size_t i = engine_index(); i != npos && i < reg_copies.size()) {
      reg_copy& mine = *reg_copies[i];
      if (mine.version != reg_version.load(std::memory_order_acquire)) {
        std::lock_guard lk(reg_mu);
        mine.ranges.assign(registered.begin(), registered.end());
        mine.version = reg_version.load(std::memory_order_relaxed);  // moves only under reg_mu
      }
      return covers(mine.ranges, a, n);
    }
    std::lock_guard lk(reg_mu);
    return covers(registered, a, n);
  }

  void note_registered_changed() noexcept { reg_version.fetch_add(1, std::memory_order_release); }

  transfer::batch_options batch_opts() const {
    transfer::batch_options o;
    o.deadline = cfg.transfer_deadline;
    return o;
  }

  // A segment this client has opened before: no coroutine frame and no copy of the name, which a
  // put or get pays per replica (segment() below opens one the first time).
  std::optional<seg_entry> known_segment(const std::string& name) {
    std::lock_guard lk(seg_mu);
    if (auto it = seg_cache.find(name); it != seg_cache.end()) return it->second;
    return std::nullopt;
  }

  task<result<seg_entry>> segment(std::string name) {
    if (auto known = known_segment(name)) co_return *known;
    auto sid = co_await eng->open_segment(name);
    if (!sid) co_return fail(sid.error());
    seg_entry e;
    e.id = *sid;
    if (name == eng->segment_name()) {
      e.rank = 0;
    } else if (auto d = eng->segment_descriptor(*sid); d && d->host_id == transfer::local_host_id()) {
      e.rank = 1;
    }
    std::lock_guard lk(seg_mu);
    seg_cache.emplace(std::move(name), e);
    co_return e;
  }

  // --- staging ---

  bool stages() const noexcept { return staging != nullptr; }

  static std::uint64_t staged_size(std::uint64_t n) noexcept { return (n + 63) / 64 * 64; }

  // The copying put forms: the values as they are, or copied into staging first where the engine
  // needs registered memory and some value is not in it.
  task<void> put_values(std::span<const std::string> keys, std::span<const std::span<const std::byte>> values,
                        replicate_config cfg_, bool upsert, std::vector<result<void>>& out) {
    object_set objs;
    std::optional<staging_area::lease> lease;
    bool copy = false;
    std::uint64_t total = 0;
    for (const auto& v : values) {
      copy = copy || (stages() && !is_registered(v.data(), v.size()));
      total += staged_size(v.size());
    }
    if (copy) {
      auto l = co_await staging->take(total);
      if (!l) {
        for (auto& o : out)
          if (o) o = fail(l.error());
        co_return;
      }
      lease.emplace(std::move(*l));
      std::uint64_t off = 0;
      for (const auto& v : values) {
        if (!v.empty()) std::memcpy(lease->data() + off, v.data(), v.size());
        objs.add(lease->data() + off, v.size());
        objs.next();
        off += staged_size(v.size());
      }
    } else {
      for (const auto& v : values) {
        objs.add(v.data(), v.size());
        objs.next();
      }
    }
    co_await put_objects(keys, objs, std::move(cfg_), upsert, out);
  }

  // The copying get forms: reads `lists` into fresh vectors, through staging where the engine needs
  // registered memory.
  task<std::vector<result<std::vector<std::byte>>>> get_values(std::vector<result<replica_list>>& lists,
                                                               std::chrono::steady_clock::time_point t0) {
    std::vector<result<std::vector<std::byte>>> values;
    values.reserve(lists.size());
    std::uint64_t total = 0;
    for (const auto& l : lists) {
      values.emplace_back(std::vector<std::byte>(l ? l->size : 0));
      if (l) total += staged_size(l->size);
    }
    std::optional<staging_area::lease> lease;
    if (stages() && total > 0) {
      auto l = co_await staging->take(total);
      if (!l) {
        for (std::size_t i = 0; i < lists.size(); ++i)
          values[i] = fail(lists[i] ? l.error() : lists[i].error());
        co_return values;
      }
      lease.emplace(std::move(*l));
    }
    object_set objs;
    std::uint64_t off = 0;
    for (std::size_t i = 0; i < lists.size(); ++i) {
      objs.add(lease ? lease->data() + off : values[i]->data(), values[i]->size());
      objs.next();
      off += staged_size(values[i]->size());
    }
    std::vector<result<std::uint64_t>> out(lists.size(), std::uint64_t{0});
    co_await read_objects(lists, objs, out, t0);
    off = 0;
    for (std::size_t i = 0; i < lists.size(); ++i) {
      if (!out[i]) {
        values[i] = fail(out[i].error());
      } else if (lease && !values[i]->empty()) {
        std::memcpy(values[i]->data(), lease->data() + off, values[i]->size());
      }
      off += staged_size(lists[i] ? lists[i]->size : 0);
    }
    co_return values;
  }

  // --- put ---

  task<std::vector<result<std::vector<replica_desc>>>> start_puts(std::span<const std::string> keys,
                                                                  const object_set& objs, replicate_config cfg_,
                                                                  bool upsert) {
    std::vector<result<std::vector<replica_desc>>> starts;
    if (keys.size() == 1) {
      if (upsert)
        starts.push_back(co_await master->upsert_start(id, keys[0], objs.bytes(0), std::move(cfg_)));
      else
        starts.push_back(co_await master->put_start(id, keys[0], objs.bytes(0), std::move(cfg_)));
      co_return starts;
    }
    if (upsert) {
      for (std::size_t i = 0; i < keys.size(); ++i)
        starts.push_back(co_await master->upsert_start(id, keys[i], objs.bytes(i), cfg_));
      co_return starts;
    }
    std::vector<std::string> ks(keys.begin(), keys.end());
    std::vector<std::uint64_t> sizes;
    sizes.reserve(keys.size());
    for (std::size_t i = 0; i < keys.size(); ++i) sizes.push_back(objs.bytes(i));
    starts = co_await master->batch_put_start(id, std::move(ks), std::move(sizes), std::move(cfg_));
    if (starts.size() != keys.size()) starts.assign(keys.size(), fail(errc::internal_error));
    co_return starts;
  }

  // `out[i]` set on entry (invalid arguments, closed) skips key i. `may_reserve` false: no
  // reservation (the keys a commit refused, put again).
  task<void> put_objects(std::span<const std::string> keys, const object_set& objs, replicate_config cfg_,
                         bool upsert, std::vector<result<void>>& out, bool may_reserve = true) {
    // The working arrays are scratch vectors (yutu/scratch.hpp): no allocation per put for them.
    const std::size_t n = keys.size();
    scratch_vec<std::size_t> todo_v;
    std::vector<std::size_t>& todo = *todo_v;
    for (std::size_t i = 0; i < n; ++i)
      if (out[i]) todo.push_back(i);
    if (todo.empty()) co_return;
    // The keys still to put; the caller's own spans when that is all of them (the usual case: no
    // copy of each key and of the object list per put).
    std::vector<std::string> sel_keys;
    object_set sel_objs;
    const bool all = todo.size() == n;
    if (!all) select(keys, objs, todo, sel_keys, sel_objs);
    const std::span<const std::string> tkeys = all ? keys : std::span<const std::string>(sel_keys);
    const object_set& tobjs = all ? objs : sel_objs;
    // Reservations for every key of the batch (one size, the default replication), or for none.
    scratch_vec<reservation> resv_v;
    std::vector<reservation>& resv = *resv_v;
    std::size_t resv_thread = npos;
    const std::uint64_t resv_size = tobjs.bytes(0);
    if (may_reserve && !upsert && !reserves.empty() && cfg_ == cfg.replica_defaults) {
      bool same = true;
      for (std::size_t t = 1; t < todo.size(); ++t) same = same && tobjs.bytes(t) == resv_size;
      if (same) take_reserved(resv_size, todo.size(), resv, resv_thread);
      // Deferred commits make a reserved put cost no round trip, and one that finds the pool empty
      // would pay two: it waits instead for the refill under way (less than one), which brings
      // many. Without this, 10 % of store_bench's 64 KiB shm puts ran dry and took 80 % of its time.
      if (same && resv.empty() && cfg.defer_put_commit && co_await wait_refill(resv_size, todo.size()))
        take_reserved(resv_size, todo.size(), resv, resv_thread);
    }
    const bool reserved = !resv.empty();
    std::vector<result<std::vector<replica_desc>>> starts;
    if (!reserved) starts = co_await start_puts(tkeys, tobjs, std::move(cfg_), upsert);

    scratch_vec<transfer_request> reqs_v;
    scratch_vec<std::size_t> rbegin_v;
    scratch_vec<result<void>> tout_v;
    std::vector<transfer_request>& reqs = *reqs_v;
    std::vector<std::size_t>& rbegin = *rbegin_v;
    std::vector<result<void>>& tout = *tout_v;
    rbegin.assign(todo.size() + 1, 0);
    tout.assign(todo.size(), ok());
    for (std::size_t t = 0; t < todo.size(); ++t) {
      rbegin[t] = reqs.size();
      if (!reserved && !starts[t]) {
        tout[t] = fail(starts[t].error());
        continue;
      }
      const std::vector<replica_desc>& reps = reserved ? resv[t].replicas : *starts[t];
      for (const replica_desc& r : reps) {
        result<seg_entry> seg = fail(errc::internal_error);
        if (auto known = known_segment(r.engine_segment))
          seg = *known;
        else
          seg = co_await segment(r.engine_segment);
        if (!seg) {
          tout[t] = fail(seg.error());
          break;
        }
        std::uint64_t off = 0;
        for (const io_part& p : tobjs.of(t)) {
          if (p.n) reqs.push_back(transfer_request{opcode::write, p.p, seg->id, r.addr + off, p.n});
          off += p.n;
        }
      }
    }
    rbegin[todo.size()] = reqs.size();
    transfer::batch_result res;
    if (!reqs.empty()) res = co_await eng->transfer(reqs, batch_opts());

    std::vector<std::string> ends, revokes;  // ends: filled only where a master call takes them
    scratch_vec<std::size_t> end_idx_v, again_v;
    std::vector<std::size_t>& end_idx = *end_idx_v;
    std::vector<std::size_t>& again = *again_v;  // reserved puts to do again the ordinary way
    for (std::size_t t = 0; t < todo.size(); ++t) {
      if (!reserved && !starts[t]) continue;
      if (tout[t]) {
        if (auto ec = first_error(res, rbegin[t], rbegin[t + 1])) tout[t] = fail(ec);
      }
      if (tout[t]) {
        end_idx.push_back(t);
      } else {
        revokes.push_back(reserved ? resv[t].placeholder : tkeys[t]);
        // A reservation's node failed the write (gone, most likely): the object goes where the
        // master places it now, as a put that had started now would have.
        if (reserved) again.push_back(t);
      }
    }
    std::vector<std::string> stale;  // reservations to give back
    scratch_vec<unsigned char> counted_v;
    std::vector<unsigned char>& counted = *counted_v;
    counted.assign(todo.size(), 0);
    const bool deferred = reserved && !end_idx.empty() && cfg.defer_put_commit && engine_index() == resv_thread;
    if (!deferred) {
      ends.reserve(end_idx.size());
      for (std::size_t t : end_idx) ends.push_back(tkeys[t]);
    }
    if (deferred) {
      // Written: the commit goes in the background (client_config::defer_put_commit), and the put
      // is counted when it lands.
      for (const std::size_t t : end_idx) {
        defer_commit(resv_thread, tkeys[t], std::move(resv[t]), resv_size);
        counted[t] = 1;
      }
    } else if (reserved && !ends.empty()) {
      std::vector<std::string> placeholders;
      for (std::size_t t : end_idx) placeholders.push_back(resv[t].placeholder);
      auto rs = co_await master->batch_put_commit(id, std::move(placeholders), std::move(ends));
      for (std::size_t k = 0; k < end_idx.size(); ++k) {
        const std::size_t t = end_idx[k];
        if (k < rs.size() && rs[k]) continue;
        const std::error_code ec = k < rs.size() ? rs[k].error() : make_error_code(errc::internal_error);
        if (ec == errc::object_already_exists) {
          tout[t] = fail(ec);  // the reservation is intact: the next put of this size takes it
          return_reserved(resv_thread, resv_size, std::move(resv[t]));
        } else if (reservation_gone(ec)) {
          again.push_back(t);  // the reservation is gone or refused: nothing was committed
          stale.push_back(std::move(resv[t].placeholder));
        } else {
          tout[t] = fail(ec);  // the master's answer was lost: committed or not, as a put_end would be
          stale.push_back(std::move(resv[t].placeholder));
        }
      }
    } else if (ends.size() == 1) {
      auto r = co_await master->put_end(id, ends[0]);
      if (!r) tout[end_idx[0]] = fail(r.error());
    } else if (!ends.empty()) {
      auto rs = co_await master->batch_put_end(id, std::move(ends));
      for (std::size_t k = 0; k < end_idx.size(); ++k)
        if (k >= rs.size() || !rs[k]) tout[end_idx[k]] = fail(k < rs.size() ? rs[k].error() : make_error_code(errc::internal_error));
    }
    // A reservation the master no longer knows (someone's forced remove_all, an unmount) or whose
    // node failed: the others of that size on this thread most likely went the same way. They are
    // given back rather than each failing once.
    if (!again.empty() && engine_index() == resv_thread)
      if (reserve_pool* pl = find_pool(*reserves[resv_thread], resv_size)) pl->drain_all(stale);
    if (!stale.empty()) bg.spawn(give_back(std::move(stale)));
    if (!revokes.empty()) {
      c.revokes.fetch_add(revokes.size(), std::memory_order_relaxed);
      for (auto& k : revokes) log::info("store client {}: put of {} failed; revoking", id, k);
      if (revokes.size() == 1) {
        (void)co_await master->put_revoke(id, revokes[0]);
      } else {
        (void)co_await master->batch_put_revoke(id, std::move(revokes));
      }
    }
    if (!again.empty()) {
      c.reservation_fallbacks.fetch_add(again.size(), std::memory_order_relaxed);
      std::vector<std::string> akeys;
      object_set aobjs;
      select(tkeys, tobjs, again, akeys, aobjs);
      std::vector<result<void>> aout(again.size(), ok());
      co_await put_objects(akeys, aobjs, cfg.replica_defaults, false, aout, false);
      for (std::size_t k = 0; k < again.size(); ++k) {
        tout[again[k]] = std::move(aout[k]);
        counted[again[k]] = 1;  // by the call above
      }
    }
    // Summed first: the counters are shared by every thread, and one atomic add per counter and
    // call costs less than one per key.
    std::uint64_t puts = 0, bytes = 0, failures = 0;
    for (std::size_t t = 0; t < todo.size(); ++t) {
      out[todo[t]] = tout[t];
      if (counted[t]) continue;
      if (tout[t]) {
        ++puts;
        bytes += tobjs.bytes(t);
      } else {
        ++failures;
      }
    }
    if (puts) {
      c.puts.fetch_add(puts, std::memory_order_relaxed);
      c.put_bytes.fetch_add(bytes, std::memory_order_relaxed);
      if (reserved) c.reserved_puts.fetch_add(puts, std::memory_order_relaxed);
    }
    if (failures) c.put_failures.fetch_add(failures, std::memory_order_relaxed);
  }

  // --- get ---

  task<std::vector<result<replica_list>>> lookup(std::span<const std::string> keys) {
    std::vector<result<replica_list>> lists;
    if (keys.size() == 1) {
      lists.push_back(co_await master->get_replica_list(keys[0]));
      co_return lists;
    }
    std::vector<std::string> ks(keys.begin(), keys.end());
    lists = co_await master->batch_get_replica_list(std::move(ks));
    if (lists.size() != keys.size()) lists.assign(keys.size(), fail(errc::internal_error));
    co_return lists;
  }

  // Reads object i of `lists` into objs(i), trying replicas best first; out[i] = its size. Entries
  // of `out` already failed are skipped. t0: when the lookup that granted the leases was sent
  // (per key in `t0s` when given: cached lists carry their own).
  task<void> read_objects(std::vector<result<replica_list>>& lists, const object_set& objs,
                          std::vector<result<std::uint64_t>>& out, std::chrono::steady_clock::time_point t0,
                          const std::vector<std::chrono::steady_clock::time_point>* t0s = nullptr) {
    const std::size_t n = lists.size();
    struct cand {
      transfer::segment_id seg;
      std::uint64_t addr;
      int rank;
    };
    std::vector<std::vector<cand>> cands(n);
    std::vector<std::error_code> last(n);
    std::vector<std::size_t> pending;
    for (std::size_t i = 0; i < n; ++i) {
      if (!out[i]) continue;
      if (!lists[i]) {
        out[i] = fail(lists[i].error());
        continue;
      }
      const replica_list& rl = *lists[i];
      if (rl.size > objs.bytes(i)) {
        out[i] = fail(errc::buffer_overflow);
        continue;
      }
      if (rl.size == 0) {
        out[i] = std::uint64_t{0};
        continue;
      }
      for (const replica_desc& r : rl.replicas) {
        if (r.status != replica_status::complete) continue;
        result<seg_entry> seg = fail(errc::internal_error);
        if (auto known = known_segment(r.engine_segment))
          seg = *known;
        else
          seg = co_await segment(r.engine_segment);
        if (!seg) {
          last[i] = seg.error();
          continue;
        }
        cands[i].push_back(cand{seg->id, r.addr, seg->rank});
      }
      if (cands[i].empty()) {
        out[i] = fail(last[i] ? last[i] : make_error_code(errc::invalid_replica));
        continue;
      }
      // Best transport first; among equals, rotate so that reads spread over the replicas.
      if (cands[i].size() > 1) {
        std::rotate(cands[i].begin(), cands[i].begin() + rr.fetch_add(1, std::memory_order_relaxed) % cands[i].size(),
                    cands[i].end());
        std::stable_sort(cands[i].begin(), cands[i].end(), [](const cand& a, const cand& b) { return a.rank < b.rank; });
      }
      pending.push_back(i);
    }

    std::vector<std::size_t> next(n, 0);
    std::vector<transfer_request> reqs;
    std::vector<std::size_t> rbegin;
    while (!pending.empty()) {
      reqs.clear();
      rbegin.assign(1, 0);
      for (std::size_t i : pending) {
        const cand& cd = cands[i][next[i]];
        for_each_piece(objs.of(i), lists[i]->size, [&](io_part p, std::uint64_t off) {
          reqs.push_back(transfer_request{opcode::read, p.p, cd.seg, cd.addr + off, p.n});
        });
        rbegin.push_back(reqs.size());
      }
      auto res = co_await eng->transfer(reqs, batch_opts());
      std::vector<std::size_t> again;
      const auto now = std::chrono::steady_clock::now();
      for (std::size_t k = 0; k < pending.size(); ++k) {
        std::size_t i = pending[k];
        std::error_code ec = first_error(res, rbegin[k], rbegin[k + 1]);
        if (!ec) {
          auto ttl = lists[i]->lease_ttl;
          if (ttl.count() > 0 && now - (t0s ? (*t0s)[i] : t0) > ttl) {
            out[i] = fail(errc::lease_expired);
          } else {
            out[i] = lists[i]->size;
            if (next[i] > 0) c.failovers.fetch_add(1, std::memory_order_relaxed);
          }
          continue;
        }
        log::info("store client {}: reading a replica failed ({}); {}", id, ec.message(),
                  next[i] + 1 < cands[i].size() ? "trying the next one" : "no replica left");
        if (!is_canceled(ec) && ++next[i] < cands[i].size())
          again.push_back(i);
        else
          out[i] = fail(ec);
      }
      pending = std::move(again);
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (out[i]) {
        c.gets.fetch_add(1, std::memory_order_relaxed);
        c.get_bytes.fetch_add(*out[i], std::memory_order_relaxed);
      } else {
        c.get_failures.fetch_add(1, std::memory_order_relaxed);
      }
    }
  }

  // Picks the replica a cached entry's single-key reads go to, among segments this client already
  // opened (false: none, and the general path opens them).
  bool pick_replica(cached_list& e) {
    if (e.pick) return true;
    const std::size_t n = e.list.replicas.size();
    const std::size_t start = n ? rr.fetch_add(1, std::memory_order_relaxed) % n : 0;
    for (std::size_t k = 0; k < n; ++k) {
      const replica_desc& r = e.list.replicas[(start + k) % n];
      if (r.status != replica_status::complete) continue;
      auto seg = known_segment(r.engine_segment);
      if (seg && (!e.pick || seg->rank < e.pick->rank)) {
        e.pick = *seg;
        e.pick_addr = r.addr;
      }
    }
    return e.pick.has_value();
  }

  // One key whose replica list is cached: one transfer and nothing else, without the bookkeeping of
  // read_objects (per-key vectors, a copy of the list, segment lookups), which for a small object
  // costs about as much as its copy. False when the entry does not apply or the read failed; the
  // entry is then dropped and the general path runs (and asks the master).
  task<bool> read_cached_one(replica_cache& rc, const std::string& key, const object_set& objs,
                             std::chrono::steady_clock::time_point t0, std::uint64_t epoch, std::uint64_t link,
                             std::vector<result<std::uint64_t>>& out) {
    auto it = rc.map.find(key);
    if (it == rc.map.end() || it->second.epoch != epoch || it->second.link != link || !(t0 < it->second.until))
      co_return false;
    cached_list& e = it->second;
    const std::uint64_t size = e.list.size;
    if (size == 0 || size > objs.bytes(0) || !pick_replica(e)) co_return false;
    // The entry may change while the transfer is in flight (this thread runs other gets meanwhile):
    // everything needed afterwards is copied now.
    const auto leased_at = e.t0;
    const auto ttl = e.list.lease_ttl;
    const transfer::segment_id seg = e.pick->id;
    // Most objects are one buffer: their requests live here, not on the heap.
    const auto parts = objs.of(0);
    std::array<transfer_request, 4> small;
    std::vector<transfer_request> big;
    std::span<transfer_request> reqs(small.data(), std::min(parts.size(), small.size()));
    if (parts.size() > small.size()) {
      big.resize(parts.size());
      reqs = big;
    }
    std::size_t nreq = 0;
    const std::uint64_t addr = e.pick_addr;
    for_each_piece(parts, size, [&](io_part p, std::uint64_t off) {
      reqs[nreq++] = transfer_request{opcode::read, p.p, seg, addr + off, p.n};
    });
    auto res = co_await eng->transfer(reqs.first(nreq), batch_opts());
    if (!res.first_error() && !(ttl.count() > 0 && std::chrono::steady_clock::now() - leased_at > ttl)) {
      out[0] = size;
      c.gets.fetch_add(1, std::memory_order_relaxed);
      c.get_bytes.fetch_add(size, std::memory_order_relaxed);
      c.cache_hits.fetch_add(1, std::memory_order_relaxed);
      co_return true;
    }
    if (replica_cache* here = local_cache()) here->map.erase(key);
    co_return false;
  }

  task<void> get_objects(std::span<const std::string> keys, const object_set& objs,
                         std::vector<result<std::uint64_t>>& out) {
    const auto t0 = std::chrono::steady_clock::now();
    replica_cache* rc = local_cache();
    if (!rc) {
      auto lists = co_await lookup(keys);
      co_await read_objects(lists, objs, out, t0);
      co_return;
    }
    const std::size_t n = keys.size();
    const std::uint64_t epoch = cache_epoch.load(std::memory_order_acquire);
    const std::uint64_t link = master->link_epoch();
    if (n == 1 && out[0]) {
      const bool done = co_await read_cached_one(*rc, keys[0], objs, t0, epoch, link, out);
      if (done) co_return;
    }
    std::vector<result<replica_list>> lists(n, result<replica_list>(fail(errc::internal_error)));
    std::vector<std::chrono::steady_clock::time_point> t0s(n, t0);
    std::vector<char> hit(n, 0);
    std::vector<std::string> miss_keys;
    std::vector<std::size_t> miss_idx;
    for (std::size_t i = 0; i < n; ++i) {
      if (!out[i]) continue;
      if (const cached_list* e = cached(*rc, keys[i], t0, epoch, link)) {
        lists[i] = e->list;
        t0s[i] = e->t0;
        hit[i] = 1;
      } else {
        miss_keys.push_back(keys[i]);
        miss_idx.push_back(i);
      }
    }
    if (!miss_keys.empty()) {
      auto got = co_await lookup(miss_keys);
      for (std::size_t k = 0; k < miss_idx.size(); ++k) lists[miss_idx[k]] = std::move(got[k]);
      // Entries are taken with the epochs read before the lookup: a remove that overlapped it left
      // the epoch newer, so what it returned is never used from the cache.
      if (local_cache() == rc)
        for (std::size_t i : miss_idx)
          if (lists[i]) remember(*rc, keys[i], *lists[i], t0, epoch, link);
    }
    co_await read_objects(lists, objs, out, t0, &t0s);

    // A cached list that failed (a node gone, a lease run out, an object replaced by another client)
    // is dropped, and the key looked up and read again, once.
    std::vector<std::size_t> again;
    std::size_t served = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!hit[i]) continue;
      if (out[i])
        ++served;
      else
        again.push_back(i);
    }
    if (served) c.cache_hits.fetch_add(served, std::memory_order_relaxed);
    if (again.empty()) co_return;
    if (replica_cache* here = local_cache())
      for (std::size_t i : again) here->map.erase(keys[i]);
    c.get_failures.fetch_sub(again.size(), std::memory_order_relaxed);  // counted again below
    std::vector<std::string> rkeys;
    object_set robjs;
    std::vector<result<std::uint64_t>> rout(again.size(), std::uint64_t{0});
    select(keys, objs, again, rkeys, robjs);
    const auto t1 = std::chrono::steady_clock::now();
    auto rlists = co_await lookup(rkeys);
    co_await read_objects(rlists, robjs, rout, t1);
    for (std::size_t k = 0; k < again.size(); ++k) out[again[k]] = std::move(rout[k]);
  }

  // --- segments and heartbeat ---

  task<result<void>> mount_all(std::chrono::milliseconds wait) {
    const auto deadline = std::chrono::steady_clock::now() + wait;
    for (const segment_info& s : segs) {
      for (;;) {
        auto r = co_await master->mount_segment(id, s);
        if (r) break;
        bool transient = r.error() == errc::rpc_fail || r.error() == errc::rpc_timeout;
        if (!transient || std::chrono::steady_clock::now() >= deadline) co_return r;
        co_await io::sleep_for(std::chrono::milliseconds(100));
      }
    }
    co_return ok();
  }

  task<void> remount() {
    for (const segment_info& s : segs) {
      auto r = co_await master->mount_segment(id, s);
      if (r) {
        c.remounts.fetch_add(1, std::memory_order_relaxed);
        log::info("store client {}: segment {} mounted again", id, s.name);
      } else {
        log::warn("store client {}: re-mounting segment {} failed: {}", id, s.name, r.error().message());
      }
    }
  }

  task<void> heartbeat() {
    for (;;) {
      auto s = co_await io::sleep_for(cfg.heartbeat_interval);
      if (!s) break;
      auto p = co_await master->ping(id);
      if ((co_await coro::get_stop_token()).stop_requested()) break;
      if (!p) {
        c.heartbeat_failures.fetch_add(1, std::memory_order_relaxed);
        log::info("store client {}: heartbeat failed: {}", id, p.error().message());
        continue;
      }
      if (p->need_remount) {
        drop_cached();  // the master lost its state: the leases behind cached lists went with it
        co_await remount();
      }
    }
    hb_done.set();
    hb_exited.store(true, std::memory_order_release);
  }

  // The published descriptor lists every contributed segment: a peer handed a replica there can find it.
  task<bool> published(transfer::metadata_store& meta) {
    auto v = co_await meta.get(transfer::ram_key(eng->segment_name()));
    if (!v || !*v) co_return false;
    auto d = transfer::segment_desc::from_json(**v);
    if (!d) co_return false;
    for (const segment_info& s : segs)
      if (!d->find(s.base, s.size)) co_return false;
    co_return true;
  }
  task<result<void>> wait_published() {
    if (segs.empty() || cfg.metadata == "P2PHANDSHAKE" || cfg.metadata == "p2p") co_return ok();
    auto meta = transfer::make_metadata_store(cfg.metadata);
    if (!meta) co_return fail(meta.error());
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (!co_await published(**meta)) {
      if (std::chrono::steady_clock::now() >= deadline) co_return fail(te_errc::metadata_error);
      co_await io::sleep_for(std::chrono::milliseconds(2));
    }
    co_return ok();
  }
};

// ---------------------------------------------------------------------------------------------

namespace {

result<std::vector<std::string>> transports_for(const client_config& cfg) {
  if (!cfg.transports.empty()) return cfg.transports;
  if (cfg.protocol == "tcp") return std::vector<std::string>{"local", "shm", "tcp"};
  if (cfg.protocol == "rdma") return std::vector<std::string>{"local", "shm", "rdma"};
  return fail(errc::invalid_params);
}

result<std::unique_ptr<client::impl>> build(client_config cfg, master_service* external) {
  auto p = std::make_unique<client::impl>();
  p->cfg = std::move(cfg);
  auto& c = p->cfg;
  p->id = c.client_id.empty() ? random_id() : c.client_id;
  {
    std::random_device rd;
    p->placeholder_fixed = rd() & 0xFFFFF;
    p->next_placeholder.store((std::uint64_t(rd()) << 32) ^ rd(), std::memory_order_relaxed);
  }
  auto transports = transports_for(c);
  if (!transports) return fail(transports.error());
  if (c.heartbeat_interval.count() <= 0 || c.engine_threads == 0) return fail(errc::invalid_params);

  std::string host = c.local_hostname;
  std::uint16_t port = 0;
  if (auto colon = host.rfind(':'); colon != std::string::npos && host.find(':') == colon) {
    unsigned v = 0;
    auto tail = std::string_view(host).substr(colon + 1);
    auto [ptr, ec] = std::from_chars(tail.data(), tail.data() + tail.size(), v);
    if (ec != std::errc{} || ptr != tail.data() + tail.size() || v > 65535) return fail(errc::invalid_params);
    port = static_cast<std::uint16_t>(v);
    host.resize(colon);
  }
  if (host.empty()) return fail(errc::invalid_params);
  p->host = host;

  p->pool = std::make_unique<io::reactor_pool>(1);

  transfer::engine_config ec = c.engine;
  ec.metadata = c.metadata;
  ec.listen_host = host;
  ec.listen_port = port;
  ec.threads = c.engine_threads;
  ec.transports = std::move(*transports);
  ec.batch_deadline = c.transfer_deadline;
  auto e = transfer::engine::create(ec);
  if (!e) return fail(e.error());
  p->eng = std::move(*e);
  // RDMA without a usable NIC would start, mount, and then fail every transfer to another host: a
  // node that cannot serve should not join. With tcp also listed, tcp carries what rdma cannot.
  const auto& ts = p->eng->config().transports;
  if (std::find(ts.begin(), ts.end(), "rdma") != ts.end() && !p->eng->usable("rdma")) {
    if (std::find(ts.begin(), ts.end(), "tcp") == ts.end()) {
      log::error("store client: protocol rdma, but no RDMA NIC could be opened{}; the engine's log says why",
                 ec.rdma.devices.empty() ? "" : fmt::format(" (asked for {})", fmt::join(ec.rdma.devices, ",")));
      return fail(te_errc::device_not_found);
    }
    log::warn("store client: no RDMA NIC could be opened; transfers to other hosts use tcp");
  }
  if (p->eng->usable("rdma") && c.staging_buffer_size > 0) {
    auto area = staging_area::create(c.staging_buffer_size);
    if (!area) return fail(std::errc::not_enough_memory);
    if (auto r = p->eng->register_memory(area->data(), area->size(), "cpu:0", false); !r) return fail(r.error());
    p->staging = std::move(area);
  }
  for (std::size_t i = 0; i < p->eng->reactors().size(); ++i)
    p->reg_copies.push_back(std::make_unique<client::impl::reg_copy>());
  if (c.replica_cache_max_age.count() > 0) {
    if (c.replica_cache_entries == 0) return fail(errc::invalid_params);
    for (std::size_t i = 0; i < p->eng->reactors().size(); ++i)
      p->caches.push_back(std::make_unique<client::impl::replica_cache>());
  }

  if (c.deferred_commit_gather.count() < 0) return fail(errc::invalid_params);
  if (c.defer_put_commit && c.put_reservation_bytes == 0) {
    log::warn("store client: defer_put_commit needs put_reservation_bytes > 0 (only reserved puts defer)");
    return fail(errc::invalid_params);
  }
  if (c.put_reservation_bytes > 0) {
    if (c.put_reservation_max_age.count() <= 0) return fail(errc::invalid_params);
    for (std::size_t i = 0; i < p->eng->reactors().size(); ++i)
      p->reserves.push_back(std::make_unique<client::impl::reserve_state>());
  }

  if (external) {
    p->master = external;
  } else {
    rpc_client_options ro;
    ro.call_timeout = c.rpc_timeout;
    ro.connect_timeout = c.rpc_timeout;
    // Homed on the engine's reactors, at least one per thread: a caller on an engine thread
    // (co_await engine().schedule()) then reaches the master and the replicas without a thread hop.
    // On a pool of the client's own, every master call crossed threads twice (there and back),
    // which measured as much as the round trip itself for a small put.
    ro.connections = std::max(c.rpc_connections, p->eng->reactors().size());
    auto m = rpc_master_client::create(c.master, ro, &p->eng->reactors());
    if (!m) {
      log::error("store client: bad master address '{}': {}", c.master, m.error().message());
      return fail(m.error());
    }
    p->owned_master = std::move(*m);
    p->master = p->owned_master.get();
  }

  if (c.local_buffer_size) {
    std::size_t len = (c.local_buffer_size + 4095) / 4096 * 4096;
    p->local_buf = static_cast<std::byte*>(std::aligned_alloc(4096, len));
    if (!p->local_buf) return fail(std::errc::not_enough_memory);
    p->local_len = c.local_buffer_size;
    if (auto r = p->eng->register_memory(p->local_buf, p->local_len, "cpu:0", false); !r) return fail(r.error());
    p->registered.emplace(reinterpret_cast<std::uintptr_t>(p->local_buf), p->local_len);
  }

  if (c.global_segment_size) {
    const std::uint64_t chunk = std::max<std::uint64_t>(c.max_segment_size, 4096);
    for (std::uint64_t off = 0; off < c.global_segment_size; off += chunk) {
      std::uint64_t len = std::min(chunk, c.global_segment_size - off);
      auto mem = p->eng->allocate_shared(len, c.hugepages);
      if (!mem) {
        log::error("store client: cannot allocate {} bytes to contribute: {}", len, mem.error().message());
        return fail(mem.error());
      }
      segment_info s;
      if (c.prefault) {
        if (auto ec = prefault(*mem, len)) {
          log::error("store client: cannot fault in {} bytes to contribute: {}", len, ec.message());
          return fail(ec);
        }
      }
      auto base = reinterpret_cast<std::uint64_t>(*mem);
      s.name = fmt::format("{}/{:x}", p->eng->segment_name(), base);
      s.engine_segment = p->eng->segment_name();
      s.host = host;
      s.base = base;
      s.size = len;
      s.transport = c.protocol;
      p->segs.push_back(std::move(s));
    }
    if (auto r = p->pool->block_on(0, p->wait_published()); !r) {
      log::error("store client: the engine's descriptor was not published: {}", r.error().message());
      return fail(r.error());
    }
    if (auto r = p->pool->block_on(0, p->mount_all(c.master_wait)); !r) {
      log::error("store client {}: mounting its segments failed: {}", p->id, r.error().message());
      return fail(r.error());
    }
  }
  p->hb_running = true;
  p->pool->spawn(0, p->heartbeat().with_stop_token(p->hb_stop.get_token()));
  for (std::size_t i = 0; i < p->reserves.size(); ++i) p->bg.spawn(p->sweep(i));
  log::info("store client {} up: engine {}, {} bytes contributed in {} segment(s)", p->id, p->eng->segment_name(),
            c.global_segment_size, p->segs.size());
  return p;
}

}  // namespace

client::client(std::unique_ptr<impl> p) noexcept : p_(std::move(p)) {}

result<std::unique_ptr<client>> client::create(client_config cfg) {
  if (cfg.master.empty()) return fail(errc::invalid_params);
  auto p = build(std::move(cfg), nullptr);
  if (!p) return fail(p.error());
  return std::unique_ptr<client>(new client(std::move(*p)));
}

result<std::unique_ptr<client>> client::create(client_config cfg, master_service& master) {
  auto p = build(std::move(cfg), &master);
  if (!p) return fail(p.error());
  return std::unique_ptr<client>(new client(std::move(*p)));
}

client::~client() {
  if (!p_) return;
  if (!p_->closed.load()) (void)p_->pool->block_on(0, close());
}

const client_id& client::id() const noexcept { return p_->id; }
const client_config& client::config() const noexcept { return p_->cfg; }
transfer::engine& client::engine() noexcept { return *p_->eng; }
std::vector<segment_info> client::segments() const { return p_->segs; }
std::span<std::byte> client::local_buffer() const noexcept { return {p_->local_buf, p_->local_len}; }
replicate_config client::cfg_defaults() const { return p_->cfg.replica_defaults; }

client_stats client::stats() const noexcept {
  auto& c = p_->c;
  client_stats s;
  s.puts = c.puts.load();
  s.put_failures = c.put_failures.load();
  s.put_bytes = c.put_bytes.load();
  s.gets = c.gets.load();
  s.get_failures = c.get_failures.load();
  s.get_bytes = c.get_bytes.load();
  s.failovers = c.failovers.load();
  s.revokes = c.revokes.load();
  s.remounts = c.remounts.load();
  s.heartbeat_failures = c.heartbeat_failures.load();
  s.replica_cache_hits = c.cache_hits.load();
  s.reserved_puts = c.reserved_puts.load();
  s.reservation_fallbacks = c.reservation_fallbacks.load();
  s.deferred_commit_failures = c.deferred_failures.load();
  s.reservation_waits = c.reservation_waits.load();
  return s;
}

result<void> client::register_buffer(void* addr, std::size_t size) {
  if (!addr || size == 0) return fail(errc::invalid_params);
  if (auto r = p_->eng->register_memory(addr, size, "cpu:0", false); !r) return r;
  std::lock_guard lk(p_->reg_mu);
  p_->registered.emplace(reinterpret_cast<std::uintptr_t>(addr), size);
  p_->note_registered_changed();
  return ok();
}

result<void> client::unregister_buffer(void* addr) {
  if (auto r = p_->eng->unregister_memory(addr); !r) return r;
  std::lock_guard lk(p_->reg_mu);
  p_->registered.erase(reinterpret_cast<std::uintptr_t>(addr));
  p_->note_registered_changed();
  return ok();
}

// --- put ---

task<result<void>> client::put(std::string key, std::span<const std::byte> value, replicate_config cfg) {
  std::vector<result<void>> out(1, ok());
  if (p_->closed.load()) co_return fail(errc::closed);
  co_await p_->put_values(std::span(&key, 1), std::span(&value, 1), std::move(cfg), false, out);
  co_return out[0];
}

task<result<void>> client::upsert(std::string key, std::span<const std::byte> value, replicate_config cfg) {
  std::vector<result<void>> out(1, ok());
  if (p_->closed.load()) co_return fail(errc::closed);
  (void)co_await p_->wait_commits();  // a deferred put of this key lands first, as it was called first
  co_await p_->put_values(std::span(&key, 1), std::span(&value, 1), std::move(cfg), true, out);
  p_->drop_cached();
  co_return out[0];
}

task<std::vector<result<void>>> client::batch_put(std::span<const std::string> keys,
                                                  std::span<const std::span<const std::byte>> values,
                                                  replicate_config cfg) {
  std::vector<result<void>> out(keys.size(), ok());
  if (values.size() != keys.size()) {
    out.assign(keys.size(), fail(errc::invalid_params));
    co_return out;
  }
  if (p_->closed.load()) {
    out.assign(keys.size(), fail(errc::closed));
    co_return out;
  }
  co_await p_->put_values(keys, values, std::move(cfg), false, out);
  co_return out;
}

task<result<void>> client::put_from(std::string key, const void* src, std::uint64_t size, replicate_config cfg) {
  if (p_->closed.load()) co_return fail(errc::closed);
  if (!p_->is_registered(src, size)) co_return fail(errc::invalid_params);
  object_set objs;
  objs.add(src, size);
  objs.next();
  std::vector<result<void>> out(1, ok());
  co_await p_->put_objects(std::span(&key, 1), objs, std::move(cfg), false, out);
  co_return out[0];
}

task<std::vector<result<void>>> client::batch_put_from(std::span<const std::string> keys,
                                                       std::span<const void* const> srcs,
                                                       std::span<const std::uint64_t> sizes, replicate_config cfg) {
  std::vector<result<void>> out(keys.size(), ok());
  if (srcs.size() != keys.size() || sizes.size() != keys.size()) {
    out.assign(keys.size(), fail(errc::invalid_params));
    co_return out;
  }
  if (p_->closed.load()) {
    out.assign(keys.size(), fail(errc::closed));
    co_return out;
  }
  object_set objs;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (!p_->is_registered(srcs[i], sizes[i])) out[i] = fail(errc::invalid_params);
    objs.add(srcs[i], sizes[i]);
    objs.next();
  }
  co_await p_->put_objects(keys, objs, std::move(cfg), false, out);
  co_return out;
}

task<std::vector<result<void>>> client::batch_put_from_multi_buffers(
    std::span<const std::string> keys, std::span<const std::vector<const void*>> srcs,
    std::span<const std::vector<std::uint64_t>> sizes, replicate_config cfg) {
  std::vector<result<void>> out(keys.size(), ok());
  if (srcs.size() != keys.size() || sizes.size() != keys.size()) {
    out.assign(keys.size(), fail(errc::invalid_params));
    co_return out;
  }
  if (p_->closed.load()) {
    out.assign(keys.size(), fail(errc::closed));
    co_return out;
  }
  object_set objs;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (srcs[i].size() != sizes[i].size()) out[i] = fail(errc::invalid_params);
    for (std::size_t k = 0; out[i] && k < srcs[i].size(); ++k) {
      if (!p_->is_registered(srcs[i][k], sizes[i][k])) out[i] = fail(errc::invalid_params);
      objs.add(srcs[i][k], sizes[i][k]);
    }
    objs.next();
  }
  co_await p_->put_objects(keys, objs, std::move(cfg), false, out);
  co_return out;
}

// --- get ---

task<result<std::vector<std::byte>>> client::get(std::string key) {
  if (p_->closed.load()) co_return fail(errc::closed);
  const auto t0 = std::chrono::steady_clock::now();
  auto lists = co_await p_->lookup(std::span(&key, 1));
  if (!lists[0]) co_return fail(lists[0].error());
  auto values = co_await p_->get_values(lists, t0);
  co_return std::move(values[0]);
}

task<std::vector<result<std::vector<std::byte>>>> client::batch_get(std::span<const std::string> keys) {
  std::vector<result<std::vector<std::byte>>> values;
  values.reserve(keys.size());
  if (p_->closed.load()) {
    for (std::size_t i = 0; i < keys.size(); ++i) values.push_back(fail(errc::closed));
    co_return values;
  }
  const auto t0 = std::chrono::steady_clock::now();
  auto lists = co_await p_->lookup(keys);
  co_return co_await p_->get_values(lists, t0);
}

task<result<std::uint64_t>> client::get_into(std::string key, void* dst, std::uint64_t size) {
  if (p_->closed.load()) co_return fail(errc::closed);
  if (!p_->is_registered(dst, size)) co_return fail(errc::invalid_params);
  object_set objs;
  objs.add(dst, size);
  objs.next();
  std::vector<result<std::uint64_t>> out(1, std::uint64_t{0});
  co_await p_->get_objects(std::span(&key, 1), objs, out);
  co_return out[0];
}

task<std::vector<result<std::uint64_t>>> client::batch_get_into(std::span<const std::string> keys,
                                                                std::span<void* const> dsts,
                                                                std::span<const std::uint64_t> sizes) {
  std::vector<result<std::uint64_t>> out(keys.size(), std::uint64_t{0});
  if (dsts.size() != keys.size() || sizes.size() != keys.size()) {
    out.assign(keys.size(), fail(errc::invalid_params));
    co_return out;
  }
  if (p_->closed.load()) {
    out.assign(keys.size(), fail(errc::closed));
    co_return out;
  }
  object_set objs;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (!p_->is_registered(dsts[i], sizes[i])) out[i] = fail(errc::invalid_params);
    objs.add(dsts[i], sizes[i]);
    objs.next();
  }
  co_await p_->get_objects(keys, objs, out);
  co_return out;
}

task<std::vector<result<std::uint64_t>>> client::batch_get_into_multi_buffers(
    std::span<const std::string> keys, std::span<const std::vector<void*>> dsts,
    std::span<const std::vector<std::uint64_t>> sizes) {
  std::vector<result<std::uint64_t>> out(keys.size(), std::uint64_t{0});
  if (dsts.size() != keys.size() || sizes.size() != keys.size()) {
    out.assign(keys.size(), fail(errc::invalid_params));
    co_return out;
  }
  if (p_->closed.load()) {
    out.assign(keys.size(), fail(errc::closed));
    co_return out;
  }
  object_set objs;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (dsts[i].size() != sizes[i].size()) out[i] = fail(errc::invalid_params);
    for (std::size_t k = 0; out[i] && k < dsts[i].size(); ++k) {
      if (!p_->is_registered(dsts[i][k], sizes[i][k])) out[i] = fail(errc::invalid_params);
      objs.add(dsts[i][k], sizes[i][k]);
    }
    objs.next();
  }
  co_await p_->get_objects(keys, objs, out);
  co_return out;
}

// --- prefixes ---

task<result<std::size_t>> client::match_prefix(std::span<const std::string> keys) {
  if (p_->closed.load()) co_return fail(errc::closed);
  std::vector<std::string> ks(keys.begin(), keys.end());
  auto m = co_await p_->master->match_prefix(std::move(ks));
  if (!m) co_return fail(m.error());
  co_return m->hits;
}

task<result<std::size_t>> client::load_prefix(std::span<const std::string> keys, std::span<void* const> dsts,
                                              std::span<const std::uint64_t> sizes) {
  if (p_->closed.load()) co_return fail(errc::closed);
  if (dsts.size() != keys.size() || sizes.size() != keys.size()) co_return fail(errc::invalid_params);
  for (std::size_t i = 0; i < keys.size(); ++i)
    if (!p_->is_registered(dsts[i], sizes[i])) co_return fail(errc::invalid_params);
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<result<replica_list>> lists;
  std::vector<std::chrono::steady_clock::time_point> t0s;
  // The leading keys the replica cache holds need no master; the master matches the rest (one round
  // trip, none when every key is cached).
  impl::replica_cache* rc = p_->local_cache();
  const std::uint64_t epoch = rc ? p_->cache_epoch.load(std::memory_order_acquire) : 0;
  const std::uint64_t link = rc ? p_->master->link_epoch() : 0;
  std::size_t cached = 0;
  if (rc) {
    for (; cached < keys.size(); ++cached) {
      const impl::cached_list* e = impl::cached(*rc, keys[cached], t0, epoch, link);
      if (!e) break;
      lists.emplace_back(e->list);
      t0s.push_back(e->t0);
    }
  }
  if (cached < keys.size()) {
    std::vector<std::string> ks(keys.begin() + static_cast<std::ptrdiff_t>(cached), keys.end());
    auto m = co_await p_->master->match_prefix(std::move(ks));
    if (!m) {
      if (cached == 0) co_return fail(m.error());
    } else {
      const std::size_t hits = std::min({m->hits, m->replicas.size(), keys.size() - cached});
      const bool keep = rc && p_->local_cache() == rc;
      for (std::size_t i = 0; i < hits; ++i) {
        if (keep) p_->remember(*rc, keys[cached + i], m->replicas[i], t0, epoch, link);
        lists.emplace_back(std::move(m->replicas[i]));
        t0s.push_back(t0);
      }
    }
  }
  const std::size_t hits = lists.size();
  if (hits == 0) co_return std::size_t{0};
  object_set objs;
  for (std::size_t i = 0; i < hits; ++i) {
    objs.add(dsts[i], sizes[i]);
    objs.next();
  }
  std::vector<result<std::uint64_t>> out(hits, std::uint64_t{0});
  co_await p_->read_objects(lists, objs, out, t0, &t0s);
  std::size_t loaded = 0;
  while (loaded < hits && out[loaded]) ++loaded;
  if (cached) {
    std::size_t served = std::min(loaded, cached);
    if (served) p_->c.cache_hits.fetch_add(served, std::memory_order_relaxed);
    // A cached hit that failed ends the prefix here, and leaves the cache: the next load asks the master.
    if (loaded < cached)
      if (auto* here = p_->local_cache())
        for (std::size_t i = loaded; i < cached; ++i)
          if (!out[i]) here->map.erase(keys[i]);
  }
  co_return loaded;
}

// --- metadata ---

task<result<bool>> client::exist(std::string key) {
  if (p_->closed.load()) co_return fail(errc::closed);
  co_return co_await p_->master->exist(std::move(key));
}

task<std::vector<result<bool>>> client::batch_exist(std::span<const std::string> keys) {
  if (p_->closed.load()) co_return std::vector<result<bool>>(keys.size(), fail(errc::closed));
  std::vector<std::string> ks(keys.begin(), keys.end());
  co_return co_await p_->master->batch_exist(std::move(ks));
}

task<result<std::uint64_t>> client::get_size(std::string key) {
  if (p_->closed.load()) co_return fail(errc::closed);
  co_return co_await p_->master->get_size(std::move(key));
}

task<result<void>> client::remove(std::string key, bool force) {
  if (p_->closed.load()) co_return fail(errc::closed);
  (void)co_await p_->wait_commits();
  auto r = co_await p_->master->remove(std::move(key), force);
  p_->drop_cached();
  co_return r;
}

task<std::vector<result<void>>> client::batch_remove(std::span<const std::string> keys, bool force) {
  if (p_->closed.load()) co_return std::vector<result<void>>(keys.size(), fail(errc::closed));
  (void)co_await p_->wait_commits();
  std::vector<std::string> ks(keys.begin(), keys.end());
  auto r = co_await p_->master->batch_remove(std::move(ks), force);
  p_->drop_cached();
  co_return r;
}

task<result<std::uint64_t>> client::remove_all(bool force) {
  if (p_->closed.load()) co_return fail(errc::closed);
  (void)co_await p_->wait_commits();
  auto r = co_await p_->master->remove_all(force);
  p_->drop_cached();
  // A forced remove_all takes puts in flight too, reservations among them.
  if (force) p_->reserve_epoch.fetch_add(1, std::memory_order_acq_rel);
  co_return r;
}

task<result<std::vector<deferred_failure>>> client::flush() {
  // wait_commits() returns on this caller's executor.
  if (auto w = co_await p_->wait_commits(); !w) co_return fail(w.error());
  std::vector<deferred_failure> out;
  std::lock_guard lock(p_->failed_mu);
  out.swap(p_->failed);
  co_return out;
}

task<result<void>> client::close() {
  if (p_->closed.exchange(true)) co_return ok();
  coro::executor* caller = coro::current_executor();
  p_->hb_stop.request_stop();
  if (p_->hb_running) (void)co_await p_->hb_done.wait();
  (void)co_await p_->wait_commits();  // puts that returned are committed before their reservations go
  co_await p_->drop_reservations();
  result<void> first = ok();
  for (const segment_info& s : p_->segs) {
    auto r = co_await p_->master->unmount_segment(p_->id, s.name);
    // A master that already expired us, or restarted, no longer knows the segment: nothing to undo.
    if (!r && r.error() != errc::segment_not_found && first) first = r;
    if (!r && r.error() != errc::segment_not_found)
      log::warn("store client {}: unmounting {} failed: {}", p_->id, s.name, r.error().message());
  }
  co_await hop_to{caller, {}};
  co_return first;
}

// ---------------------------------------------------------------------------------------------

result<std::uint64_t> parse_size(std::string_view text) {
  auto s = text;
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  if (i == 0) return fail(errc::invalid_params);
  std::string num(s.substr(0, i));
  std::string unit;
  for (char ch : s.substr(i))
    if (!std::isspace(static_cast<unsigned char>(ch))) unit.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(ch))));
  char* end = nullptr;
  double v = std::strtod(num.c_str(), &end);
  if (*end != '\0' || !(v >= 0)) return fail(errc::invalid_params);
  double mult = 1;
  static const std::pair<const char*, double> units[] = {
      {"", 1},          {"b", 1},           {"k", 0x1p10},    {"kib", 0x1p10}, {"m", 0x1p20}, {"mib", 0x1p20},
      {"g", 0x1p30},    {"gib", 0x1p30},    {"t", 0x1p40},    {"tib", 0x1p40}, {"kb", 1e3},   {"mb", 1e6},
      {"gb", 1e9},      {"tb", 1e12}};
  bool found = false;
  for (auto& [name, m] : units)
    if (unit == name) {
      mult = m;
      found = true;
    }
  if (!found) return fail(errc::invalid_params);
  double bytes = std::floor(v * mult);
  if (bytes >= 0x1p64) return fail(errc::invalid_params);
  return static_cast<std::uint64_t>(bytes);
}

}  // namespace yutu::store
