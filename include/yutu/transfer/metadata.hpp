// Where segment descriptors live: one interface, several back ends.
//
// The engine publishes its segment descriptor (transports, listen address, buffers, incarnation id)
// under a key and peers look it up by segment name. Keys follow Mooncake's layout
// (`mooncake/ram/<segment>`, `mooncake/rpc_meta/<segment>`) so tools that inspect one can inspect the
// other. Back ends: in-process (the embedded default), an HTTP key-value server
// (`GET/PUT/DELETE /metadata?key=`), etcd through its v3 JSON gateway with leases so a dead peer's
// descriptor expires, and peer-to-peer (no service: the descriptor is fetched from the peer itself).
// Every call is a coroutine awaited on a reactor thread and bounded by a deadline.
//
// Errors of the remote back ends, the same for all of them: the deadline passed -> std::errc::timed_out;
// the awaiting task was stopped -> std::errc::operation_canceled; anything else (no server reachable,
// connection refused or reset, an answer that is not the protocol's) -> te_errc::metadata_error, with
// the cause (the system error, the HTTP status, etcd's message) logged at warn level. Bindings then
// see Mooncake's -200 whatever the transport said.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"

namespace yutu::transfer {

inline std::string ram_key(std::string_view segment) { return "mooncake/ram/" + std::string(segment); }
inline std::string rpc_meta_key(std::string_view segment) {
  return "mooncake/rpc_meta/" + std::string(segment);
}

struct put_options {
  // When set, the key is tied to a lease of this length that the store keeps alive while the
  // publishing process lives (etcd); back ends without leases ignore it.
  std::optional<std::chrono::milliseconds> lease_ttl;
};

class metadata_store {
 public:
  virtual ~metadata_store() = default;
  // The value, or std::nullopt when the key does not exist.
  virtual task<result<std::optional<std::string>>> get(std::string key) = 0;
  virtual task<result<void>> put(std::string key, std::string value, put_options opts = {}) = 0;
  // Removing a missing key is not an error.
  virtual task<result<void>> remove(std::string key) = 0;
  // Human-readable name of the back end ("memory", "http://127.0.0.1:8080/metadata", "etcd://...").
  virtual std::string describe() const = 0;
  // Gives back what the store holds remotely (etcd: revokes its lease, so the keys put with a
  // lease_ttl vanish now rather than after the TTL) and stops its background work. Destroying the
  // store does the same without waiting; close() lets a clean shutdown wait for it.
  virtual task<result<void>> close() { co_return ok(); }
};

struct metadata_options {
  // Bound of every remote call (connect, request, answer), whatever endpoints it tries.
  std::chrono::milliseconds deadline{5000};
  // etcd: revoke the lease when the store is closed or destroyed. Off, the leased keys live until the
  // TTL runs out, as when the process dies (tests use it to watch a lease expire).
  bool revoke_lease_on_close = true;
};

// Parses a metadata connection string as Mooncake's users write them:
//   "" or "memory"                 -> in-process (one map shared by every engine in the process)
//   "http://host:port/metadata"    -> HTTP key-value server
//   "etcd://host:port[;host:port]" -> etcd v3 JSON gateway; endpoints tried in order on failure
//   "host:port"                    -> etcd, as Mooncake reads a connection string without a scheme
//   "P2PHANDSHAKE" or "p2p"        -> peer-to-peer: returns nullptr, the engine asks peers directly
// Host names are resolved here (blocking): call it on a setup path. A malformed string or an
// unresolvable host is errc::invalid_params; "redis://" is errc::not_supported.
result<std::unique_ptr<metadata_store>> make_metadata_store(std::string_view conn);
result<std::unique_ptr<metadata_store>> make_metadata_store(std::string_view conn, metadata_options opts);

}  // namespace yutu::transfer
