// The interface every transport implements: local memcpy, shared memory, TCP today; RDMA, files/NVMe
// and CUDA next.
//
// The engine owns the transports in preference order and asks each, per request, whether it can
// serve it (both peers speak it, the target range is reachable through it); it runs the first that
// can and falls back to the next when one fails with an error another transport might not hit.
// A transport slices requests as its medium wants (TCP: tcp_slice_size across a connection pool;
// RDMA: 64 KiB work requests across NICs), keeps whatever it needs per peer in a
// transport_peer_state that the engine stores with the peer, sees every registration (to create
// per-device keys, published through describe()), and drives its completions on the engine's
// reactors (a completion_source for CQ polling, fd polls for completion channels).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/transfer/config.hpp"
#include "yutu/transfer/memory.hpp"
#include "yutu/transfer/types.hpp"

namespace yutu::io {
class reactor_pool;
}

namespace yutu::transfer {

using segment_id = std::uint64_t;
struct transport_counters;

// Per-peer state a transport keeps (connections, mappings, queue pairs). Destroyed when the segment
// is closed or the engine stops, after close_peer().
class transport_peer_state {
 public:
  virtual ~transport_peer_state() = default;
};

// What a transport sees of a peer for one request.
struct peer_info {
  segment_id id = 0;
  const std::string* name = nullptr;
  bool self = false;
  std::shared_ptr<const segment_desc> desc;  // the descriptor this request was planned with
  transport_peer_state* state = nullptr;     // this transport's state for the peer, or null
};

// The engine services a transport may use.
class transport_host {
 public:
  virtual io::reactor_pool& pool() noexcept = 0;
  virtual const engine_config& config() const noexcept = 0;
  virtual const memory_registry& registry() const noexcept = 0;
  virtual const std::string& local_name() const noexcept = 0;
  virtual std::uint64_t incarnation() const noexcept = 0;
  // This engine's host identity (local_host_id() where it was created), as in its descriptor.
  virtual const std::string& host_id() const noexcept = 0;
  // A handshake found the peer restarted: the engine replaces its cached descriptor.
  virtual void peer_restarted(segment_id id, segment_desc fresh) = 0;
  // Starts a detached task on reactor i of the engine.
  virtual void spawn_on(std::size_t reactor_index, task<void> t) = 0;
  // The engine's counters of a transport (shown in metrics_text).
  virtual transport_counters& counters(std::string_view transport) noexcept = 0;
  // Sends `body` to the same transport of `peer` (its on_peer_request) over the engine's TCP service
  // and returns its answer; bounded by connect_timeout. For control messages such as the RDMA queue
  // pair handshake. A non-zero status from the peer comes back as that te_errc.
  virtual task<result<std::string>> peer_request(const peer_info& peer, std::string transport, std::string body) = 0;

 protected:
  ~transport_host() = default;
};

class transport {
 public:
  explicit transport(transport_host& host) noexcept : host_(host) {}
  virtual ~transport() = default;
  transport(const transport&) = delete;
  transport& operator=(const transport&) = delete;

  virtual std::string_view name() const noexcept = 0;
  // Whether it can move bytes at all (rdma: at least one NIC opened). An unusable transport stays
  // listed and serves nothing.
  virtual bool usable() const noexcept { return true; }

  // Memory was registered / is being unregistered (per-device registration keys live here).
  virtual result<void> on_register(const registered_buffer&) { return ok(); }
  virtual void on_unregister(const registered_buffer&) noexcept {}
  // Adds what peers need to reach us through this transport to our descriptor.
  virtual void describe(segment_desc&) const {}

  virtual std::unique_ptr<transport_peer_state> make_peer_state(const peer_info&) { return nullptr; }
  // Whether this transport can serve `r` towards `peer` at all (not whether it will succeed).
  virtual bool can_serve(const peer_info& peer, const transfer_request& r) const = 0;
  // Moves the bytes of one request. Cancellation arrives through the awaiting task's stop token.
  virtual task<std::error_code> execute(const peer_info& peer, const transfer_request& r) = 0;
  // The same, done now on the calling thread, for a transport whose requests never wait (a memcpy):
  // the engine then spends no coroutine frame, child task or stop-token copy on the request, which
  // for a 64 KiB copy cost as much as the copy. nullopt: this one must go through execute().
  virtual std::optional<std::error_code> execute_now(const peer_info&, const transfer_request&) { return std::nullopt; }

  // After a deadline: end whatever still waits on this peer so a stalled peer holds nothing hostage.
  virtual void abort(const peer_info&) noexcept {}
  // The segment is being closed or the engine stops: release the peer's resources.
  virtual void close_peer(const peer_info&) noexcept {}
  // A peer's peer_request for this transport arrived (on one of the engine's reactors).
  virtual result<std::string> on_peer_request(std::string_view) { return fail(te_errc::no_transport); }
  // The engine is stopping: end the tasks this transport spawned (before the reactors stop).
  virtual void shutdown() noexcept {}

 protected:
  transport_host& host_;
};

}  // namespace yutu::transfer
