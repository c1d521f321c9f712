// The shared-memory transport: a peer on this host exposes memfd-backed buffers; we map each one
// once (through /proc/<pid>/fd/<fd>) and copy directly. A pidfd tells us when the peer exited, since
// a mapping of a dead peer's memory stays valid and writes into it would vanish silently.
//
// The pidfd is watched by a poll on one of the engine's reactors, which sets a flag when the peer
// exits: a transfer reads that flag instead of polling the pidfd itself. A syscall per request cost
// as much as the copy of a 64 KiB block, and made the peer's lock a point of contention.
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <mutex>
#include <stop_token>
#include <vector>

#include "transports.hpp"
#include "yutu/transfer/detail/stream_copy.hpp"
#include "yutu/io/op.hpp"
#include "yutu/log.hpp"

namespace yutu::transfer::detail {
namespace {

int open_pidfd(int pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

// One incarnation of a peer process: its pidfd, and whether it has exited.
struct peer_liveness {
  struct relay {
    std::stop_source* to;
    void operator()() const noexcept { to->request_stop(); }
  };
  explicit peer_liveness(int fd, std::stop_token transport_stopping)
      : pidfd(fd), relay_stop(std::move(transport_stopping), relay{&stop}) {}
  peer_liveness(const peer_liveness&) = delete;
  peer_liveness& operator=(const peer_liveness&) = delete;

  std::atomic<bool> exited{false};
  int pidfd = -1;
  // Every mapping of this incarnation's memory, retired (shm_mapping::retire) once it exits: a dead
  // process's memfds live on only while peers map them, and the threads' cached entries that hold
  // them go only when those threads next reach this peer, which after a node's exit may be never.
  std::mutex maps_mu;
  std::vector<std::weak_ptr<shm_mapping>> maps;
  void add(const std::shared_ptr<shm_mapping>& m) {
    std::lock_guard lk(maps_mu);
    std::erase_if(maps, [](const std::weak_ptr<shm_mapping>& w) { return w.expired(); });
    maps.push_back(m);
    // retire_all() sets `exited` before it takes the lock: a mapping added after it ran sees it.
    if (exited.load(std::memory_order_acquire)) m->retire();
  }
  void retire_all() noexcept {
    std::lock_guard lk(maps_mu);
    for (auto& w : maps)
      if (auto m = w.lock()) m->retire();
    maps.clear();
  }
  // The blocks of this live incarnation that it unregistered or freed: their mappings are retired
  // too. Otherwise a freed block's pages stay allocated for as long as any thread's cached entry
  // holds its mapping, and a thread that never reaches the block again never drops it: a node that
  // frees a segment would give none of its memory back while clients run. A copy racing with the
  // retire lands in zero-filled memory and fails its guard check; a block registered again after
  // its mapping was retired fails that check once and is mapped again (the engine retries).
  void retire_released() noexcept {
    std::lock_guard lk(maps_mu);
    std::erase_if(maps, [](const std::weak_ptr<shm_mapping>& w) {
      auto m = w.lock();
      if (!m) return true;
      if (!m->released_by_owner()) return false;
      m->retire();
      return true;
    });
  }
  std::stop_source stop;  // ends the watch: segment closed, peer restarted
  std::stop_callback<relay> relay_stop;  // ... or the engine stopping
  ~peer_liveness() {
    if (pidfd >= 0) ::close(pidfd);
  }
};

// How often the watch looks for blocks the live peer let go of (peer_liveness::retire_released).
constexpr std::chrono::seconds released_sweep_period{1};

// Runs on an engine reactor until the peer exits or the watch is stopped. A pidfd becomes readable
// when its process exits; between, once a period, the mappings of blocks the peer let go of go.
task<void> watch_exit(std::shared_ptr<peer_liveness> l) {
  for (;;) {
    auto r = co_await io::poll(l->pidfd, POLLIN).with_stop_token(l->stop.get_token()).with_timeout(released_sweep_period);
    if (r) {
      if (*r & (POLLIN | POLLHUP | POLLERR)) {
        l->exited.store(true, std::memory_order_release);
        l->retire_all();
        co_return;
      }
      continue;
    }
    if (r.error() != std::errc::timed_out || l->stop.stop_requested()) co_return;
    l->retire_released();
  }
}

// Maps a new mapping's pages in the background: MADV_POPULATE_READ through the ring, which the
// kernel's io-wq workers run. Without it the first write to each 4 KiB page of a peer's memory takes
// a minor fault on the copying thread: on the development machine 290 ms of CPU per GiB, against
// 80-120 ms for the populate, and 7 % of the main job's client CPU went to those faults. In chunks:
// it stops between two once the engine stops, the peer exits or its mapping is dropped (`live`, null
// where pidfds are unavailable), so that the memory of a dead peer is not held for long. Holding the
// mapping keeps its range from being unmapped, and reused by another mapping, under the advice.
task<void> populate(std::shared_ptr<shm_mapping> m, std::shared_ptr<peer_liveness> live, std::stop_token stop) {
#ifdef MADV_POPULATE_READ
  auto over = [&] {
    return stop.stop_requested() ||
           (live && (live->exited.load(std::memory_order_acquire) || live->stop.stop_requested()));
  };
  constexpr std::uint64_t chunk = 256ull << 20;
  for (std::uint64_t off = 0; off < m->size() && !over(); off += chunk) {
    auto r = co_await io::madvise(m->data() + off, std::min(chunk, m->size() - off), MADV_POPULATE_READ);
    if (!r) co_return;  // a kernel before 5.14: the pages fault in as they are written, as before
  }
#else
  (void)m;
  (void)live;
  (void)stop;
  co_return;
#endif
}

struct shm_peer_state final : transport_peer_state {
  std::mutex mu;
  // By the owner's memfd number and block id (buffer_desc::shm_id): a number the owner freed and
  // gave to a new block maps the new block, and the old mapping goes.
  std::map<std::pair<int, std::uint64_t>, std::shared_ptr<shm_mapping>> maps;
  std::shared_ptr<peer_liveness> live;               // null where pidfds are unavailable
  std::uint64_t mapped_incarnation = 0;
  void end_watch() noexcept {
    if (live) live->stop.request_stop();
  }
  ~shm_peer_state() override { end_watch(); }
};

// What a thread last used of each block it wrote to or read from, so that a request finds the
// mapping without the peer's lock (shared by every thread: taking it per request made its cache
// line bounce between the cores). An entry is keyed by everything that names one block of one
// process: the owner's incarnation, its memfd number and the block's id. It keeps the mapping
// (and the owner's liveness flag) alive while cached; a few entries per thread, replaced on
// collision, so at most that many stale mappings linger per thread.
struct fast_entry {
  std::uint64_t incarnation = 0, id = 0, size = 0;
  int fd = -1;
  std::shared_ptr<shm_mapping> map;
  std::shared_ptr<peer_liveness> live;
};
constexpr std::size_t fast_entries = 8;
thread_local std::array<fast_entry, fast_entries> fast;

fast_entry& fast_slot(std::uint64_t incarnation, int fd, std::uint64_t id) noexcept {
  return fast[(incarnation ^ static_cast<std::uint64_t>(fd) * 0x9e3779b97f4a7c15ull ^ id) % fast_entries];
}

// A block its owner unregistered or freed: this thread's entry and the peer's mapping of it go, so
// that we do not keep a freed block's memory alive (a block registered again is mapped again).
void forget(shm_peer_state& st, fast_entry& f, const buffer_desc& b) noexcept {
  f = fast_entry{};
  std::lock_guard lk(st.mu);
  if (auto it = st.maps.find({b.shm_fd, b.shm_id}); it != st.maps.end() && it->second->size() == b.shm_size)
    st.maps.erase(it);
}

}  // namespace

std::unique_ptr<transport_peer_state> shm_transport::make_peer_state(const peer_info&) {
  return std::make_unique<shm_peer_state>();
}

bool shm_transport::can_serve(const peer_info& peer, const transfer_request& r) const {
  if (peer.self || !peer.desc->speaks("shm") || peer.desc->host_id != host_.host_id()) return false;
  const buffer_desc* b = peer.desc->find(r.target_offset, r.length);
  return b && b->shm_fd >= 0;
}

task<std::error_code> shm_transport::execute(const peer_info& peer, const transfer_request& r) {
  co_return *execute_now(peer, r);
}

std::optional<std::error_code> shm_transport::execute_now(const peer_info& peer, const transfer_request& r) {
  auto& st = *static_cast<shm_peer_state*>(peer.state);
  const segment_desc& d = *peer.desc;
  const buffer_desc* b = d.find(r.target_offset, r.length);
  if (!b) return make_error_code(te_errc::address_not_registered);
  if (b->shm_fd < 0) return make_error_code(te_errc::no_transport);
  shm_mapping* m = nullptr;
  fast_entry& f = fast_slot(d.incarnation, b->shm_fd, b->shm_id);
  if (f.map && f.incarnation == d.incarnation && f.fd == b->shm_fd && f.id == b->shm_id && f.size == b->shm_size) {
    // Its memory is let go already: the exit watch retired every mapping of it (peer_liveness).
    if (f.live && f.live->exited.load(std::memory_order_acquire)) return make_error_code(te_errc::peer_unreachable);
    m = f.map.get();
  } else {
    std::lock_guard lk(st.mu);
    if (st.mapped_incarnation != d.incarnation) {
      st.maps.clear();
      st.end_watch();
      st.live.reset();
      st.mapped_incarnation = d.incarnation;
      if (int fd = open_pidfd(d.pid); fd >= 0) {
        st.live = std::make_shared<peer_liveness>(fd, stopping_.get_token());
        // The watch starts later, on a reactor: this first look covers a peer that is already gone.
        pollfd pf{fd, POLLIN, 0};
        if (::poll(&pf, 1, 0) > 0) st.live->exited.store(true, std::memory_order_relaxed);
        else host_.spawn_on(0, watch_exit(st.live));
      }
    }
    if (st.live && st.live->exited.load(std::memory_order_acquire))
      return make_error_code(te_errc::peer_unreachable);
    const std::pair<int, std::uint64_t> key{b->shm_fd, b->shm_id};
    auto it = st.maps.find(key);
    if (it == st.maps.end() || it->second->size() != b->shm_size) {
      // The owner's fd number now names this block: whatever we mapped under it before is gone.
      std::erase_if(st.maps, [&](const auto& kv) { return kv.first.first == b->shm_fd; });
      auto nm = shm_mapping::open(d.pid, b->shm_fd, b->shm_size);
      if (!nm) {
        log::info("engine {}: mapping {}'s memory failed ({}); falling back", host_.local_name(), *peer.name,
                  nm.error().message());
        return make_error_code(te_errc::no_transport);
      }
      nm->set_guard(b->shm_guard);
      it = st.maps.emplace(key, std::make_shared<shm_mapping>(std::move(*nm))).first;
      if (st.live) st.live->add(it->second);
      if (host_.config().shm_prefault) host_.spawn_on(0, populate(it->second, st.live, stopping_.get_token()));
    }
    m = it->second.get();
    f = fast_entry{d.incarnation, b->shm_id, b->shm_size, b->shm_fd, it->second, st.live};
  }
  std::byte* target = m->data() + b->shm_offset + (r.target_offset - b->addr);
  // The owner's word on this registration (shm_block): checked before the copy, and again after it
  // behind a full fence, so that a copy that overlapped an unregister or a free is reported failed.
  // A copy the second check passes was done before the owner cleared the guard: it reached the
  // buffer while it was registered.
  std::uint64_t* guard = b->shm_guard ? reinterpret_cast<std::uint64_t*>(m->data() + b->shm_guard) : nullptr;
  if (guard && std::atomic_ref<std::uint64_t>(*guard).load(std::memory_order_acquire) != b->shm_reg) {
    forget(st, f, *b);
    return make_error_code(te_errc::address_not_registered);
  }
  if (r.op == opcode::write)
    copy_to_peer(target, r.source, r.length, host_.config().nontemporal_write_threshold);
  else
    std::memcpy(r.source, target, r.length);
  if (guard) {
    // A write's stores must be visible before the guard is read again (store-load: a full fence); a
    // read's loads need only come before it.
    std::atomic_thread_fence(r.op == opcode::write ? std::memory_order_seq_cst : std::memory_order_acquire);
    if (std::atomic_ref<std::uint64_t>(*guard).load(std::memory_order_relaxed) != b->shm_reg) {
      forget(st, f, *b);
      return make_error_code(te_errc::address_not_registered);
    }
  }
  return std::error_code{};
}

void shm_transport::close_peer(const peer_info& peer) noexcept {
  if (!peer.state) return;
  auto& st = *static_cast<shm_peer_state*>(peer.state);
  std::lock_guard lk(st.mu);
  st.end_watch();
}

}  // namespace yutu::transfer::detail
