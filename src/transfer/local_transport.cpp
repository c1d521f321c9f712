// The local transport: the target is this engine, so a request is a bounds-checked memmove.
#include "transports.hpp"

#include <cstring>

namespace yutu::transfer::detail {

task<std::error_code> local_transport::execute(const peer_info&, const transfer_request& r) {
  // The same rule a remote target applies: only remotely accessible, registered ranges.
  memory_registry::reader rd(host_.registry());
  const registered_buffer* b = rd.get().find(r.target_offset, r.length);
  if (!b || !b->remote_accessible) co_return make_error_code(te_errc::address_not_registered);
  auto* target = reinterpret_cast<void*>(r.target_offset);
  if (r.op == opcode::write)
    std::memmove(target, r.source, r.length);
  else
    std::memmove(r.source, target, r.length);
  co_return std::error_code{};
}

}  // namespace yutu::transfer::detail
