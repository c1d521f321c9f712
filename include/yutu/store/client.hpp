// The store's client: puts and gets objects (KVCache blocks) through the master and the transfer
// engine, and contributes memory to the pool. A storage node is a client that contributes memory and
// issues no requests; an inference server is one that issues requests and may contribute memory too.
//
// The master only allocates and keeps metadata; bytes move straight between the caller's memory and
// the replicas' memory with the client's own transfer::engine (local memcpy in this process, shared
// memory to other processes on this host, TCP to other hosts). The contributed memory comes from
// engine::allocate_shared, so same-host peers read and write it with a memcpy.
//
// Semantics, chosen where Mooncake's users complained:
//  - every call returns a typed result per key: object_not_found is an error, never an empty value;
//    buffer_overflow when a destination is smaller than the object (nothing is written);
//    object_already_exists on a put of an existing key (upsert replaces).
//  - put is all-or-nothing: put_start -> every replica written concurrently -> put_end; a failed
//    write revokes the put and returns the transfer's error (a reserved put, see
//    put_reservation_bytes, is first done again the ordinary way).
//  - get reads the best replica (this process, then this host, then others) and, on a transfer
//    error, the next one, before failing; a read that outlived its lease fails with lease_expired
//    (the memory may have been reused under it).
//  - match_prefix / load_prefix: the leading keys present, leases held, in one master round trip.
//
// Threads: awaitable from any reactor or, through sync_wait, from a plain thread. Spans passed to a
// call must stay valid until its task completes (co_await it in the same expression). The RPC
// connections to a remote master live on the engine's reactors, one or more per thread, beside the
// engine's own connections: a coroutine that first does `co_await c.engine().schedule()` makes its
// master calls and its transfers without crossing threads; from anywhere else each master call and
// each transfer batch hops there and back. The client runs one reactor thread of its own for heartbeats.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/store/master_service.hpp"
#include "yutu/store/types.hpp"
#include "yutu/transfer/engine.hpp"

