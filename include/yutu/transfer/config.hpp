// The transfer engine's configuration: a plain struct, readable from JSON and YUTU_* variables.
//
// Precedence, lowest first: the struct's defaults, a JSON document (from_json), then the environment
// (apply_env). Every field is documented in docs/operations.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "yutu/error.hpp"

namespace yutu::transfer {

struct engine_config {
  // This engine's segment name. Empty: "<host>:<port>" once the TCP service is bound (P2P style).
  std::string local_segment_name;
  // Metadata connection string: "" / "memory", "http://h:p/metadata", "etcd://h:p", "P2PHANDSHAKE".
  std::string metadata = "memory";
  // Address the TCP service binds (data and handshake). Port 0 picks a free one.
  std::string listen_host = "127.0.0.1";
  std::uint16_t listen_port = 0;
  // Reactor threads the engine owns.
  std::size_t threads = 2;
  // Transports this engine offers and uses, in preference order.
  std::vector<std::string> transports = {"local", "shm", "tcp"};
  // TCP: connections kept per peer, and the slice a request is cut into across them.
  std::size_t tcp_connections_per_peer = 2;
  std::uint64_t tcp_slice_size = 1ull << 20;
  // Largest slice a target accepts in one frame (a bound on what a hostile peer can make us read).
  std::uint64_t max_slice_size = 64ull << 20;
  // Deadline of a whole batch unless the caller gives one.
  std::chrono::milliseconds batch_deadline{30'000};
  // Deadline of connecting and of the descriptor handshake.
  std::chrono::milliseconds connect_timeout{5'000};
  // Lease on the published descriptor where the metadata store supports leases (etcd).
  std::chrono::milliseconds descriptor_lease{10'000};
  // Largest batch accepted (te_errc::too_many_requests above it).
  std::size_t max_batch_size = 1u << 16;

  static result<engine_config> from_json(std::string_view json);
  // YUTU_SEGMENT_NAME, YUTU_METADATA, YUTU_LISTEN_HOST, YUTU_LISTEN_PORT, YUTU_THREADS,
  // YUTU_TRANSPORTS (comma list), YUTU_TCP_CONNECTIONS, YUTU_TCP_SLICE_SIZE, YUTU_BATCH_DEADLINE_MS,
  // YUTU_CONNECT_TIMEOUT_MS. A malformed value is an error naming the variable, not a silent default.
  result<void> apply_env();
};

}  // namespace yutu::transfer
