// The transfer engine's configuration: a plain struct, readable from JSON and YUTU_* variables.
//
// Precedence, lowest first: the struct's defaults, a JSON document (from_json), then the environment
// (apply_env). Every field is documented in docs/operations.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "yutu/error.hpp"
#include "yutu/transfer/rdma/retry.hpp"

namespace yutu::transfer {

namespace rdma {
class verbs;
}

// The RDMA transport's settings (docs/rdma.md).
struct rdma_options {
  // NICs to use by ibverbs name; empty: every device found.
  std::vector<std::string> devices;
  // Work-request size a request is cut into (a short tail joins the slice before it).
  std::uint64_t slice_size = 64u << 10;
  // RC queue pairs per (local NIC, peer NIC) endpoint, and work requests each keeps in flight.
  std::size_t qps_per_endpoint = 2;
  std::uint32_t max_send_wr = 256;
  // Slices posted as one linked list (one doorbell, one signalled completion).
  std::size_t wrs_per_post = 16;
  // Endpoints cached (initiator side; the target keeps as many); the least recently used goes.
  std::size_t max_endpoints = 1024;
  // JSON priority matrix overriding the one built from sysfs: {"cpu:0": [["mlx5_0"], ["mlx5_1"]]}.
  std::string priority_matrix;
  // RoCE GID index; -1 picks one (RoCE v2, the bound address's when listen_host is a NIC address).
  int gid_index = -1;
  std::uint8_t port = 1;
  // Split registrations above this (0: the device's max_mr_size).
  std::uint64_t max_mr_size = 0;
  // Drain completion queues every loop turn while work is in flight instead of sleeping on the
  // completion channel: lower latency, a busy core.
  bool busy_poll = false;
  // Deadline of one posted list of work requests; past it the queue pair is flushed and the slices
  // retried elsewhere.
  std::chrono::milliseconds op_timeout{5'000};
  rdma::retry_policy retry;
  // Where sysfs is (tests point it at fixture trees).
  std::string sysfs_root = "/sys";
  // The verbs implementation; null: libibverbs. Tests inject a software double.
  std::shared_ptr<rdma::verbs> verbs;
};

// The items of a comma list, empty ones dropped ("a,,b," -> {"a", "b"}): the YUTU_* lists, and the
// binaries' flags that take one (--rdma-devices, --transports).
std::vector<std::string> split_list(std::string_view s);

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
  // shm and local writes of at least this many bytes use streaming stores, which skip reading the
  // destination's cache lines first: faster into cold memory (where a KVCache write lands), slower
  // into memory this core has just touched. 0: always memcpy. Reads always use memcpy.
  std::uint64_t nontemporal_write_threshold = 64ull << 10;
  // Map a peer's shm buffer's pages in the background when it is first mapped, instead of taking a
  // minor fault on the first write to each 4 KiB page (a third of the CPU, and none of it on the
  // copying thread). The page tables then cover the whole buffer: 2 MiB per GiB of peer memory.
  bool shm_prefault = true;
  // Deadline of a whole batch unless the caller gives one.
  std::chrono::milliseconds batch_deadline{30'000};
  // Deadline of connecting and of the descriptor handshake.
  std::chrono::milliseconds connect_timeout{5'000};
  // Lease on the published descriptor where the metadata store supports leases (etcd).
  std::chrono::milliseconds descriptor_lease{10'000};
  // Largest batch accepted (te_errc::too_many_requests above it).
  std::size_t max_batch_size = 1u << 16;
  // The "rdma" transport, when listed in `transports`.
  rdma_options rdma;

  static result<engine_config> from_json(std::string_view json);
  // YUTU_SEGMENT_NAME, YUTU_METADATA, YUTU_LISTEN_HOST, YUTU_LISTEN_PORT, YUTU_THREADS,
  // YUTU_TRANSPORTS (comma list), YUTU_TCP_CONNECTIONS, YUTU_TCP_SLICE_SIZE,
  // YUTU_NONTEMPORAL_WRITE_THRESHOLD, YUTU_SHM_PREFAULT (0|1), YUTU_BATCH_DEADLINE_MS,
  // YUTU_CONNECT_TIMEOUT_MS, and for RDMA YUTU_RDMA_DEVICES (comma list), YUTU_RDMA_SLICE_SIZE,
  // YUTU_RDMA_PRIORITY_MATRIX (JSON), YUTU_RDMA_GID_INDEX, YUTU_RDMA_BUSY_POLL (0|1). A malformed
  // value is an error naming the variable, not a silent default.
  result<void> apply_env();
};

}  // namespace yutu::transfer