namespace yutu::store {

struct client_config {
  // "host" or "host:port": where this client's engine listens (port 0 or none: any free port), and
  // the host name the master uses to spread replicas over hosts.
  std::string local_hostname = "127.0.0.1";
  // The engine's metadata connection string ("memory", "http://h:p/metadata", "etcd://h:p", ...).
  std::string metadata = "memory";
  // "host:port" of a yutu-master; used when create() is not given an in-process master.
  std::string master;
  // The network transport between hosts: "tcp", or "rdma" (the NICs in engine.rdma.devices, every
  // one found when empty; no fallback to tcp, so a host without working RDMA fails create() with
  // te_errc::device_not_found instead of moving its bytes slowly). Same-process and same-host peers
  // use local and shm on top of either.
  std::string protocol = "tcp";
  // Overrides the transports derived from protocol (e.g. {"tcp"} to measure tcp on one host, or
  // {"local", "shm", "rdma", "tcp"} for RDMA with tcp to peers that have none).
  std::vector<std::string> transports;
  // Memory this client contributes (0 = none), mounted as segments of at most max_segment_size.
  std::uint64_t global_segment_size = 0;
  std::uint64_t max_segment_size = 16ull << 30;
  bool hugepages = false;
  // Fault the contributed memory in before mounting it (MADV_POPULATE_WRITE): the first write into
  // each page otherwise pays a page fault and a zeroing on the put path (perf: most of a 64 KiB put
  // over shm), and memory the host cannot back fails create() with ENOMEM instead of a SIGBUS later.
  bool prefault = true;
  // A registered buffer the application may fill and put from / get into (local_buffer()); 0 = none.
  std::uint64_t local_buffer_size = 0;
  // Where the engine moves bytes over rdma, which reaches only registered memory, the copying forms
  // (put, upsert, batch_put, get, batch_get) pass their values through a registered staging area of
  // this size, a call waiting while others hold it. A call needing more than all of it fails with
  // buffer_overflow: such values go through put_from / get_into and register_buffer. 0: no staging
  // (the copying forms then work only over tcp, shm and local).
  std::uint64_t staging_buffer_size = 64ull << 20;
  // The replication of puts that do not name one.
  replicate_config replica_defaults;
  // Heartbeat period; a master that answers need_remount gets this client's segments again.
  std::chrono::milliseconds heartbeat_interval{1000};
  // How long create() keeps trying to reach a master that is still starting (its first mount).
  std::chrono::milliseconds master_wait{0};
  // Deadline of every transfer batch, and of every RPC to a remote master.
  std::chrono::milliseconds transfer_deadline{30'000};
  std::chrono::milliseconds rpc_timeout{5'000};
  std::size_t rpc_connections = 2;
  std::size_t engine_threads = 2;
  // The client's transfer engine: every setting of it not named above, e.g. engine.rdma (NICs, slice
  // size, queue pairs, busy polling), tcp_connections_per_peer and tcp_slice_size,
  // nontemporal_write_threshold (streaming stores for shm puts), shm_prefault, connect_timeout. Its
  // metadata, listen_host/listen_port, threads, transports and batch_deadline are set from
  // metadata, local_hostname, engine_threads, protocol/transports and transfer_deadline above.
  transfer::engine_config engine;
  // Replica cache (0 = off): get_into / batch_get_into / batch_get_into_multi_buffers / load_prefix
  // called on an engine thread reuse the replica list of an earlier lookup of the same key, without asking the
  // master, for at most this long and never past half of the lease that lookup took. The lease keeps
  // those replicas' memory from being reused, so a cached read gets the object's bytes or an error,
  // never another object's; a cached replica that fails is dropped and the key looked up again.
  // What the master cannot tell the client: another client's remove or upsert of a key is seen here
  // only once the entry ages out. Meant for content-addressed, write-once keys (KVCache blocks),
  // where a hot prefix is read again and again and each read otherwise costs a master round trip.
  // This client's own remove / upsert / remove_all, a re-mount and a broken master connection drop
  // every entry.
  std::chrono::milliseconds replica_cache_max_age{0};
  // Entries per engine thread; a full cache starts again empty.
  std::size_t replica_cache_entries = 65536;
  // Reserved puts (0 = off): each engine thread keeps, per object size (at most 4 sizes), up to this
  // many bytes (and at most 256 objects) of replicas allocated ahead of need, each a put the master started under a placeholder
  // key with replica_defaults. A put of that size with replica_defaults, called on an engine thread,
  // writes into one and commits it under its key (master batch_put_commit): one master round trip
  // instead of two, and no allocation at the master on the put's path. A batch takes reservations
  // for all its keys or for none. Reservations are refilled in the background when half are used,
  // given back after put_reservation_max_age, and revoked by close(). Reserved memory counts as
  // used at the master: it is not evicted and not given to other clients while held.
  std::uint64_t put_reservation_bytes = 0;
  std::uint64_t put_reservation_max_object = 4ull << 20;  // larger objects take the two round trips
  // Keep below the master's put_start_timeout (30 s by default): past it, the master refuses to
  // commit a reservation, and the put falls back to put_start / put_end.
  std::chrono::milliseconds put_reservation_max_age{10'000};
  // Deferred commits (needs put_reservation_bytes; off by default): a reserved put returns once its
  // bytes are in its replicas, and its commit goes to the master in the background, batched with the
  // other reserved puts of the same engine thread, one batch_put_commit in flight per thread. The put
  // then waits for no master round trip at all. What it gives up:
  //  - the object becomes readable (to every client, this one included) when its commit lands, about
  //    one master round trip after the put returned, not before the put returns;
  //  - a commit the master refuses is reported by flush(), not by the put: a key that already
  //    exists (the object stays as it was), or a reservation the master no longer holds (a forced
  //    remove_all, a lost segment: that object is not stored, as if it had been evicted at once).
  // `co_await flush()` waits for every commit of a put that returned before it, and returns those
  // that failed: call it where another process must be able to read what was put (a prefill node
  // before it tells the decode node). This client's remove, batch_remove, remove_all, upsert and
  // close wait for them first, so its own calls keep their order. Puts that take no reservation
  // (larger than put_reservation_max_object, other replication, none left) commit before returning.
  bool defer_put_commit = false;
  // With deferred commits: a thread's commit that would carry fewer than 64 keys first waits this
  // long for more, so that one round trip serves several puts (0: send at once). It adds as much to
  // the time before an object is readable, and to flush().
  std::chrono::microseconds deferred_commit_gather{200};
  // This client's id at the master; empty: a random one.
  std::string client_id;
};

// Counters since creation; read from any thread.
struct client_stats {
  std::uint64_t puts = 0, put_failures = 0, put_bytes = 0;
  std::uint64_t gets = 0, get_failures = 0, get_bytes = 0;
  std::uint64_t failovers = 0;  // reads that a replica other than the first choice served
  std::uint64_t revokes = 0;    // puts revoked after a failed write
  std::uint64_t remounts = 0;   // segments mounted again after the master forgot them
  std::uint64_t heartbeat_failures = 0;
  std::uint64_t replica_cache_hits = 0;  // keys read with a cached replica list (no master call)
  std::uint64_t reserved_puts = 0;       // puts committed into a reservation (one master round trip)
  // Reserved puts done again the ordinary way: the master refused the commit, or the write failed.
  std::uint64_t reservation_fallbacks = 0;
  // Deferred commits (client_config::defer_put_commit) the master refused: each also counts in
  // put_failures, and flush() names them.
  std::uint64_t deferred_commit_failures = 0;
  // Reserved puts that found their thread's reservations of that size used up and waited for the
  // refill under way (a master round trip): many per second means the refills come too late.
  std::uint64_t reservation_waits = 0;
};

// A put whose deferred commit failed (client_config::defer_put_commit), as flush() reports it.
struct deferred_failure {
  std::string key;
  std::error_code error;
};

class client {
 public:
  // A client of the yutu-master at cfg.master, over RPC. Blocks until its segments are mounted.
  static result<std::unique_ptr<client>> create(client_config cfg);
  // A client of a master in this process (embedded mode, tests); `master` must outlive the client.
  static result<std::unique_ptr<client>> create(client_config cfg, master_service& master);
  // Closes (as close()) if that was not done. Must not run on a thread the client awaits from.
  ~client();
  client(const client&) = delete;
  client& operator=(const client&) = delete;

  const client_id& id() const noexcept;
  const client_config& config() const noexcept;
  transfer::engine& engine() noexcept;
  // The segments this client contributes.
  std::vector<segment_info> segments() const;
  // The registered local buffer (empty when local_buffer_size is 0).
  std::span<std::byte> local_buffer() const noexcept;
  client_stats stats() const noexcept;

  // Memory that put_from / get_into may use. Not remotely accessible: peers never see it.
  result<void> register_buffer(void* addr, std::size_t size);
  result<void> unregister_buffer(void* addr);

  // --- put: copy in ---
  task<result<void>> put(std::string key, std::span<const std::byte> value, replicate_config cfg);
  task<result<void>> put(std::string key, std::span<const std::byte> value) {
    return put(std::move(key), value, cfg_defaults());
  }
  task<std::vector<result<void>>> batch_put(std::span<const std::string> keys,
                                            std::span<const std::span<const std::byte>> values, replicate_config cfg);
  task<std::vector<result<void>>> batch_put(std::span<const std::string> keys,
                                            std::span<const std::span<const std::byte>> values) {
    return batch_put(keys, values, cfg_defaults());
  }
  // Replaces an existing object (readers see the old one until the new one is complete).
  task<result<void>> upsert(std::string key, std::span<const std::byte> value, replicate_config cfg);
  task<result<void>> upsert(std::string key, std::span<const std::byte> value) {
    return upsert(std::move(key), value, cfg_defaults());
  }

  // --- put: zero copy from registered memory (invalid_params when [src, src+size) is not) ---
  task<result<void>> put_from(std::string key, const void* src, std::uint64_t size, replicate_config cfg);
  task<result<void>> put_from(std::string key, const void* src, std::uint64_t size) {
    return put_from(std::move(key), src, size, cfg_defaults());
  }
  task<std::vector<result<void>>> batch_put_from(std::span<const std::string> keys, std::span<const void* const> srcs,
                                                 std::span<const std::uint64_t> sizes, replicate_config cfg);
  task<std::vector<result<void>>> batch_put_from(std::span<const std::string> keys, std::span<const void* const> srcs,
                                                 std::span<const std::uint64_t> sizes) {
    return batch_put_from(keys, srcs, sizes, cfg_defaults());
  }
  // Each object is the concatenation of its buffers (vLLM's per-layer KV slices of one block).
  task<std::vector<result<void>>> batch_put_from_multi_buffers(std::span<const std::string> keys,
                                                               std::span<const std::vector<const void*>> srcs,
                                                               std::span<const std::vector<std::uint64_t>> sizes,
                                                               replicate_config cfg);

  // Waits until every deferred commit of a put that returned before this call has landed (at
  // once when there are none), and returns the deferred puts that failed since the previous flush()
  // (at most 65536 are kept; the count is in stats().deferred_commit_failures). A stop request
  // ends the wait with operation_canceled, and the failures stay for the next flush(). Any thread.
  task<result<std::vector<deferred_failure>>> flush();

  // --- get: copy out ---
  task<result<std::vector<std::byte>>> get(std::string key);
  task<std::vector<result<std::vector<std::byte>>>> batch_get(std::span<const std::string> keys);

  // --- get: zero copy into registered memory; the object's size on success ---
  task<result<std::uint64_t>> get_into(std::string key, void* dst, std::uint64_t size);
  task<std::vector<result<std::uint64_t>>> batch_get_into(std::span<const std::string> keys,
                                                          std::span<void* const> dsts,
                                                          std::span<const std::uint64_t> sizes);
  // The object is scattered over the buffers in order; buffer_overflow when they are too small.
  task<std::vector<result<std::uint64_t>>> batch_get_into_multi_buffers(
      std::span<const std::string> keys, std::span<const std::vector<void*>> dsts,
      std::span<const std::vector<std::uint64_t>> sizes);

  // --- prefixes ---
  // How many leading keys are present (complete); leases are taken on them. One round trip.
  task<result<std::size_t>> match_prefix(std::span<const std::string> keys);
  // match_prefix, then the hits read into dsts[i] (registered memory), with the replicas that the
  // match returned: one master round trip in all (none for leading keys the replica cache holds). The number of leading keys now in their buffers
  // (a hit whose every replica failed ends the prefix there).
  task<result<std::size_t>> load_prefix(std::span<const std::string> keys, std::span<void* const> dsts,
                                        std::span<const std::uint64_t> sizes);

  // --- metadata ---
  task<result<bool>> exist(std::string key);
  task<std::vector<result<bool>>> batch_exist(std::span<const std::string> keys);
  task<result<std::uint64_t>> get_size(std::string key);
  task<result<void>> remove(std::string key, bool force = false);
  task<std::vector<result<void>>> batch_remove(std::span<const std::string> keys, bool force = false);
  task<result<std::uint64_t>> remove_all(bool force = false);

  // Stops the heartbeat and unmounts this client's segments (their objects lose those replicas).
  // Idempotent; later calls fail with errc::closed.
  task<result<void>> close();

  struct impl;

 private:
  explicit client(std::unique_ptr<impl> p) noexcept;
  replicate_config cfg_defaults() const;
  std::unique_ptr<impl> p_;
};

// Parses "64MiB", "1GiB", "1.5GB", "4096": binary (KiB, MiB, GiB, TiB; also K, M, G, T) and decimal
// (KB, MB, GB, TB) units. invalid_params for anything else.
result<std::uint64_t> parse_size(std::string_view text);

}  // namespace yutu::store
