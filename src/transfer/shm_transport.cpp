// The shared-memory transport: a peer on this host exposes memfd-backed buffers; we map each one
// once (through /proc/<pid>/fd/<fd>) and copy directly. A pidfd tells us when the peer exited, since
// a mapping of a dead peer's memory stays valid and writes into it would vanish silently.
#include <poll.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>

#include "transports.hpp"
#include "yutu/log.hpp"

namespace yutu::transfer::detail {
namespace {

int open_pidfd(int pid) {
#ifdef SYS_pidfd_open
  return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
#else
  (void)pid;
  return -1;
#endif
}

struct shm_peer_state final : transport_peer_state {
  std::mutex mu;
  std::map<int, std::shared_ptr<shm_mapping>> maps;  // by the owner's memfd number
  int pidfd = -1;
  std::uint64_t mapped_incarnation = 0;
  ~shm_peer_state() override {
    if (pidfd >= 0) ::close(pidfd);
  }
};

}  // namespace

std::unique_ptr<transport_peer_state> shm_transport::make_peer_state(const peer_info&) {
  return std::make_unique<shm_peer_state>();
}

bool shm_transport::can_serve(const peer_info& peer, const transfer_request& r) const {
  if (peer.self || !peer.desc->speaks("shm") || peer.desc->host_id != host_.host_id()) return false;
  const buffer_desc* b = peer.desc->find(r.target_offset, r.length);
  return b && b->shm_fd >= 0;
}

task<std::error_code> shm_transport::execute(const peer_info& peer, const transfer_request& r) {
  auto& st = *static_cast<shm_peer_state*>(peer.state);
  const segment_desc& d = *peer.desc;
  const buffer_desc* b = d.find(r.target_offset, r.length);
  if (!b) co_return make_error_code(te_errc::address_not_registered);
  if (b->shm_fd < 0) co_return make_error_code(te_errc::no_transport);
  std::byte* target = nullptr;
  {
    std::lock_guard lk(st.mu);
    if (st.mapped_incarnation != d.incarnation) {
      st.maps.clear();
      if (st.pidfd >= 0) ::close(st.pidfd);
      st.pidfd = open_pidfd(d.pid);
      st.mapped_incarnation = d.incarnation;
    }
    if (st.pidfd >= 0) {
      pollfd pf{st.pidfd, POLLIN, 0};
      if (::poll(&pf, 1, 0) > 0) co_return make_error_code(te_errc::peer_unreachable);
    }
    auto it = st.maps.find(b->shm_fd);
    if (it == st.maps.end()) {
      auto m = shm_mapping::open(d.pid, b->shm_fd, b->shm_size);
      if (!m) {
        log::info("engine {}: mapping {}'s memory failed ({}); falling back", host_.local_name(), *peer.name,
                  m.error().message());
        co_return make_error_code(te_errc::no_transport);
      }
      it = st.maps.emplace(b->shm_fd, std::make_shared<shm_mapping>(std::move(*m))).first;
    }
    target = it->second->data() + b->shm_offset + (r.target_offset - b->addr);
  }
  if (r.op == opcode::write)
    std::memcpy(target, r.source, r.length);
  else
    std::memcpy(r.source, target, r.length);
  co_return std::error_code{};
}

}  // namespace yutu::transfer::detail
