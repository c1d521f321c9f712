// Streaming (non-temporal) copies; see include/yutu/transfer/detail/stream_copy.hpp for when and why.
#include "yutu/transfer/detail/stream_copy.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace yutu::transfer::detail {

#if defined(__x86_64__)
void stream_copy(void* dst, const void* src, std::size_t n) noexcept {
  auto* d = static_cast<char*>(dst);
  auto* s = static_cast<const char*>(src);
  // Plain stores up to the first 64-byte boundary of the destination, streaming stores over whole
  // 64-byte lines, plain stores for the rest. SSE2 (every x86-64 CPU) rather than AVX2: the copy is
  // bound by memory, and 32-byte streaming stores measured the same as 16-byte ones.
  std::size_t head = (64 - (reinterpret_cast<std::uintptr_t>(d) & 63)) & 63;
  if (head > n) head = n;
  std::memcpy(d, s, head);
  d += head;
  s += head;
  n -= head;
  const std::size_t body = n & ~std::size_t{63};
  for (std::size_t i = 0; i < body; i += 64) {
    // Unaligned loads: the source may sit anywhere, and they cost nothing extra on current cores.
    auto* sv = reinterpret_cast<const __m128i*>(s + i);
    auto* dv = reinterpret_cast<__m128i*>(d + i);
    __m128i a = _mm_loadu_si128(sv), b = _mm_loadu_si128(sv + 1);
    __m128i c = _mm_loadu_si128(sv + 2), e = _mm_loadu_si128(sv + 3);
    _mm_stream_si128(dv, a);
    _mm_stream_si128(dv + 1, b);
    _mm_stream_si128(dv + 2, c);
    _mm_stream_si128(dv + 3, e);
  }
  // Streaming stores are weakly ordered: without the fence a completion flag written after the copy
  // could become visible before the bytes.
  if (body != 0) _mm_sfence();
  std::memcpy(d + body, s + body, n - body);
}
#else
void stream_copy(void* dst, const void* src, std::size_t n) noexcept { std::memcpy(dst, src, n); }
#endif

}  // namespace yutu::transfer::detail
