// Fuzzes every decoder a peer's bytes reach in the transfer engine: the frame header and the segment
// descriptor JSON (handshake responses and metadata values). Neither may crash, leak or accept a
// header that breaks its own bounds.
#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>

#include "yutu/transfer/types.hpp"
#include "yutu/transfer/wire.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace yutu::transfer;
  if (size >= wire::header_size) {
    auto bytes = std::span<const std::byte, wire::header_size>(reinterpret_cast<const std::byte*>(data), wire::header_size);
    auto h = wire::decode(bytes, 64u << 20);
    if (h) {
      // Whatever was accepted re-encodes to the same bytes and respects its type's bounds.
      auto again = wire::encode(*h);
      if (!std::equal(again.begin(), again.end(), bytes.begin())) __builtin_trap();
      if ((h->type == wire::frame_type::write || h->type == wire::frame_type::read) &&
          (h->length > (64u << 20) || h->addr + h->length < h->addr))
        __builtin_trap();
    }
  }
  auto d = segment_desc::from_json(std::string_view(reinterpret_cast<const char*>(data), size));
  if (d) {
    for (const auto& b : d->buffers)
      if (b.addr + b.length < b.addr) __builtin_trap();
    (void)d->find(4096, 16);
    (void)segment_desc::from_json(d->to_json());
  }
  return 0;
}
