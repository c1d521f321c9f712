// Copies into memory that this thread will not read back: a peer's segment written by the shm and
// local transports. Above a size threshold they use non-temporal (streaming) stores, which write
// whole cache lines without first reading them from memory and without evicting the caller's own
// working set. A KVCache write lands in memory nobody touched for a long time (eviction freed it),
// where a plain memcpy pays a read for ownership of every destination line: on the 2-core machine of
// docs/performance.md, streaming copies into cold memory ran 1.3-1.6x faster than memcpy. Into a
// destination already in this core's cache they are slower, which is why small copies and reads
// keep memcpy.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace yutu::transfer::detail {

// Copies n bytes (non-overlapping) with streaming stores where the CPU has them (x86-64: SSE2;
// elsewhere memcpy). Ends with a store fence, so the bytes are ordered before whatever this thread
// writes next (the completion another process waits on).
void stream_copy(void* dst, const void* src, std::size_t n) noexcept;

// The transports' write copy: streaming from `threshold` bytes up (0: never), else memcpy.
inline void copy_to_peer(void* dst, const void* src, std::size_t n, std::uint64_t threshold) noexcept {
  if (threshold != 0 && n >= threshold)
    stream_copy(dst, src, n);
  else
    std::memcpy(dst, src, n);
}

}  // namespace yutu::transfer::detail
