// Private to the engine: the transports it ships (local, shm, tcp).
#pragma once

#include <map>
#include <memory>
#include <mutex>
#include <stop_token>
#include <vector>

#include "tcp_conn.hpp"
#include "yutu/coro/async_mutex.hpp"
#include "yutu/transfer/transport.hpp"

namespace yutu::transfer::detail {

// Same engine: a bounds-checked memmove.
class local_transport final : public transport {
 public:
  using transport::transport;
  std::string_view name() const noexcept override { return "local"; }
  bool can_serve(const peer_info& peer, const transfer_request&) const override { return peer.self; }
  task<std::error_code> execute(const peer_info& peer, const transfer_request& r) override;
  std::optional<std::error_code> execute_now(const peer_info& peer, const transfer_request& r) override;
};

// Same host, other process: the peer's memfd-backed buffers mapped once, then memcpy.
class shm_transport final : public transport {
 public:
  using transport::transport;
  std::string_view name() const noexcept override { return "shm"; }
  std::unique_ptr<transport_peer_state> make_peer_state(const peer_info&) override;
  bool can_serve(const peer_info& peer, const transfer_request& r) const override;
  task<std::error_code> execute(const peer_info& peer, const transfer_request& r) override;
  std::optional<std::error_code> execute_now(const peer_info& peer, const transfer_request& r) override;
  void close_peer(const peer_info& peer) noexcept override;
  void shutdown() noexcept override { stopping_.request_stop(); }

 private:
  std::stop_source stopping_;  // ends every peer's exit watch
};

// TCP: a pool of pipelined connections per peer, requests cut into slices striped over them.
class tcp_transport final : public transport, public engine_spawner {
 public:
  using transport::transport;
  std::string_view name() const noexcept override { return "tcp"; }
  std::unique_ptr<transport_peer_state> make_peer_state(const peer_info&) override;
  bool can_serve(const peer_info& peer, const transfer_request& r) const override;
  task<std::error_code> execute(const peer_info& peer, const transfer_request& r) override;
  void abort(const peer_info& peer) noexcept override;
  void close_peer(const peer_info& peer) noexcept override { abort(peer); }

  // A short message for the peer's notification stream, over the same connections.
  task<std::error_code> notify(const peer_info& peer, std::string payload);

  void spawn_on(std::size_t reactor_index, task<void> t) override { host_.spawn_on(reactor_index, std::move(t)); }

 private:
  task<result<std::shared_ptr<client_conn>>> ensure_conn(const peer_info& peer, std::size_t ci);
  task<std::error_code> slice(const peer_info& peer, std::size_t ci, opcode op, std::byte* local,
                              std::uint64_t remote, std::uint64_t len);
};

// RDMA (src/transfer/rdma/rdma_transport.cpp): RC queue pairs over the verbs of engine_config::rdma.
std::unique_ptr<transport> make_rdma_transport(transport_host& host);

}  // namespace yutu::transfer::detail
