// Registered memory: the only memory a peer can reach, and the allocator of shareable memory.
//
// Registration is the control path (a mutex, a sorted map); lookups are the data path, so they read
// an immutable snapshot that registration replaces: a reader takes a reference-counted pointer to the
// current snapshot under a version check, with no lock in steady state. Every remote access is
// checked against a snapshot: the range must lie inside one buffer registered as remotely
// accessible, else te_errc::address_not_registered.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "yutu/error.hpp"
#include "yutu/transfer/types.hpp"

namespace yutu::transfer {

struct registered_buffer {
  std::uint64_t addr = 0;
  std::uint64_t length = 0;
  location where;
  bool remote_accessible = true;
  int shm_fd = -1;  // memfd when allocated by shm_allocator
  std::uint64_t shm_offset = 0;
  std::uint64_t shm_size = 0;
  std::uint64_t shm_id = 0;  // the block's number at its engine (see buffer_desc::shm_id)
  std::uint64_t shm_guard = 0;  // offset of the block's guard word in the memfd (buffer_desc::shm_guard)
  std::uint64_t shm_reg = 0;    // this registration's number, what the guard holds while it lasts
};

class memory_registry {
 public:
  struct snapshot {
    std::vector<registered_buffer> buffers;  // sorted by addr, non-overlapping
    // The buffer wholly containing [addr, addr+len), or nullptr.
    const registered_buffer* find(std::uint64_t addr, std::uint64_t len) const noexcept;
  };

  // Rejects empty, wrapping and overlapping ranges (te_errc::address_overlapped).
  result<void> add(registered_buffer b);
  // Removes the buffer starting at addr (te_errc::address_not_registered if none).
  result<registered_buffer> remove(std::uint64_t addr);

  // The current snapshot. Cheap: one atomic load when nothing changed since `cache` was taken.
  std::shared_ptr<const snapshot> current() const;
  // Reader-side cache: keeps the last snapshot and refreshes it only when the version moved.
  class reader {
   public:
    explicit reader(const memory_registry& r) : r_(&r) {}
    const snapshot& get() {
      auto v = r_->version_.load(std::memory_order_acquire);
      if (!snap_ || v != version_) {
        snap_ = r_->current();
        version_ = v;
      }
      return *snap_;
    }

   private:
    const memory_registry* r_;
    std::shared_ptr<const snapshot> snap_;
    std::uint64_t version_ = ~0ull;
  };

  std::vector<registered_buffer> list() const;
  std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }

 private:
  mutable std::mutex mu_;
  std::map<std::uint64_t, registered_buffer> by_addr_;
  std::atomic<std::shared_ptr<const snapshot>> snap_{std::make_shared<const snapshot>()};
  std::atomic<std::uint64_t> version_{0};
};

// Shareable memory: each allocation is its own memfd mapping (hugepages when asked), so a peer on the
// same host can map exactly that allocation and nothing else of this process.
//
// Past the caller's `size` the memfd holds one 8-byte guard word (in the last page's slack, or a page
// of its own): the owning engine keeps there the number of the block's current registration, 0 while
// it is not registered. A peer that maps the memfd reads it before and after each copy, so a write
// through a descriptor published before an unregister or a free fails instead of landing in memory
// that nobody reads any more (the owner's mapping is gone, the peer's keeps the pages alive).
struct shm_block {
  void* addr = nullptr;
  std::uint64_t size = 0;    // what the caller asked for
  std::uint64_t mapped = 0;  // the memfd's size, all of it mapped at addr: size, guard and padding
  std::uint64_t guard = 0;   // offset of the guard word (>= size, 8-aligned)
  int fd = -1;
  std::uint64_t id = 0;  // numbered by the engine that allocated it, from 1
};
result<shm_block> shm_allocate(std::uint64_t size, bool hugepages = false);
void shm_free(const shm_block& b) noexcept;

// A mapping of a peer's memfd (opened through /proc/<pid>/fd/<fd>), unmapped on destruction.
class shm_mapping {
 public:
  static result<shm_mapping> open(int pid, int fd, std::uint64_t size);
  shm_mapping() = default;
  shm_mapping(shm_mapping&& o) noexcept;
  shm_mapping& operator=(shm_mapping&& o) noexcept;
  ~shm_mapping();
  std::byte* data() const noexcept { return static_cast<std::byte*>(addr_); }
  std::uint64_t size() const noexcept { return size_; }
  // Lets go of the peer's memory while other threads may still be copying through this mapping:
  // the range becomes private zero-filled memory in one step (their copies land there, and no
  // fault), and the memfd's pages go once no other process maps them. The range stays reserved
  // until destruction. For a peer that exited, or a block its owner freed.
  void retire() noexcept;
  // Where the owner's guard word of the block lies (shm_block::guard; 0: none).
  void set_guard(std::uint64_t offset) noexcept { guard_ = offset; }
  // Whether the owner has let go of the block (its guard word reads 0: unregistered or freed). A
  // retired mapping reads 0 too.
  bool released_by_owner() const noexcept;

 private:
  void* addr_ = nullptr;
  std::uint64_t size_ = 0;
  std::uint64_t guard_ = 0;
};

}  // namespace yutu::transfer
