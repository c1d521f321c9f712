// The transfer engine's vocabulary: requests, statuses, buffers, locations and segment descriptors.
//
// A segment is what a peer exposes: the registered buffers of one engine (process). Its descriptor
// says how to reach it (the transports it speaks, its listen address, which buffers are shareable
// through memfd) and carries an incarnation id drawn at start-up: every frame names the incarnation
// it expects, so a descriptor cached before a peer restarted can never route bytes into the memory
// of the process that replaced it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "yutu/error.hpp"

namespace yutu::transfer {

enum class opcode : std::uint8_t { read = 0, write = 1 };

// One request of a batch: move `length` bytes between local memory at `source` and the target
// segment's memory at `target_offset` (a remote virtual address, as in Mooncake).
struct transfer_request {
  opcode op = opcode::write;
  void* source = nullptr;
  std::uint64_t segment = 0;  // a segment_id from engine::open_segment
  std::uint64_t target_offset = 0;
  std::uint64_t length = 0;
};

// Mooncake's request states, for the submit + poll surface.
enum class transfer_status : std::uint8_t { waiting, pending, completed, failed, timeout, canceled };
std::string_view to_string(transfer_status s) noexcept;

// Where memory lives: "cpu:0", "cuda:1", "*" (detect). Used to pick NICs and copy engines.
struct location {
  enum class kind : std::uint8_t { any, cpu, cuda } type = kind::any;
  int index = -1;
  static result<location> parse(std::string_view s);
  std::string to_string() const;
  friend bool operator==(const location&, const location&) = default;
};

// A registered buffer as published in the descriptor.
struct buffer_desc {
  std::uint64_t addr = 0;
  std::uint64_t length = 0;
  std::string location = "cpu:0";
  // When the buffer came from the engine's shareable allocator: the owner's memfd, so a peer on the
  // same host can map it (through /proc/<pid>/fd/<fd>) and copy directly.
  int shm_fd = -1;
  std::uint64_t shm_offset = 0;  // offset of addr within that memfd
  std::uint64_t shm_size = 0;    // size of the whole memfd mapping
  // Which block of the owner's that memfd is (numbered from 1; 0 from an owner that does not say):
  // a freed block's fd number is soon given to the next one, and a peer that kept the old mapping
  // under the number alone would write into memory nobody reads any more.
  std::uint64_t shm_id = 0;
  // Where the owner keeps the block's guard word in the memfd (0: an owner without one), and the
  // value it holds while this registration lasts (see shm_block): a peer checks it around each copy,
  // and a buffer the owner has since unregistered or freed fails with address_not_registered.
  std::uint64_t shm_guard = 0;
  std::uint64_t shm_reg = 0;
};

struct segment_desc {
  std::string name;
  std::uint64_t incarnation = 0;
  std::string host_id;  // local_host_id() of the engine: equal means "same host"
  int pid = 0;
  std::string tcp_host;  // where the engine's TCP service listens
  std::uint16_t tcp_port = 0;
  std::vector<std::string> transports;  // in preference order
  std::vector<buffer_desc> buffers;     // sorted by addr
  // What a transport publishes of its own (the RDMA NICs, priority matrix and remote keys), as JSON
  // text per transport name; describe() fills it.
  std::map<std::string, std::string> extensions;

  bool speaks(std::string_view transport) const noexcept;
  // The buffer that wholly contains [addr, addr+len), or nullptr.
  const buffer_desc* find(std::uint64_t addr, std::uint64_t len) const noexcept;

  std::string to_json() const;
  static result<segment_desc> from_json(std::string_view text);
};

// The calling thread's identity for "same host" decisions (shm): the boot id, the hostname, and the
// network and pid namespaces. Two network namespaces are two hosts (a peer's loopback address means
// another stack), and a peer in another pid namespace publishes a pid that /proc/<pid> here resolves
// to some other process, so its memfd cannot be reached by that path.
std::string local_host_id();

}  // namespace yutu::transfer
