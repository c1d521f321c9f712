// The master's state machine, in process: segments, objects and their replicas, leases, pins,
// eviction and client liveness, behind master_service. Pure logic: no networking and no threads of its
// own; time comes from a clock the caller provides, so tests move it by hand. The RPC layer and the
// embedded mode call it from several reactor threads; one mutex guards the state, held only for the
// bookkeeping of one call (a batch takes it once).
//
// Semantics follow Mooncake's master where its users rely on them, and differ where they complained:
//  - put_start on an existing key fails with object_already_exists (Mooncake returns success without
//    writing, #346), and so does a second put_start of a key whose put is still in flight (#727).
//    A put in flight longer than put_start_timeout may be pre-empted by a new put_start; the old
//    replicas are not reused before put_start_discard_timeout (the old writer may still be writing).
//  - Fewer replicas than asked are placed when fewer segments (or fewer segments with room) exist:
//    a cache is better served by one copy than by none. put_start fails with no_available_handle only
//    when not even one replica fits after an eviction round.
//  - Memory a reader may still be reading is never handed out again early: removing a leased object
//    with force, or replacing it with upsert, frees its replicas when the lease ends.
//  - A master that stalled (no maintenance tick for longer than stall_threshold) does not expire its
//    clients for the silence it caused itself (#1753, #3937): their heartbeats are moved forward by
//    the stall.
//  - A segment unmounted (or its client expired) while a reader held a lease on a replica there, or a
//    write into it may still be in flight, is fenced by name: mounted again (a re-mount after
//    NEED_REMOUNT), it takes new replicas at once, but not in those ranges, each held back until its
//    lease has ended or its write is older than put_start_timeout. Otherwise a new object could be
//    written where a reader, inside its lease, is still reading the old one, and the reader would
//    get another object's bytes. (With more than a million such ranges the whole segment waits.)
//  - Eviction is exact LRU over complete objects (last access = put_end or lease grant), skips
//    leased, in-flight and hard-pinned objects, takes soft-pinned ones only after all others, and
//    evicts a group only whole. It runs when a placement fails (then the placement is retried once)
//    and when a segment passes the high watermark.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "yutu/store/master_service.hpp"

namespace yutu::store {

using master_clock = std::chrono::steady_clock;
using time_point = master_clock::time_point;
using clock_fn = std::function<time_point()>;

// A clock that moves only when told to; safe to read and advance from several threads.
class manual_clock {
 public:
  explicit manual_clock(time_point start = time_point{} + std::chrono::hours(1)) noexcept
      : ns_(start.time_since_epoch().count()) {}
  time_point now() const noexcept { return time_point(master_clock::duration(ns_.load(std::memory_order_acquire))); }
  void advance(master_clock::duration d) noexcept { ns_.fetch_add(d.count(), std::memory_order_acq_rel); }
  clock_fn fn() noexcept {
    return [this] { return now(); };
  }

