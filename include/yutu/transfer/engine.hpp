// The transfer engine: batched, asynchronous READ/WRITE between the registered memory of any
// processes on any hosts.
//
// An engine owns its reactor threads, its registered memory, a TCP service (data and handshake),
// and a cache of the peers' segment descriptors. `co_await engine.transfer(batch)` picks, per
// request, the best transport both sides share (local memcpy, shared memory, TCP; RDMA later) and
// falls back to the next one when it fails; every batch has a deadline. Results come back per
// request. Coroutines calling the engine may run on any thread: the engine does its I/O on its own
// reactors and resumes the caller on the executor it came from.
//
// For plain threads and the C/Python bindings there is a submit + poll surface (submit, status,
// wait, free_batch) shaped like Mooncake's.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/transfer/config.hpp"
#include "yutu/transfer/types.hpp"

namespace yutu::transfer {

using segment_id = std::uint64_t;
using batch_id = std::uint64_t;

struct notification {
  std::string from;  // the sender's segment name
  std::string message;
};

struct batch_options {
  // Overrides engine_config::batch_deadline.
  std::optional<std::chrono::milliseconds> deadline;
  // When non-empty, delivered to every target segment of the batch after its requests completed.
  std::string notify;
};

// One error_code per request, in request order (empty = success).
struct batch_result {
  std::vector<std::error_code> errors;
  bool ok() const noexcept {
    for (auto& e : errors)
      if (e) return false;
    return true;
  }
  std::error_code first_error() const noexcept {
    for (auto& e : errors)
      if (e) return e;
    return {};
  }
};

// Counters per transport, as the transports add to them (transport_host::counters). Requests done
// on an engine thread count in that thread's share instead; engine::counters() adds them up.
struct transport_counters {
  std::atomic<std::uint64_t> requests{0}, bytes{0}, failures{0}, fallbacks_from{0};
  // tcp: bytes the kernel sent without copying them (SEND_ZC towards peers on other hosts).
  std::atomic<std::uint64_t> zero_copy_bytes{0};
};

// A reading of one transport's counters; names match the Prometheus text of metrics_text().
struct transport_counts {
  std::uint64_t requests = 0, bytes = 0, failures = 0, fallbacks_from = 0;
  std::uint64_t zero_copy_bytes = 0;  // tcp: bytes sent without copying them (SEND_ZC)
};

class engine {
 public:
  // Starts the reactors, binds the TCP service and publishes this engine's descriptor.
  static result<std::unique_ptr<engine>> create(engine_config cfg);
  ~engine();
  engine(const engine&) = delete;
  engine& operator=(const engine&) = delete;

  const std::string& segment_name() const noexcept;
  std::uint64_t incarnation() const noexcept;
  std::uint16_t port() const noexcept;
  const engine_config& config() const noexcept;

  // --- memory ---
  result<void> register_memory(void* addr, std::size_t length, std::string_view location = "cpu:0",
                               bool remote_accessible = true);
  result<void> unregister_memory(void* addr);
  // Shareable memory (memfd, hugepages when asked), registered on return; peers on this host map it.
  result<void*> allocate_shared(std::size_t length, bool hugepages = false);
  result<void> free_shared(void* addr);

  // --- segments ---
  // Resolves a peer (or this engine) by segment name through the metadata service, or directly
  // from the peer when the name is "host:port" and metadata is P2PHANDSHAKE.
  task<result<segment_id>> open_segment(std::string name);
  result<void> close_segment(segment_id id);
  // The cached descriptor of an open segment.
  result<segment_desc> segment_descriptor(segment_id id) const;

  // --- threads ---
  // `co_await e.schedule()` moves the calling coroutine onto one of the engine's reactor threads
  // (round robin). Transfers issued from there use connections that live on that thread and resume
  // without a thread hop: the lowest latency the engine offers. Any other caller works too, at the
  // price of a hop to the connection's thread and one back per batch.
  io::reactor& next_reactor() noexcept;
  auto schedule() noexcept { return next_reactor().schedule(); }
  // The engine's reactor threads, for services that want their connections homed beside the
  // engine's (the store client's RPC connections to its master): a coroutine on an engine thread
  // then reaches both without a hop. Spawned tasks must end before the engine is destroyed.
  io::reactor_pool& reactors() noexcept;

  // --- transfers ---
  task<batch_result> transfer(std::span<const transfer_request> batch, batch_options opts);
  // Not a defaulted argument: g++ 12 destroys a defaulted class-type argument of a coroutine twice.
  task<batch_result> transfer(std::span<const transfer_request> batch) { return transfer(batch, batch_options{}); }
  task<result<void>> write(segment_id seg, const void* source, std::uint64_t target_offset, std::uint64_t length);
  task<result<void>> read(segment_id seg, void* dest, std::uint64_t target_offset, std::uint64_t length);

  // --- submit + poll (plain threads, bindings) ---
  result<batch_id> submit(std::vector<transfer_request> batch, batch_options opts = {});
  result<transfer_status> status(batch_id id, std::size_t index) const;
  // Blocks the calling (non-reactor) thread until the batch finished.
  result<batch_result> wait(batch_id id);
  // te_errc::batch_busy while requests are still in flight.
  result<void> free_batch(batch_id id);

  // --- notifications ---
  task<result<void>> notify(segment_id seg, std::string message);
  task<result<notification>> next_notification();
  std::optional<notification> try_next_notification();

  // --- observability ---
  transport_counts counters(std::string_view transport) const;
  // Whether `transport` is offered (config().transports) and can move bytes: false for "rdma" when
  // no NIC could be opened (no device, none active, none of rdma.devices, no libibverbs).
  bool usable(std::string_view transport) const;
  std::string metrics_text() const;

  struct impl;

 private:
  explicit engine(std::unique_ptr<impl> p);
  std::unique_ptr<impl> p_;
};

}  // namespace yutu::transfer
