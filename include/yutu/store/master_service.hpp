// The master's operations, as one interface with two sides: the in-process state machine implements
// it, and the RPC client implements it over the network, so clients, tests and the embedded mode use
// the same calls whether the master is in this process or on another host.
//
// Only metadata and allocation live here: object bytes never pass through the master. A put is
// start (allocate replicas, PROCESSING) -> the client writes every replica through the transfer
// engine -> end (COMPLETE, readable) or revoke (freed). A get takes a lease that protects the
// replicas from eviction and removal until it expires.
#pragma once

#include <string>
#include <vector>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/store/types.hpp"

namespace yutu::store {

struct match_result {
  std::size_t hits = 0;                   // leading keys present and readable
  std::vector<replica_list> replicas;     // one per hit, leases taken
};

class master_service {
 public:
  virtual ~master_service() = default;

  virtual task<result<void>> mount_segment(client_id client, segment_info seg) = 0;
  virtual task<result<void>> unmount_segment(client_id client, std::string segment_name) = 0;
  virtual task<result<ping_result>> ping(client_id client) = 0;

  virtual task<result<std::vector<replica_desc>>> put_start(client_id client, std::string key, std::uint64_t size,
                                                          replicate_config cfg) = 0;
  virtual task<result<void>> put_end(client_id client, std::string key) = 0;
  virtual task<result<void>> put_revoke(client_id client, std::string key) = 0;
  // Replaces an existing object: like put_start, but an existing complete object is kept readable
  // until put_end swaps it for the new one.
  virtual task<result<std::vector<replica_desc>>> upsert_start(client_id client, std::string key, std::uint64_t size,
                                                             replicate_config cfg) = 0;

  virtual task<std::vector<result<std::vector<replica_desc>>>> batch_put_start(
      client_id client, std::vector<std::string> keys, std::vector<std::uint64_t> sizes, replicate_config cfg) = 0;
  virtual task<std::vector<result<void>>> batch_put_end(client_id client, std::vector<std::string> keys) = 0;
  virtual task<std::vector<result<void>>> batch_put_revoke(client_id client, std::vector<std::string> keys) = 0;
  // Reserved puts: placeholders[i] is a put this client started (put_start under a placeholder key,
  // ahead of need) and has written since; it becomes keys[i], complete, in one step. A client that
  // holds such reservations allocates locally and pays one round trip per put instead of two.
  // Per key: object_already_exists when keys[i] exists (the placeholder stays, reusable),
  // object_not_found / illegal_client / invalid_write when the placeholder is gone, not this
  // client's, not a first put in flight or older than put_start_timeout (the caller puts again).
  virtual task<std::vector<result<void>>> batch_put_commit(client_id client, std::vector<std::string> placeholders,
                                                           std::vector<std::string> keys) = 0;

  virtual task<result<replica_list>> get_replica_list(std::string key) = 0;
  virtual task<std::vector<result<replica_list>>> batch_get_replica_list(std::vector<std::string> keys) = 0;
  virtual task<result<match_result>> match_prefix(std::vector<std::string> keys) = 0;

  virtual task<result<bool>> exist(std::string key) = 0;
  virtual task<std::vector<result<bool>>> batch_exist(std::vector<std::string> keys) = 0;
  virtual task<result<std::uint64_t>> get_size(std::string key) = 0;
  virtual task<result<void>> remove(std::string key, bool force = false) = 0;
  virtual task<std::vector<result<void>>> batch_remove(std::vector<std::string> keys, bool force = false) = 0;
  virtual task<result<std::uint64_t>> remove_all(bool force = false) = 0;

  // Changes whenever this link to the master may have lost the master's state: for a remote master,
  // each time a connection to it broke (the master may have restarted and forgotten its leases).
  // A client's replica cache (client_config::replica_cache_max_age) drops what it holds when it moves.
  // Any thread.
  virtual std::uint64_t link_epoch() const noexcept { return 0; }
};

}  // namespace yutu::store