 private:
  std::atomic<master_clock::rep> ns_;
};

struct master_config {
  std::chrono::milliseconds default_kv_lease_ttl{10'000};
  double eviction_high_watermark_ratio = 0.90;
  double eviction_ratio = 0.05;  // fraction of the capacity one eviction round frees
  bool enable_eviction = true;
  // At most one watermark-triggered round per segment in this interval: when nothing evictable is
  // left (everything leased), puts must not each walk the whole LRU list.
  std::chrono::milliseconds eviction_min_interval{10};
  std::chrono::milliseconds client_ttl{10'000};
  std::chrono::milliseconds default_kv_soft_pin_ttl{30 * 60 * 1000};
  std::chrono::milliseconds max_soft_pin_ttl{24 * 60 * 60 * 1000};
  std::chrono::milliseconds put_start_timeout{30'000};
  std::chrono::milliseconds put_start_discard_timeout{600'000};
  // Maintenance (client expiry, abandoned puts, deferred frees) runs from any call at most this often,
  // and whenever tick() is called.
  std::chrono::milliseconds maintenance_interval{1000};
  // A gap between maintenance runs longer than this is the master's own stall, not the clients'
  // silence; 0 turns the rule off.
  std::chrono::milliseconds stall_threshold{5000};
  std::string placement_strategy = "random";  // random | free_ratio_first | local_first
  std::uint64_t allocator_alignment = 64;
  std::uint64_t view_version = 0;
  std::uint64_t seed = 0;  // placement randomness; 0 = seeded from std::random_device
};

enum class master_op : std::uint8_t {
  mount_segment,
  unmount_segment,
  ping,
  put_start,
  put_end,
  put_revoke,
  upsert_start,
  batch_put_start,
  batch_put_end,
  batch_put_revoke,
  get_replica_list,
  batch_get_replica_list,
  match_prefix,
  exist_key,
  batch_exist_key,
  get_size,
  remove,
  batch_remove,
  remove_all,
  batch_put_commit,
  count_
};
inline constexpr std::size_t master_op_count = static_cast<std::size_t>(master_op::count_);
std::string_view to_string(master_op op) noexcept;

struct master_metrics {
  std::array<std::uint64_t, master_op_count> requests{};
  std::array<std::uint64_t, master_op_count> failures{};  // a batch counts once if any item failed
  std::array<std::uint64_t, master_op_count> items{};     // batch operations: keys seen
  std::array<std::uint64_t, master_op_count> failed_items{};
  std::uint64_t evicted_keys = 0;
  std::uint64_t evicted_bytes = 0;  // every replica's bytes
  std::uint64_t attempted_evictions = 0;
  std::uint64_t successful_evictions = 0;  // rounds that evicted at least one key
  // Puts that LRU eviction could not place because the free bytes lay in holes too small, placed by
  // evicting the cheapest run of adjacent blocks instead (see allocate_replicas).
  std::uint64_t run_evictions = 0;
  std::uint64_t preempted_puts = 0;
  std::uint64_t discarded_puts = 0;  // in-flight puts reclaimed after put_start_discard_timeout
  std::uint64_t expired_clients = 0;
  std::uint64_t forgiven_stalls = 0;
  // Gauges, filled by metrics().
  std::uint64_t total_capacity = 0;
  std::uint64_t allocated = 0;  // includes replicas waiting for a lease to end before their free
  std::uint64_t key_count = 0;
  std::uint64_t segment_count = 0;  // mounted and taking new replicas
  std::uint64_t quarantined_segments = 0;  // mounted again, not yet taking new replicas (see below)
  std::uint64_t fenced_bytes = 0;  // of mounted segments, held back for an earlier mounting's readers and writers
  std::uint64_t active_clients = 0;

  std::uint64_t requests_of(master_op op) const noexcept { return requests[static_cast<std::size_t>(op)]; }
  std::uint64_t failures_of(master_op op) const noexcept { return failures[static_cast<std::size_t>(op)]; }
};

class master_state final : public master_service {
 public:
  // Throws std::invalid_argument for a configuration that cannot work (unknown placement strategy,
  // alignment not a power of two, ratios outside [0, 1]). An empty clock means steady_clock::now.
  explicit master_state(master_config cfg = {}, clock_fn clock = {});
  ~master_state() override;
  master_state(const master_state&) = delete;
  master_state& operator=(const master_state&) = delete;

  // master_service: every call completes synchronously.
  task<result<void>> mount_segment(client_id client, segment_info seg) override;
  task<result<void>> unmount_segment(client_id client, std::string segment_name) override;
  task<result<ping_result>> ping(client_id client) override;
  task<result<std::vector<replica_desc>>> put_start(client_id client, std::string key, std::uint64_t size,
                                                  replicate_config cfg) override;
  task<result<void>> put_end(client_id client, std::string key) override;
  task<result<void>> put_revoke(client_id client, std::string key) override;
  task<result<std::vector<replica_desc>>> upsert_start(client_id client, std::string key, std::uint64_t size,
                                                     replicate_config cfg) override;
  task<std::vector<result<std::vector<replica_desc>>>> batch_put_start(client_id client,
                                                                     std::vector<std::string> keys,
                                                                     std::vector<std::uint64_t> sizes,
                                                                     replicate_config cfg) override;
  task<std::vector<result<void>>> batch_put_end(client_id client, std::vector<std::string> keys) override;
  task<std::vector<result<void>>> batch_put_revoke(client_id client, std::vector<std::string> keys) override;
  task<std::vector<result<void>>> batch_put_commit(client_id client, std::vector<std::string> placeholders,
                                                   std::vector<std::string> keys) override;
  task<result<replica_list>> get_replica_list(std::string key) override;
  task<std::vector<result<replica_list>>> batch_get_replica_list(std::vector<std::string> keys) override;
  task<result<match_result>> match_prefix(std::vector<std::string> keys) override;
  task<result<bool>> exist(std::string key) override;
  task<std::vector<result<bool>>> batch_exist(std::vector<std::string> keys) override;
  task<result<std::uint64_t>> get_size(std::string key) override;
  task<result<void>> remove(std::string key, bool force = false) override;
  task<std::vector<result<void>>> batch_remove(std::vector<std::string> keys, bool force = false) override;
  task<result<std::uint64_t>> remove_all(bool force = false) override;

  // The same operations without a coroutine frame, for the RPC layer's fast path and benchmarks.
  //
  // Mounting the same segment again from its owner with the same range is a no-op (a re-mount after
  // NEED_REMOUNT); from another client, or with another range, it is segment_already_exists.
  result<void> mount_segment_sync(const client_id& client, const segment_info& seg);
  // Unmounting drops every replica in the segment: objects left without a replica are removed.
  result<void> unmount_segment_sync(const client_id& client, std::string_view segment_name);
  // An unknown client is registered and told to re-mount (need_remount = true).
  result<ping_result> ping_sync(const client_id& client);
  result<std::vector<replica_desc>> put_start_sync(const client_id& client, std::string_view key,
                                                   std::uint64_t size, const replicate_config& cfg);
  // Only the client that started the put may end or revoke it (illegal_client otherwise): after a
  // pre-emption the old writer must not complete the new writer's replicas.
  result<void> put_end_sync(const client_id& client, std::string_view key);
  result<void> put_revoke_sync(const client_id& client, std::string_view key);
  result<std::vector<replica_desc>> upsert_start_sync(const client_id& client, std::string_view key,
                                                      std::uint64_t size, const replicate_config& cfg);
  std::vector<result<std::vector<replica_desc>>> batch_put_start_sync(const client_id& client,
                                                                      std::span<const std::string> keys,
                                                                      std::span<const std::uint64_t> sizes,
                                                                      const replicate_config& cfg);
  std::vector<result<void>> batch_put_end_sync(const client_id& client, std::span<const std::string> keys);
  std::vector<result<void>> batch_put_revoke_sync(const client_id& client, std::span<const std::string> keys);
  // invalid_params for every key when the spans differ in length.
  std::vector<result<void>> batch_put_commit_sync(const client_id& client, std::span<const std::string> placeholders,
                                                  std::span<const std::string> keys);
  // Complete replicas only; takes (or extends) a lease of default_kv_lease_ttl.
  result<replica_list> get_replica_list_sync(std::string_view key);
  std::vector<result<replica_list>> batch_get_replica_list_sync(std::span<const std::string> keys);
  // The leading keys that are complete, each leased; stops at the first miss.
  result<match_result> match_prefix_sync(std::span<const std::string> keys);
  result<bool> exist_sync(std::string_view key);
  std::vector<result<bool>> batch_exist_sync(std::span<const std::string> keys);
  result<std::uint64_t> get_size_sync(std::string_view key);
  // object_has_lease while leased and replica_is_not_ready while a write is in flight, unless force.
  result<void> remove_sync(std::string_view key, bool force = false);
  std::vector<result<void>> batch_remove_sync(std::span<const std::string> keys, bool force = false);
  // How many objects were removed; without force, leased and in-flight objects stay.
  result<std::uint64_t> remove_all_sync(bool force = false);

  // Maintenance now: expires silent clients, reclaims abandoned puts, runs due deferred frees.
  void tick();

  master_metrics metrics() const;
  // Prometheus text exposition, names master_* as Mooncake's.
  std::string metrics_text() const;
  // For the admin endpoints /get_all_segments and /query_key.
  std::string segments_json() const;
  std::string query_key_json(std::string_view key) const;

  const master_config& config() const noexcept;

 private:
  struct impl;
  std::unique_ptr<impl> impl_;
};

}  // namespace yutu::store
