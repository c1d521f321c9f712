// Cutting RDMA requests into work requests (see slicer.hpp).
#include "yutu/transfer/rdma/slicer.hpp"

#include <algorithm>

namespace yutu::transfer::rdma {

std::uint64_t region_grid::room(std::uint64_t addr) const noexcept {
  if (addr >= end) return 0;
  if (!chunk) return end - addr;
  std::uint64_t region_end = base + ((addr - base) / chunk + 1) * chunk;
  return std::min(region_end, end) - addr;
}

std::vector<slice> plan_slices(std::uint64_t length, std::uint64_t slice_size, std::uint64_t local_addr,
                               const region_grid& local, std::uint64_t remote_addr, const region_grid& remote) {
  std::vector<slice> out;
  if (slice_size == 0) return out;
  out.reserve(static_cast<std::size_t>(length / slice_size + 1));
  std::uint64_t off = 0;
  while (off < length) {
    // The bytes left before either side reaches a region boundary (or the request ends).
    std::uint64_t piece = std::min({length - off, local.room(local_addr + off), remote.room(remote_addr + off)});
    if (piece == 0) break;  // outside a grid: the caller checked, so this is a no-op guard
    std::uint64_t take = std::min(piece, slice_size);
    // A short tail of this piece joins the slice instead of becoming its own work request.
    if (piece - take < slice_size / 2) take = piece;
    out.push_back(slice{off, take});
    off += take;
  }
  return out;
}

}  // namespace yutu::transfer::rdma
