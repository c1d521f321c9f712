// Embedded mode: a whole store on one machine in one process, for tests, examples and single-host
// deployments. It runs the master (master_state, plus its RPC server so that clients in other
// processes can join), an HTTP metadata server (so their engines can find this process's segments),
// and a storage node (a client contributing memory). Clients in this process use the master
// directly, without RPC: embedded::connect().
//
//   auto store = yutu::store::embedded::create({.memory = 1ull << 30}).value();
//   auto c = store->connect({}).value();
//   co_await c->put("k", bytes);
//   // another process: client_config{.metadata = store->metadata(), .master = store->master_address()}
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "yutu/error.hpp"
#include "yutu/store/client.hpp"
#include "yutu/store/master_state.hpp"

namespace yutu::store {

struct embedded_config {
  // Address every server listens on and the storage node's engine binds.
  std::string host = "127.0.0.1";
  // The master's RPC server (0: any free port); off: clients of other processes cannot join.
  bool serve_rpc = true;
  std::uint16_t rpc_port = 0;
  // The HTTP metadata server (0: any free port); off: segments are published in this process only
  // (metadata "memory"), so only clients of this process can reach them.
  bool serve_metadata = true;
  std::uint16_t metadata_port = 0;
  // Memory the embedded storage node contributes; 0: no storage node.
  std::uint64_t memory = 256ull << 20;
  std::uint64_t max_segment_size = 16ull << 30;
  // Back that memory with huge pages (client_config::hugepages; the host must have them reserved).
  bool hugepages = false;
  std::string protocol = "tcp";
  master_config master;
  // Reactor threads serving RPC and metadata, and running the master's maintenance.
  std::size_t server_threads = 2;
};

class embedded {
 public:
  static result<std::unique_ptr<embedded>> create(embedded_config cfg);
  static result<std::unique_ptr<embedded>> create() { return create(embedded_config{}); }
  // Closes the storage node, then stops the servers. Clients from connect() must be gone before.
  ~embedded();
  embedded(const embedded&) = delete;
  embedded& operator=(const embedded&) = delete;

  master_state& master() noexcept;
  // "host:port" of the RPC server; empty when serve_rpc is off.
  std::string master_address() const;
  // The metadata connection string clients and engines of this store use.
  std::string metadata() const;
  // The embedded storage node; nullptr when memory is 0.
  client* node() noexcept;

  // A client in this process talking to the master directly. Its metadata is this store's (the
  // config's own is ignored); the master field is ignored too.
  result<std::unique_ptr<client>> connect(client_config cfg);

  struct impl;

 private:
  explicit embedded(std::unique_ptr<impl> p) noexcept;
  std::unique_ptr<impl> p_;
};

}  // namespace yutu::store
