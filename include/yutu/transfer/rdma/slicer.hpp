// How an RDMA request is cut into work requests: a pure function, unit-tested apart from verbs.
//
// A slice is at most slice_size bytes, except that a short tail (under half a slice) joins the slice
// before it, as Mooncake does, so a 65 KiB request is one work request rather than a big and a tiny
// one. No slice crosses a memory-region boundary on either side: registrations larger than the
// device's maximum are split into chunks, and one work request can only name one lkey and one rkey.
#pragma once

#include <cstdint>
#include <vector>

namespace yutu::transfer::rdma {

// Memory regions laid out back to back from `base`, each `chunk` bytes (the last one shorter),
// ending at `end`: how a registration split by max_mr_size looks.
struct region_grid {
  std::uint64_t base = 0;
  std::uint64_t end = 0;
  std::uint64_t chunk = 0;  // 0: one region
  // Bytes from `addr` to the end of the region containing it.
  std::uint64_t room(std::uint64_t addr) const noexcept;
  // Index of the region containing `addr`.
  std::uint64_t index(std::uint64_t addr) const noexcept { return chunk ? (addr - base) / chunk : 0; }
};

struct slice {
  std::uint64_t offset = 0;  // within the request
  std::uint64_t length = 0;
  friend bool operator==(const slice&, const slice&) = default;
};

// Cuts [0, length) of a request from local_addr to remote_addr. slice_size must be > 0; the caller
// has checked that both ranges lie inside their grids.
std::vector<slice> plan_slices(std::uint64_t length, std::uint64_t slice_size, std::uint64_t local_addr,
                               const region_grid& local, std::uint64_t remote_addr, const region_grid& remote);

}  // namespace yutu::transfer::rdma
