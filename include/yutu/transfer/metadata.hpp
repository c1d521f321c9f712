// Where segment descriptors live: one interface, several back ends.
//
// The engine publishes its segment descriptor (transports, listen address, buffers, incarnation id)
// under a key and peers look it up by segment name. Keys follow Mooncake's layout
// (`mooncake/ram/<segment>`, `mooncake/rpc_meta/<segment>`) so tools that inspect one can inspect the
// other. Back ends: in-process (the embedded default), an HTTP key-value server
// (`GET/PUT/DELETE /metadata?key=`), etcd through its v3 JSON gateway with leases so a dead peer's
// descriptor expires, and peer-to-peer (no service: the descriptor is fetched from the peer itself).
// Every call is a coroutine awaited on a reactor thread and bounded by a deadline.
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
};

// Parses a metadata connection string as Mooncake's users write them:
//   "" or "memory"                 -> in-process (one map shared by every engine in the process)
//   "http://host:port/metadata"    -> HTTP key-value server
//   "etcd://host:port[;host:port]" -> etcd v3 JSON gateway
//   "P2PHANDSHAKE"                 -> peer-to-peer: returns nullptr, the engine asks peers directly
result<std::unique_ptr<metadata_store>> make_metadata_store(std::string_view conn);

}  // namespace yutu::transfer
