// The store's vocabulary: segments contributed by clients, objects, replicas, replication options.
//
// A segment is a range of a client's registered memory (reachable through the transfer engine under
// the client's engine segment name) that the master allocates object replicas from. Objects are
// immutable once complete; each replica is one contiguous allocation in one segment.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "yutu/error.hpp"

namespace yutu::store {

using client_id = std::string;  // a UUID-like string chosen by the client

struct segment_info {
  std::string name;             // unique: "<engine segment name>/<base address in hex>"
  std::string engine_segment;   // the transfer engine segment holding the memory
  std::string host;             // host of the contributing client (placement: distinct hosts)
  std::uint64_t base = 0;       // remote address of the range in the engine segment
  std::uint64_t size = 0;
  std::string transport = "tcp";
};

struct replicate_config {
  std::size_t replica_num = 1;
  bool with_soft_pin = false;
  std::chrono::milliseconds soft_pin_ttl{30 * 60 * 1000};
  bool with_hard_pin = false;
  std::vector<std::string> preferred_segments;  // engine segment names or segment names
  bool prefer_local = false;                    // local_first: the writer's host first
  std::string local_host;                       // the writer's host, for prefer_local
  std::string group_id;                         // objects evicted together

  bool operator==(const replicate_config&) const = default;
};

enum class replica_status : std::uint8_t { processing, complete };

struct replica_desc {
  std::string segment;         // segment_info::name
  std::string engine_segment;  // where to transfer
  std::uint64_t addr = 0;      // remote address
  std::uint64_t size = 0;
  replica_status status = replica_status::processing;
};

// What a reader gets: the replicas, and how long the lease taken by the lookup lasts.
struct replica_list {
  std::uint64_t size = 0;
  std::vector<replica_desc> replicas;
  std::chrono::milliseconds lease_ttl{0};
};

struct ping_result {
  std::uint64_t view_version = 0;
  bool need_remount = false;
};

}  // namespace yutu::store
