// The local transport: the target is this engine, so a request is a bounds-checked memmove.
#include "transports.hpp"
#include "yutu/transfer/detail/stream_copy.hpp"

#include <cstdint>
#include <cstring>

namespace yutu::transfer::detail {

task<std::error_code> local_transport::execute(const peer_info& peer, const transfer_request& r) {
  co_return *execute_now(peer, r);
}

std::optional<std::error_code> local_transport::execute_now(const peer_info&, const transfer_request& r) {
  // The same rule a remote target applies: only remotely accessible, registered ranges.
  memory_registry::reader rd(host_.registry());
  const registered_buffer* b = rd.get().find(r.target_offset, r.length);
  if (!b || !b->remote_accessible) return make_error_code(te_errc::address_not_registered);
  auto* target = reinterpret_cast<void*>(r.target_offset);
  // A write between two ranges of this process's own memory may overlap: only memmove copes.
  const auto src = reinterpret_cast<std::uintptr_t>(r.source);
  const bool overlap = src < r.target_offset + r.length && r.target_offset < src + r.length;
  if (r.op == opcode::write && !overlap)
    copy_to_peer(target, r.source, r.length, host_.config().nontemporal_write_threshold);
  else if (r.op == opcode::write)
    std::memmove(target, r.source, r.length);
  else
    std::memmove(r.source, target, r.length);
  return std::error_code{};
}

}  // namespace yutu::transfer::detail
