// Fuzzes the store RPC decoder the way a master or a client meets hostile bytes: as a stream cut into
// frames (header checks, every request and response payload), and as a bare payload of every op.
// Nothing may crash, leak or allocate past the payload's bounds, and whatever decodes must re-encode
// to the same bytes (the codec is canonical).
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>

#include "yutu/store/rpc.hpp"

namespace rpc = yutu::store::rpc;

namespace {

void check_payload(rpc::op o, std::span<const std::byte> payload, const rpc::limits& lim) {
  if (auto req = rpc::decode_request(o, payload, lim)) {
    std::string again;
    rpc::reencode_request(*req, again);
    if (again.size() != payload.size() || std::memcmp(again.data(), payload.data(), payload.size()) != 0)
      __builtin_trap();
  }
  std::string again;
  if (rpc::reencode_response(o, payload, lim, again)) {
    if (again.size() != payload.size() || std::memcmp(again.data(), payload.data(), payload.size()) != 0)
      __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  rpc::limits lim;
  lim.max_frame = 1 << 20;
  lim.max_batch = 1024;
  const auto* bytes = reinterpret_cast<const std::byte*>(data);

  // As a stream: fed in uneven pieces, like recv() would.
  rpc::frame_buffer in(64);
  std::size_t fed = 0, piece = 1;
  while (fed < size) {
    std::size_t n = std::min(size - fed, piece);
    piece = piece * 3 + 1;
    auto dst = in.prepare(n);
    std::memcpy(dst.data(), bytes + fed, n);
    in.commit(n);
    fed += n;
    for (;;) {
      auto f = in.next(lim);
      if (!f) return 0;  // out of sync: the connection would be closed
      if (!*f) break;
      const rpc::frame_buffer::frame& fr = **f;
      if (fr.payload.size() != fr.h.length || fr.h.length > lim.max_frame) __builtin_trap();
      if (auto o = rpc::check_request(fr.h)) check_payload(*o, fr.payload, lim);
      if (auto o = rpc::check_response(fr.h); o && *o) check_payload(**o, fr.payload, lim);
    }
  }

  // As a bare payload: the first byte picks the op.
  if (size >= 1) {
    auto o = rpc::op_of(static_cast<std::uint16_t>(1 + data[0] % rpc::op_max));
    if (!o) __builtin_trap();
    check_payload(*o, std::span<const std::byte>(bytes + 1, size - 1), lim);
  }
  return 0;
}
