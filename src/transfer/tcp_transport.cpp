// The TCP transport (initiator side): a fixed pool of connections per peer, each owned by one of the
// engine's reactors, requests cut into tcp_slice_size slices striped over them. A connection is made
// lazily and handshaken: a peer that answers with another incarnation has restarted, so the request
// (planned against the old process's memory) fails with stale_segment and the engine learns the new
// descriptor. The target side of the protocol is the engine's TCP service (engine.cpp).
#include "transports.hpp"

#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/log.hpp"
#include "yutu/transfer/engine.hpp"

namespace yutu::transfer::detail {
namespace {

struct tcp_peer_state final : transport_peer_state {
  struct slot {
    std::size_t home = 0;
    std::shared_ptr<client_conn> conn;  // touched on the home reactor only
    std::unique_ptr<coro::async_mutex> connect_mu = std::make_unique<coro::async_mutex>();
  };
  // Shared so that work posted to a slot's reactor keeps it alive past the peer's removal.
  std::vector<std::shared_ptr<slot>> conns;
  std::atomic<std::size_t> next{0};
};

// Runs `fn(conn)` on the connection's home reactor, from any thread (control path: one allocation).
template <class Fn>
void on_home(io::reactor& home, Fn fn) {
  struct item : coro::work_item {
    Fn fn;
    explicit item(Fn f) : fn(std::move(f)) {}
  };
  auto* it = new item(std::move(fn));
  it->run = [](coro::work_item* w) noexcept {
    auto* self = static_cast<item*>(w);
    self->fn();
    delete self;
  };
  home.post(it);
}

}  // namespace

std::unique_ptr<transport_peer_state> tcp_transport::make_peer_state(const peer_info& peer) {
  auto st = std::make_unique<tcp_peer_state>();
  const auto& cfg = host_.config();
  for (std::size_t i = 0; i < cfg.tcp_connections_per_peer; ++i) {
    auto sl = std::make_shared<tcp_peer_state::slot>();
    sl->home = (peer.id + i) % cfg.threads;
    st->conns.push_back(std::move(sl));
  }
  return st;
}

bool tcp_transport::can_serve(const peer_info& peer, const transfer_request&) const {
  return peer.desc->speaks("tcp") && peer.desc->tcp_port != 0;
}

task<result<std::shared_ptr<client_conn>>> tcp_transport::ensure_conn(const peer_info& peer, std::size_t ci) {
  auto& slot = *static_cast<tcp_peer_state*>(peer.state)->conns[ci];
  if (slot.conn && !slot.conn->broken()) co_return slot.conn;
  auto guard = co_await slot.connect_mu->lock();
  if (!guard) co_return fail(guard.error());
  if (slot.conn && !slot.conn->broken()) co_return slot.conn;
  slot.conn.reset();
  const auto& cfg = host_.config();
  const segment_desc& desc = *peer.desc;
  auto addr = io::address::parse(desc.tcp_host + ":" + std::to_string(desc.tcp_port));
  if (!addr) co_return fail(te_errc::invalid_argument);
  auto s = co_await io::tcp_stream::connect(*addr).with_timeout(cfg.connect_timeout);
  if (!s) {
    log::info("engine {}: connecting to {} ({}) failed: {}", host_.local_name(), *peer.name, addr->to_string(),
              s.error().message());
    co_return fail(te_errc::peer_unreachable);
  }
  // An idle pooled connection to a host that died is found out by keepalive, not only by the next
  // request's deadline.
  (void)s->set_keepalive(keepalive_idle_s, keepalive_interval_s, keepalive_count);
  auto c = std::make_shared<client_conn>(host_.pool().at(slot.home), std::move(*s), cfg.max_slice_size,
                                         &host_.counters("tcp").zero_copy_bytes);
  c->start(slot.home, *this);
  // Handshake: who listens there now? A restarted peer has a new incarnation.
  wire::header h;
  h.type = wire::frame_type::desc_req;
  std::string body;
  auto ec = co_await c->call(h, {}, nullptr, &body);
  if (ec) {
    c->shutdown();
    // The connection died under the handshake (a target killed between accepting and answering), or
    // the batch's deadline cancelled it: that is what the request failed of, as for any other slice.
    if (ec == te_errc::peer_unreachable || is_canceled(ec) || is_timeout(ec)) co_return fail(ec);
    co_return fail(te_errc::handshake_socket);
  }
  auto d = segment_desc::from_json(body);
  if (!d) {
    c->shutdown();
    co_return fail(te_errc::handshake_invalid_message);
  }
  if (d->incarnation != desc.incarnation) {
    host_.peer_restarted(peer.id, std::move(*d));
    c->shutdown();
    co_return fail(te_errc::stale_segment);
  }
  slot.conn = c;
  co_return c;
}

task<std::error_code> tcp_transport::slice(const peer_info& peer, std::size_t ci, opcode op, std::byte* local,
                                           std::uint64_t remote, std::uint64_t len) {
  io::reactor& home = host_.pool().at(static_cast<tcp_peer_state*>(peer.state)->conns[ci]->home);
  if (io::reactor::current() != &home) co_await home.schedule();
  wire::header h;
  h.type = op == opcode::write ? wire::frame_type::write : wire::frame_type::read;
  h.incarnation = peer.desc->incarnation;
  h.addr = remote;
  h.length = len;
  std::error_code ec;
  // A pooled connection may have been ended under us (a deadline elsewhere aborted it, the peer
  // closed an idle one): retry once on a fresh connection. Both opcodes are idempotent.
  for (int attempt = 0; attempt < 2; ++attempt) {
    auto c = co_await ensure_conn(peer, ci);
    if (!c) co_return c.error();
    if (op == opcode::write)
      ec = co_await (*c)->call(h, std::span<const std::byte>(local, len), nullptr);
    else
      ec = co_await (*c)->call(h, {}, local);
    if (ec != te_errc::peer_unreachable) break;
  }
  co_return ec;
}

task<std::error_code> tcp_transport::execute(const peer_info& peer, const transfer_request& r) {
  auto& st = *static_cast<tcp_peer_state*>(peer.state);
  const std::uint64_t slice_size = host_.config().tcp_slice_size;
  const std::size_t n = static_cast<std::size_t>((r.length + slice_size - 1) / slice_size);
  auto* base = static_cast<std::byte*>(r.source);
  if (n == 1) {
    // A caller already on one of the engine's reactors uses a connection that lives there: the
    // request then costs no thread hop at all, which is most of a small request's latency.
    std::size_t ci = st.next.fetch_add(1, std::memory_order_relaxed) % st.conns.size();
    if (io::reactor* cur = io::reactor::current(); cur && &host_.pool().at(st.conns[ci]->home) != cur) {
      for (std::size_t k = 1; k < st.conns.size(); ++k) {
        std::size_t cand = (ci + k) % st.conns.size();
        if (&host_.pool().at(st.conns[cand]->home) == cur) {
          ci = cand;
          break;
        }
      }
    }
    co_return co_await slice(peer, ci, r.op, base, r.target_offset, r.length);
  }
  std::vector<task<std::error_code>> parts;
  parts.reserve(n);
  for (std::size_t k = 0; k < n; ++k) {
    std::uint64_t off = k * slice_size;
    std::uint64_t len = std::min(slice_size, r.length - off);
    std::size_t ci = st.next.fetch_add(1, std::memory_order_relaxed) % st.conns.size();
    parts.push_back(slice(peer, ci, r.op, base + off, r.target_offset + off, len));
  }
  auto results = co_await coro::when_all(std::move(parts));
  for (auto& e : results)
    if (e) co_return e;
  co_return std::error_code{};
}

void tcp_transport::abort(const peer_info& peer) noexcept {
  auto* st = static_cast<tcp_peer_state*>(peer.state);
  if (!st) return;
  for (const auto& slot : st->conns) {
    // slot->conn belongs to its home reactor: look at it there.
    on_home(host_.pool().at(slot->home), [slot] {
      if (slot->conn) slot->conn->shutdown();
    });
  }
}

task<std::error_code> tcp_transport::notify(const peer_info& peer, std::string payload) {
  auto& st = *static_cast<tcp_peer_state*>(peer.state);
  io::reactor& home = host_.pool().at(st.conns[0]->home);
  if (io::reactor::current() != &home) co_await home.schedule();
  auto c = co_await ensure_conn(peer, 0);
  if (!c) co_return c.error();
  wire::header h;
  h.type = wire::frame_type::notify;
  h.incarnation = peer.desc->incarnation;
  h.length = payload.size();
  co_return co_await (*c)->call(h, std::as_bytes(std::span(payload)), nullptr);
}

}  // namespace yutu::transfer::detail
