// The transfer engine: peers, transport choice and fallback, the TCP service, batches, notifications.
#include "yutu/transfer/engine.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>
#include <utility>

#include <fmt/ranges.h>

#include "tcp_conn.hpp"
#include "transports.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_mutex.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/io/timeout.hpp"
#include "yutu/log.hpp"
#include "yutu/transfer/memory.hpp"
#include "yutu/transfer/metadata.hpp"
#include "yutu/transfer/wire.hpp"

namespace yutu::transfer {
namespace {

// Resumes the awaiting coroutine on `e` (the caller's executor), unless it is already there.
struct hop_to {
  coro::executor* e;
  coro::resume_item item;
  bool await_ready() const noexcept { return !e || e->running_in_this_thread(); }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    item.handle = h;
    e->post(&item);
  }
  void await_resume() const noexcept {}
};

std::uint64_t random_incarnation() {
  std::random_device rd;
  std::uint64_t v = 0;
  while (v == 0) v = (static_cast<std::uint64_t>(rd()) << 32) ^ rd();
  return v;
}

// The guard word of a shared block (shm_block), through the owner's mapping of it. Sequentially
// consistent: a peer checks the guard after its copy, behind a full fence, and must see the new value
// before the owner goes on to unmap or reuse anything.
std::atomic_ref<std::uint64_t> shm_guard_word(const registered_buffer& b) noexcept {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(b.addr - b.shm_offset + b.shm_guard));
}
void set_shm_guard(const registered_buffer& b, std::uint64_t value) noexcept {
  shm_guard_word(b).store(value, std::memory_order_seq_cst);
}

// Errors after which another transport may still succeed.
bool may_fall_back(const std::error_code& ec) {
  if (ec == te_errc::address_not_registered || ec == te_errc::invalid_argument || ec == te_errc::stale_segment)
    return false;
  if (is_canceled(ec) || is_timeout(ec)) return false;
  return true;
}


}  // namespace

struct peer {
  segment_id id = 0;
  std::string name;
  bool self = false;

  mutable std::mutex mu;
  std::shared_ptr<const segment_desc> desc;
  // Moves each time `desc` is replaced: a thread's cached copy is good while it has not moved.
  std::atomic<std::uint64_t> desc_gen{0};
  // One per transport of the engine, same order (null where a transport keeps no per-peer state).
  std::vector<std::unique_ptr<transport_peer_state>> states;

  std::shared_ptr<const segment_desc> snapshot() const {
    std::lock_guard lk(mu);
    return desc;
  }
  peer_info info(std::size_t transport_index) const { return info(transport_index, snapshot()); }
  peer_info info(std::size_t transport_index, std::shared_ptr<const segment_desc> d) const {
    return peer_info{id, &name, self, std::move(d), states[transport_index].get()};
  }
};

struct engine::impl final : transport_host {
  engine_config cfg;
  std::uint64_t incarnation_ = random_incarnation();
  // Taken by the creating thread, whose namespaces the listener and the reactor threads share.
  std::string host_id_ = local_host_id();
  std::string name;
  std::string host;
  std::uint16_t port = 0;
  std::unique_ptr<io::reactor_pool> pool_;
  memory_registry registry_;
  std::unique_ptr<metadata_store> meta;  // null in P2P mode
  bool p2p = false;
  std::optional<io::tcp_listener> listener;
  std::stop_source stop_src;
  std::atomic<bool> stopping{false};

  std::mutex shm_mu;
  std::map<std::uint64_t, shm_block> shm_blocks;
  std::uint64_t next_shm_id = 0;   // guarded by shm_mu
  std::uint64_t next_shm_reg = 0;  // registrations of shared blocks, numbered from 1; guarded by shm_mu
  // Address ranges of freed shared blocks, kept reserved (PROT_NONE, no memory) until the engine
  // goes: a same-host peer writes through the descriptor it holds, which may predate the free, so
  // no later block may take the same addresses (it would get writes meant for the freed one, or
  // the peer's writes meant for it would land in the old memory). Guarded by shm_mu.
  std::vector<std::pair<void*, std::uint64_t>> retired;

  std::mutex server_mu;
  std::set<int> server_fds;

  mutable std::mutex peers_mu;
  std::unordered_map<segment_id, std::shared_ptr<peer>> peers;
  std::unordered_map<std::string, segment_id> by_name;
  segment_id next_segment = 1;

  struct batch_state {
    std::vector<transfer_request> reqs;
    batch_result result;
    std::atomic<bool> done{false};
  };
  mutable std::mutex batches_mu;
  std::unordered_map<batch_id, std::shared_ptr<batch_state>> batches;
  batch_id next_batch = 1;

  std::mutex notif_mu;
  std::deque<notification> notifs;
  coro::async_event notif_event;
  static constexpr std::size_t max_queued_notifications = 1u << 16;

  std::atomic<bool> publish_running{false};
  std::atomic<bool> publish_dirty{false};

  // The transports this engine offers, in preference order.
  std::vector<std::unique_ptr<transport>> transports;
  detail::tcp_transport* tcp = nullptr;  // also carries notifications

  transport_counters local_c, shm_c, tcp_c, rdma_c, none_c;
  std::atomic<std::size_t> rr{0};

  // What each engine reactor thread keeps to itself, so that a request done on the spot (local,
  // shm) touches no memory another thread writes: the peers it last sent to (a few: a put with two
  // replicas alternates between two nodes), each with a copy of its descriptor of its own, and its
  // share of the request and byte counters. Before this, every
  // request took the engine's peer lock and the peer's lock and moved four reference counts and two
  // counters, all shared by every thread; on store_bench's 64 KiB shm puts those lines bouncing
  // between the two cores cost more than the lookups themselves.
  static constexpr std::size_t kinds = 5;  // local, shm, tcp, rdma, other (counters_for's order)
  struct cached_peer_entry {
    segment_id id = 0;
    std::shared_ptr<peer> p;                    // null: nothing cached
    std::shared_ptr<const segment_desc> desc;  // this thread's own copy of p's descriptor
    std::uint64_t peers_gen = 0, desc_gen = 0;
  };
  static constexpr std::size_t cached_peers = 4;
  struct alignas(64) thread_state {
    std::array<cached_peer_entry, cached_peers> peers;
    std::size_t next_victim = 0;  // replaced in turn
    // Written by this thread only (a load and a store, no locked instruction); read by counters().
    std::array<std::atomic<std::uint64_t>, kinds> requests{}, bytes{};
  };
  std::vector<std::unique_ptr<thread_state>> tstates;  // by reactor index
  // Moves whenever a peer leaves `peers`: cached peers of an older generation are looked up again.
  std::atomic<std::uint64_t> peers_gen{0};
  std::vector<std::size_t> kind_of;  // by transport index

  static std::size_t kind_index(std::string_view t) noexcept {
    if (t == "local") return 0;
    if (t == "shm") return 1;
    if (t == "tcp") return 2;
    if (t == "rdma") return 3;
    return 4;
  }
  transport_counters& cells(std::size_t kind) noexcept {
    transport_counters* all[kinds] = {&local_c, &shm_c, &tcp_c, &rdma_c, &none_c};
    return *all[kind];
  }
  // This thread's state when it is one of the engine's reactors, else null.
  thread_state* this_thread_state() const noexcept {
    const std::size_t i = pool_->index_of_current();
    return i < tstates.size() ? tstates[i].get() : nullptr;
  }
  // The peer `id` and a descriptor of it, from this thread's cache (refreshed when stale, or taking
  // the place of another peer). Null when the engine has no such peer.
  const cached_peer_entry* cached_peer(thread_state& ts, segment_id id) {
    const std::uint64_t pg = peers_gen.load(std::memory_order_acquire);
    cached_peer_entry* slot = nullptr;
    for (cached_peer_entry& e : ts.peers)
      if (e.p && e.id == id) slot = &e;
    if (slot && slot->peers_gen == pg && slot->desc_gen == slot->p->desc_gen.load(std::memory_order_acquire))
      return slot;
    if (!slot) slot = &ts.peers[ts.next_victim++ % cached_peers];
    std::shared_ptr<peer> p = find_peer(id);
    if (!p) {
      *slot = {};
      return nullptr;
    }
    std::shared_ptr<const segment_desc> snap;
    std::uint64_t dg = 0;
    {
      std::lock_guard lk(p->mu);
      snap = p->desc;
      dg = p->desc_gen.load(std::memory_order_relaxed);
    }
    *slot = cached_peer_entry{id, std::move(p), std::make_shared<const segment_desc>(*snap), pg, dg};
    return slot;
  }
  void forget_peer_caches() noexcept {
    for (auto& ts : tstates) ts->peers = {};
  }

  // --- transport_host ---
  io::reactor_pool& pool() noexcept override { return *pool_; }
  const engine_config& config() const noexcept override { return cfg; }
  const memory_registry& registry() const noexcept override { return registry_; }
  const std::string& local_name() const noexcept override { return name; }
  std::uint64_t incarnation() const noexcept override { return incarnation_; }
  const std::string& host_id() const noexcept override { return host_id_; }
  void spawn_on(std::size_t i, task<void> t) override { pool_->spawn(i, std::move(t)); }
  transport_counters& counters(std::string_view t) noexcept override { return counters_for(t); }
  void peer_restarted(segment_id id, segment_desc fresh) override {
    if (auto p = find_peer(id)) set_desc(*p, std::move(fresh));
  }

  void make_transports() {
    for (const auto& t : cfg.transports) {
      if (t == "local")
        transports.push_back(std::make_unique<detail::local_transport>(*this));
      else if (t == "shm")
        transports.push_back(std::make_unique<detail::shm_transport>(*this));
      else if (t == "tcp") {
        auto tt = std::make_unique<detail::tcp_transport>(*this);
        tcp = tt.get();
        transports.push_back(std::move(tt));
      } else if (t == "rdma")
        transports.push_back(detail::make_rdma_transport(*this));
    }
  }
  std::shared_ptr<peer> make_peer(segment_id id, std::string pname, bool self, segment_desc d) {
    auto pe = std::make_shared<peer>();
    pe->id = id;
    pe->name = std::move(pname);
    pe->self = self;
    pe->desc = std::make_shared<const segment_desc>(std::move(d));
    const peer_info bare{id, &pe->name, self, pe->desc, nullptr};
    for (auto& t : transports) pe->states.push_back(t->make_peer_state(bare));
    return pe;
  }

  transport_counters& counters_for(std::string_view t) { return cells(kind_index(t)); }
  bool offers(std::string_view t) const {
    return std::find(cfg.transports.begin(), cfg.transports.end(), t) != cfg.transports.end();
  }
  bool on_engine_thread() const { return pool_->index_of_current() != io::reactor_pool::npos; }
  std::size_t pick_reactor() { return rr.fetch_add(1, std::memory_order_relaxed) % pool_->size(); }

  segment_desc build_desc() const {
    segment_desc d;
    d.name = name;
    d.incarnation = incarnation_;
    d.host_id = host_id_;
    d.pid = ::getpid();
    d.tcp_host = host;
    d.tcp_port = port;
    d.transports = cfg.transports;
    for (const auto& b : registry_.list()) {
      if (!b.remote_accessible) continue;
      buffer_desc bd;
      bd.addr = b.addr;
      bd.length = b.length;
      bd.location = b.where.to_string();
      bd.shm_fd = b.shm_fd;
      bd.shm_offset = b.shm_offset;
      bd.shm_size = b.shm_size;
      bd.shm_id = b.shm_id;
      bd.shm_guard = b.shm_guard;
      bd.shm_reg = b.shm_reg;
      d.buffers.push_back(std::move(bd));
    }
    for (const auto& t : transports) t->describe(d);
    return d;
  }

  // --- descriptor publication (coalesced: one publisher at a time, re-run while dirty) ---
  task<void> publish_loop() {
    for (;;) {
      publish_dirty.store(false, std::memory_order_release);
      auto r = co_await meta->put(ram_key(name), build_desc().to_json(),
                                  put_options{.lease_ttl = cfg.descriptor_lease});
      if (!r) log::warn("engine {}: publishing the descriptor failed: {}", name, r.error().message());
      if (publish_dirty.load(std::memory_order_acquire)) continue;
      publish_running.store(false, std::memory_order_release);
      // A change that raced with the release above: take the job back if nobody else did.
      if (publish_dirty.load(std::memory_order_acquire) && !publish_running.exchange(true)) continue;
      break;
    }
  }
  void schedule_publish() {
    if (!meta || stopping.load()) return;
    publish_dirty.store(true, std::memory_order_release);
    if (!publish_running.exchange(true, std::memory_order_acq_rel)) pool_->spawn(0, publish_loop());
  }

  // --- the TCP service ---
  std::error_code check_remote(const wire::header& h, memory_registry::reader& rd) const {
    if (h.incarnation != 0 && h.incarnation != incarnation_) return make_error_code(te_errc::stale_segment);
    const registered_buffer* b = rd.get().find(h.addr, h.length);
    if (!b || !b->remote_accessible) return make_error_code(te_errc::address_not_registered);
    return {};
  }

  task<void> serve_conn(io::tcp_stream s) {
    {
      std::lock_guard lk(server_mu);
      if (stopping.load()) co_return;
      server_fds.insert(s.fd());
    }
    memory_registry::reader rd(registry_);
    wire::header_bytes hb;
    std::string body;
    // Responses wait here while more requests are already queued on the socket, and leave together,
    // in one gathered send, when the next request is not there yet or enough piled up: a pipelined
    // run of writes costs one send of acks instead of one per frame, and a run of 64 KiB reads leaves
    // as one large write. A WRITE is still acked only after its bytes landed; a READ's payload is
    // registered memory, read when the send happens.
    constexpr std::size_t max_pending = 32;
    constexpr std::uint64_t max_pending_bytes = 1u << 20;
    std::array<std::byte, max_pending * wire::header_size> heads;
    std::array<iovec, 2 * max_pending> iov;
    std::size_t pending = 0, niov = 0;
    std::uint64_t pending_bytes = 0;
    detail::frame_reader in(s);
    for (;;) {
      if (pending > 0 && !in.has_header()) {
        // About to wait for the client: what it waits for must be on its way first.
        pending = pending_bytes = 0;
        if (!co_await io::send_all_iov(s.fd(), std::span(iov.data(), std::exchange(niov, 0)))) break;
      }
      if (!co_await in.read_header(hb)) break;
      auto h = wire::decode(hb, cfg.max_slice_size);
      if (!h) {
        log::warn("engine {}: malformed frame from {}: {}; closing the connection", name,
                  s.peer_address().to_string(), h.error().message());
        break;
      }
      wire::header resp;
      resp.id = h->id;
      std::span<const std::byte> payload;
      bool stream_ok = true;
      switch (h->type) {
        case wire::frame_type::write: {
          resp.type = wire::frame_type::write_ack;
          std::error_code st = check_remote(*h, rd);
          // A range that failed the check is read and discarded: the stream stays in step.
          stream_ok = static_cast<bool>(
              co_await in.read_payload(st ? nullptr : reinterpret_cast<std::byte*>(h->addr), h->length));
          resp.status = st.value();
          break;
        }
        case wire::frame_type::read: {
          resp.type = wire::frame_type::read_resp;
          std::error_code st = check_remote(*h, rd);
          resp.status = st.value();
          if (!st) {
            resp.length = h->length;
            payload = std::span(reinterpret_cast<const std::byte*>(h->addr), h->length);
          }
          break;
        }
        case wire::frame_type::desc_req: {
          resp.type = wire::frame_type::desc_resp;
          body = build_desc().to_json();
          resp.length = body.size();
          payload = std::as_bytes(std::span(body));
          break;
        }
        case wire::frame_type::notify: {
          resp.type = wire::frame_type::notify_ack;
          body.assign(h->length, '\0');
          stream_ok = static_cast<bool>(co_await in.read_payload(reinterpret_cast<std::byte*>(body.data()), h->length));
          if (!stream_ok) break;
          auto nul = body.find('\0');
          notification n;
          if (nul == std::string::npos) {
            n.message = body;
          } else {
            n.from = body.substr(0, nul);
            n.message = body.substr(nul + 1);
          }
          bool queued = false;
          {
            std::lock_guard lk(notif_mu);
            if (notifs.size() < max_queued_notifications) {
              notifs.push_back(std::move(n));
              queued = true;
            }
          }
          if (queued)
            notif_event.set();
          else
            resp.status = static_cast<int>(te_errc::too_many_requests);
          break;
        }
        case wire::frame_type::transport_req: {
          // A transport's control message (the RDMA queue pair handshake): name NUL body.
          resp.type = wire::frame_type::transport_resp;
          body.assign(h->length, '\0');
          stream_ok = static_cast<bool>(co_await in.read_payload(reinterpret_cast<std::byte*>(body.data()), h->length));
          if (!stream_ok) break;
          auto nul = body.find('\0');
          transport* target = nullptr;
          if (nul != std::string::npos)
            for (auto& t : transports)
              if (t->name() == std::string_view(body).substr(0, nul)) target = t.get();
          if (h->incarnation != 0 && h->incarnation != incarnation_) {
            resp.status = static_cast<int>(te_errc::stale_segment);
          } else if (!target) {
            resp.status = static_cast<int>(te_errc::no_transport);
          } else {
            auto answer = target->on_peer_request(std::string_view(body).substr(nul + 1));
            if (!answer) {
              resp.status = answer.error().category() == engine_category() ? answer.error().value()
                                                                            : static_cast<int>(te_errc::handshake_reject);
            } else {
              body = std::move(*answer);
              resp.length = body.size();
              payload = std::as_bytes(std::span(body));
            }
          }
          break;
        }
        default:
          log::warn("engine {}: unexpected frame type {} from a client; closing", name, static_cast<int>(h->type));
          stream_ok = false;
          break;
      }
      if (!stream_ok) break;
      std::byte* head = heads.data() + pending * wire::header_size;
      const auto out = wire::encode(resp);
      std::memcpy(head, out.data(), out.size());
      iov[niov++] = {head, out.size()};
      if (!payload.empty()) iov[niov++] = {const_cast<std::byte*>(payload.data()), payload.size()};
      ++pending;
      pending_bytes += payload.empty() ? h->length : payload.size();
      // `body` is reused by the next frame: a response carrying it leaves now.
      const bool from_body = !payload.empty() && payload.data() == reinterpret_cast<const std::byte*>(body.data());
      if (pending < max_pending && pending_bytes < max_pending_bytes && !from_body) continue;
      pending = pending_bytes = 0;
      if (!co_await io::send_all_iov(s.fd(), std::span(iov.data(), std::exchange(niov, 0)))) break;
    }
    {
      std::lock_guard lk(server_mu);
      server_fds.erase(s.fd());
    }
    s.close();
  }

  task<void> accept_loop() {
    for (;;) {
      auto s = co_await listener->accept();
      if (!s) {
        if (stopping.load() || is_canceled(s.error())) break;
        log::warn("engine {}: accept failed: {}", name, s.error().message());
        co_await io::sleep_for(std::chrono::milliseconds(10));
        continue;
      }
      // A client whose host died never closes: keepalive ends its connection (and this side's
      // coroutine and fd) after detail::keepalive_* instead of never.
      (void)s->set_keepalive(detail::keepalive_idle_s, detail::keepalive_interval_s, detail::keepalive_count);
      pool_->spawn(pick_reactor(), serve_conn(std::move(*s)));
    }
  }

  // --- peers ---
  task<result<segment_desc>> fetch_desc_p2p(std::string name_) {
    auto addr = io::address::parse(name_);
    if (!addr) co_return fail(te_errc::invalid_argument);
    auto s = co_await io::tcp_stream::connect(*addr).with_timeout(cfg.connect_timeout);
    if (!s) {
      log::info("engine {}: handshake with {} failed: {}", name, name_, s.error().message());
      co_return fail(is_timeout(s.error()) ? te_errc::handshake_timeout : te_errc::handshake_socket);
    }
    wire::header h;
    h.type = wire::frame_type::desc_req;
    auto hb = wire::encode(h);
    if (!co_await detail::send_frame(s->fd(), hb, {})) co_return fail(te_errc::handshake_socket);
    wire::header_bytes rb;
    auto rr_ = co_await io::with_timeout(detail::recv_all(*s, rb), cfg.connect_timeout);
    if (!rr_) co_return fail(te_errc::handshake_timeout);
    auto rh = wire::decode(rb, cfg.max_slice_size);
    if (!rh || rh->type != wire::frame_type::desc_resp) co_return fail(te_errc::handshake_invalid_message);
    std::string body(rh->length, '\0');
    auto rb2 = co_await io::with_timeout(detail::recv_all(*s, std::as_writable_bytes(std::span(body))),
                                         cfg.connect_timeout);
    if (!rb2) co_return fail(te_errc::handshake_timeout);
    auto d = segment_desc::from_json(body);
    if (!d) co_return fail(te_errc::handshake_invalid_message);
    co_return std::move(*d);
  }

  // One request on a fresh connection: transport control messages are rare (a handshake per endpoint).
  task<result<std::string>> peer_request(const peer_info& pi, std::string transport_name, std::string msg) override {
    const segment_desc& d = *pi.desc;
    auto addr = io::address::parse(d.tcp_host + ":" + std::to_string(d.tcp_port));
    if (!addr) co_return fail(te_errc::invalid_argument);
    auto s = co_await io::tcp_stream::connect(*addr).with_timeout(cfg.connect_timeout);
    if (!s) co_return fail(is_timeout(s.error()) ? te_errc::handshake_timeout : te_errc::handshake_socket);
    std::string payload = std::move(transport_name);
    payload.push_back('\0');
    payload += msg;
    if (payload.size() > wire::max_control_payload) co_return fail(te_errc::invalid_argument);
    wire::header h;
    h.type = wire::frame_type::transport_req;
    h.incarnation = d.incarnation;
    h.length = payload.size();
    auto hb = wire::encode(h);
    if (!co_await detail::send_frame(s->fd(), hb, std::as_bytes(std::span(payload))))
      co_return fail(te_errc::handshake_socket);
    wire::header_bytes rb;
    auto r1 = co_await io::with_timeout(detail::recv_all(*s, rb), cfg.connect_timeout);
    if (!r1) co_return fail(is_timeout(r1.error()) ? te_errc::handshake_timeout : te_errc::handshake_socket);
    auto rh = wire::decode(rb, cfg.max_slice_size);
    if (!rh || rh->type != wire::frame_type::transport_resp) co_return fail(te_errc::handshake_invalid_message);
    if (rh->status != 0) co_return fail(std::error_code(rh->status, engine_category()));
    std::string answer(rh->length, '\0');
    auto r2 = co_await io::with_timeout(detail::recv_all(*s, std::as_writable_bytes(std::span(answer))),
                                        cfg.connect_timeout);
    if (!r2) co_return fail(is_timeout(r2.error()) ? te_errc::handshake_timeout : te_errc::handshake_socket);
    co_return answer;
  }

  task<result<segment_desc>> fetch_desc(std::string name_) {
    if (p2p) co_return co_await fetch_desc_p2p(std::move(name_));
    auto v = co_await meta->get(ram_key(name_));
    if (!v) co_return fail(v.error());
    if (!*v) co_return fail(errc::segment_not_found);
    auto d = segment_desc::from_json(**v);
    if (!d) co_return fail(te_errc::metadata_error);
    co_return std::move(*d);
  }

  std::shared_ptr<peer> find_peer(segment_id id) const {
    std::lock_guard lk(peers_mu);
    auto it = peers.find(id);
    return it == peers.end() ? nullptr : it->second;
  }

  void set_desc(peer& p, segment_desc d) {
    std::lock_guard lk(p.mu);
    if (p.desc && p.desc->incarnation != d.incarnation)
      log::info("engine {}: segment {} restarted (incarnation {:x} -> {:x})", name, p.name, p.desc->incarnation,
                d.incarnation);
    p.desc = std::make_shared<const segment_desc>(std::move(d));
    p.desc_gen.fetch_add(1, std::memory_order_release);
  }

  // Refetches a peer's descriptor (after a restart or a miss). Keeps the old one on failure.
  task<void> refresh(std::shared_ptr<peer> p) {
    if (p->self) co_return;
    auto d = co_await fetch_desc(p->name);
    if (d) set_desc(*p, std::move(*d));
  }

  // A request's peer and a snapshot of its descriptor that covers the target range (or is this
  // engine's own), found once by run_now and reused by run_request.
  struct resolved {
    std::shared_ptr<peer> p;
    std::shared_ptr<const segment_desc> desc;
  };

  // Finds the request's peer and a descriptor covering its range, fetching the descriptor again
  // once if ours may predate a registration. Sets `out` and returns false on a bad request.
  task<bool> resolve(const transfer_request& r, std::error_code& out, resolved& res) {
    if (!r.source || !(res.p = find_peer(r.segment))) {
      out = make_error_code(te_errc::invalid_argument);
      co_return false;
    }
    // One snapshot of the descriptor serves every transport tried (each copy takes the peer's lock).
    res.desc = res.p->snapshot();
    if (!res.p->self && !res.desc->find(r.target_offset, r.length)) {
      co_await refresh(res.p);
      res.desc = res.p->snapshot();
    }
    co_return true;
  }

  void count_success(std::size_t transport_index, const transfer_request& r, thread_state* ts = nullptr) {
    const std::size_t k = kind_of[transport_index];
    if (ts) {
      ts->requests[k].store(ts->requests[k].load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      ts->bytes[k].store(ts->bytes[k].load(std::memory_order_relaxed) + r.length, std::memory_order_relaxed);
      return;
    }
    auto& c = cells(k);
    c.requests.fetch_add(1, std::memory_order_relaxed);
    c.bytes.fetch_add(r.length, std::memory_order_relaxed);
  }

  // `res`: what run_now found out (empty when it could not resolve the request).
  task<void> run_request(const transfer_request& r, std::error_code& out, resolved res) {
    if (r.length == 0) co_return;
    if (!res.p && !co_await resolve(r, out, res)) co_return;
    auto& p = res.p;
    auto& desc = res.desc;
    std::error_code ec = make_error_code(te_errc::no_transport);
    // A second pass only after the peer said the range is not registered: our descriptor may predate
    // an unregister and a registration again of the same memory (a same-host peer's guard word says
    // so, shm_block), and the one fetched now covers it.
    for (int pass = 0; pass < 2; ++pass) {
      std::string_view prev;
      for (std::size_t i = 0; i < transports.size(); ++i) {
        transport& t = *transports[i];
        const peer_info info = p->info(i, desc);
        if (!t.can_serve(info, r)) continue;
        if (!prev.empty()) {
          counters_for(prev).fallbacks_from.fetch_add(1, std::memory_order_relaxed);
          log::info("engine {}: {} to {} failed ({}); falling back to {}", name, prev, p->name, ec.message(),
                    t.name());
        }
        ec = co_await t.execute(info, r);
        if (!ec) {
          count_success(i, r);
          out = {};
          co_return;
        }
        counters_for(t.name()).failures.fetch_add(1, std::memory_order_relaxed);
        if (ec == te_errc::stale_segment || ec == te_errc::peer_unreachable) {
          co_await refresh(p);
          desc = p->snapshot();
        }
        if (!may_fall_back(ec)) break;
        prev = t.name();
      }
      if (pass > 0 || p->self || ec != te_errc::address_not_registered) break;
      const std::shared_ptr<const segment_desc> before = desc;
      co_await refresh(p);
      desc = p->snapshot();
      if (desc == before || !desc->find(r.target_offset, r.length)) break;
    }
    // No transport took a range that the peer's latest descriptor does not list (a transport that
    // maps the peer's memory, shm, serves only listed ranges): the range is what is wrong.
    if (ec == te_errc::no_transport && !p->self && !desc->find(r.target_offset, r.length))
      ec = make_error_code(te_errc::address_not_registered);
    out = ec;
  }

  // A request the first transport that can serve it completes on the spot (local, shm): done here,
  // with no coroutine. false: it needs run_request (a transport that waits, a descriptor to fetch
  // again, or a failure, which run_request retries with its fallbacks and counts); `res` then holds
  // the peer and descriptor found, when they cover the request, so that it does not look again.
  // On an engine thread (`ts`), the peer and descriptor come from that thread's cache. Elsewhere,
  // `last` holds those the batch's previous request used (a batch mostly targets one segment); it
  // is emptied when a request goes to run_request, which may fetch the descriptor again.
  bool run_now(const transfer_request& r, std::error_code& out, resolved& res, resolved& last, thread_state* ts) {
    if (r.length == 0) return true;
    if (!r.source) return false;
    const std::shared_ptr<peer>* pp = &last.p;
    const std::shared_ptr<const segment_desc>* dp = &last.desc;
    if (ts) {
      const cached_peer_entry* e = cached_peer(*ts, r.segment);
      if (!e) return false;
      pp = &e->p;
      dp = &e->desc;
    } else if (!last.p || last.p->id != r.segment) {
      last.p = find_peer(r.segment);
      if (!last.p) return false;
      last.desc = last.p->snapshot();
    }
    const peer& p = **pp;
    if (!p.self && !(*dp)->find(r.target_offset, r.length)) {
      if (!ts) last = {};
      return false;
    }
    peer_info info{p.id, &p.name, p.self, *dp, nullptr};
    for (std::size_t i = 0; i < transports.size(); ++i) {
      transport& t = *transports[i];
      info.state = p.states[i].get();
      if (!t.can_serve(info, r)) continue;
      const std::optional<std::error_code> ec = t.execute_now(info, r);
      if (ec && !*ec) {
        count_success(i, r, ts);
        out = {};
        return true;
      }
      break;
    }
    if (ts)
      res = resolved{*pp, *dp};
    else
      res = std::exchange(last, resolved{});
    return false;
  }

  // The requests run_now could not finish, with what it found out about each.
  using pending = std::vector<std::pair<std::size_t, resolved>>;

  // Runs every request that can complete on the spot. What is left needs run_rest, under the
  // batch's deadline; a batch of local and shm copies thus never arms a timer. The timer (a timeout
  // SQE, its cancel, two completions and a when_any) cost store_bench's 64 KiB shm gets about 0.25 us
  // of CPU in 1.4, and its puts 0.6 in 4.3.
  pending run_inline(std::span<const transfer_request> batch, std::vector<std::error_code>& errors) {
    pending rest;
    resolved last;
    thread_state* ts = this_thread_state();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      resolved res;
      if (!run_now(batch[i], errors[i], res, last, ts)) rest.emplace_back(i, std::move(res));
    }
    return rest;
  }

  task<void> run_rest(std::span<const transfer_request> batch, std::vector<std::error_code>& errors, pending rest) {
    if (rest.size() == 1) {
      co_await run_request(batch[rest[0].first], errors[rest[0].first], std::move(rest[0].second));
      co_return;
    }
    std::vector<task<void>> tasks;
    tasks.reserve(rest.size());
    for (auto& [i, res] : rest) tasks.push_back(run_request(batch[i], errors[i], std::move(res)));
    co_await coro::when_all(std::move(tasks));
  }

  // After a deadline: whatever still owes us responses is ended, so a stalled peer cannot hold later
  // batches hostage.
  void abort_peers(std::span<const transfer_request> batch, const std::vector<std::error_code>& errors) {
    std::set<segment_id> seen;
    for (std::size_t i = 0; i < batch.size(); ++i) {
      if (!is_timeout(errors[i]) || !seen.insert(batch[i].segment).second) continue;
      auto p = find_peer(batch[i].segment);
      if (!p) continue;
      for (std::size_t k = 0; k < transports.size(); ++k) transports[k]->abort(p->info(k));
    }
  }

  task<std::error_code> send_notify(std::shared_ptr<peer> p, std::string msg) {
    if (p->self) {
      {
        std::lock_guard lk(notif_mu);
        if (notifs.size() >= max_queued_notifications) co_return make_error_code(te_errc::too_many_requests);
        notifs.push_back(notification{name, std::move(msg)});
      }
      notif_event.set();
      co_return std::error_code{};
    }
    if (!tcp) co_return make_error_code(te_errc::no_transport);
    std::string payload = name;
    payload.push_back('\0');
    payload += msg;
    if (payload.size() > wire::max_control_payload) co_return make_error_code(te_errc::invalid_argument);
    std::size_t ti = 0;
    while (transports[ti].get() != tcp) ++ti;
    const peer_info info = p->info(ti);
    co_return co_await tcp->notify(info, std::move(payload));
  }
};

// ---------------------------------------------------------------------------------------------

engine::engine(std::unique_ptr<impl> p) : p_(std::move(p)) {}

result<std::unique_ptr<engine>> engine::create(engine_config cfg) {
  if (cfg.threads == 0 || cfg.tcp_connections_per_peer == 0 || cfg.tcp_slice_size == 0 ||
      cfg.tcp_slice_size > cfg.max_slice_size || cfg.transports.empty())
    return fail(te_errc::invalid_argument);
  auto p = std::make_unique<impl>();
  p->cfg = std::move(cfg);
  auto& c = p->cfg;
  p->p2p = (c.metadata == "P2PHANDSHAKE" || c.metadata == "p2p");
  if (!p->p2p) {
    auto m = make_metadata_store(c.metadata);
    if (!m) return fail(m.error());
    p->meta = std::move(*m);
  }
  auto addr = io::address::parse(c.listen_host + ":" + std::to_string(c.listen_port));
  if (!addr) return fail(te_errc::invalid_argument);
  auto l = io::tcp_listener::bind(*addr);
  // A process restarted on its old port can find it still taken for a moment: the previous
  // process's ring is torn down asynchronously by the kernel and holds the listener until then.
  for (int tries = 0; !l && c.listen_port != 0 && l.error() == std::errc::address_in_use && tries < 60; ++tries) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    l = io::tcp_listener::bind(*addr);
  }
  if (!l) {
    log::error("engine: cannot listen on {}: {}", addr->to_string(), l.error().message());
    return fail(l.error());
  }
  p->port = l->local_address().port();
  p->host = c.listen_host == "0.0.0.0" ? "127.0.0.1" : c.listen_host;
  p->listener.emplace(std::move(*l));
  p->name = c.local_segment_name.empty() ? p->host + ":" + std::to_string(p->port) : c.local_segment_name;
  p->pool_ = std::make_unique<io::reactor_pool>(c.threads);
  for (std::size_t i = 0; i < c.threads; ++i) p->tstates.push_back(std::make_unique<impl::thread_state>());
  p->pool_->spawn(0, p->accept_loop().with_stop_token(p->stop_src.get_token()));

  // This engine as a segment of its own (transfers to self take the local path).
  p->make_transports();
  for (const auto& t : p->transports) p->kind_of.push_back(impl::kind_index(t->name()));
  p->peers.emplace(0, p->make_peer(0, p->name, /*self=*/true, p->build_desc()));
  p->by_name.emplace(p->name, 0);

  if (p->meta) {
    impl* raw = p.get();
    auto publish = [](impl* self_) -> task<result<void>> {
      co_return co_await self_->meta->put(ram_key(self_->name), self_->build_desc().to_json(),
                                         put_options{.lease_ttl = self_->cfg.descriptor_lease});
    };
    auto r = p->pool_->block_on(0, publish(raw));
    if (!r) {
      log::error("engine {}: cannot publish its descriptor to {}: {}", p->name, p->meta->describe(),
                 r.error().message());
      p->stopping = true;
      p->stop_src.request_stop();
      for (auto& t : p->transports) t->shutdown();
      p->pool_->stop_and_join();
      return fail(te_errc::metadata_error);
    }
  }
  log::info("engine {} up: tcp {}:{}, metadata {}, transports {}", p->name, p->host, p->port,
            p->meta ? p->meta->describe() : std::string("P2PHANDSHAKE"), fmt::join(p->cfg.transports, ","));
  return std::unique_ptr<engine>(new engine(std::move(p)));
}

engine::~engine() {
  auto& p = *p_;
  if (p.meta) {
    auto unpublish = [](impl* self) -> task<result<void>> { co_return co_await self->meta->remove(ram_key(self->name)); };
    (void)p.pool_->block_on(0, unpublish(&p));
  }
  p.stopping = true;
  p.stop_src.request_stop();
  {
    std::lock_guard lk(p.server_mu);
    for (int fd : p.server_fds) ::shutdown(fd, SHUT_RDWR);
  }
  {
    std::lock_guard lk(p.peers_mu);
    for (auto& [_, pe] : p.peers)
      for (std::size_t k = 0; k < p.transports.size(); ++k) p.transports[k]->close_peer(pe->info(k));
  }
  for (auto& t : p.transports) t->shutdown();
  p.pool_->stop_and_join();
  // Connections are gone with their reactors; drop them before the pool's rings disappear.
  p.forget_peer_caches();
  p.peers.clear();
  p.listener.reset();
  std::lock_guard lk(p.shm_mu);
  for (auto& [_, b] : p.shm_blocks) shm_free(b);
  for (auto& [a, n] : p.retired) ::munmap(a, n);
}

const std::string& engine::segment_name() const noexcept { return p_->name; }
std::uint64_t engine::incarnation() const noexcept { return p_->incarnation_; }
std::uint16_t engine::port() const noexcept { return p_->port; }
const engine_config& engine::config() const noexcept { return p_->cfg; }

result<void> engine::register_memory(void* addr, std::size_t length, std::string_view loc, bool remote) {
  auto l = location::parse(loc);
  if (!l) return fail(l.error());
  registered_buffer b;
  b.addr = reinterpret_cast<std::uint64_t>(addr);
  b.length = length;
  b.where = *l;
  b.remote_accessible = remote;
  {
    std::lock_guard lk(p_->shm_mu);
    if (auto it = p_->shm_blocks.find(b.addr); it != p_->shm_blocks.end() && it->second.size >= length) {
      b.shm_fd = it->second.fd;
      b.shm_size = it->second.mapped;
      b.shm_id = it->second.id;
      b.shm_guard = it->second.guard;
      b.shm_reg = ++p_->next_shm_reg;
    }
  }
  // The guard takes this registration's number before the registry holds it: a descriptor that
  // names the registration can be published from then on (by a publication already under way), and
  // a same-host peer that reads it must find the guard set. Restored if the registration fails (an
  // overlap leaves an earlier registration of the block in force, with its own number).
  std::uint64_t guard_before = 0;
  if (b.shm_guard != 0) {
    guard_before = shm_guard_word(b).load(std::memory_order_relaxed);
    set_shm_guard(b, b.shm_reg);
  }
  if (auto r = p_->registry_.add(b); !r) {
    if (b.shm_guard != 0) set_shm_guard(b, guard_before);
    return r;
  }
  for (std::size_t k = 0; k < p_->transports.size(); ++k) {
    if (auto r = p_->transports[k]->on_register(b); !r) {
      while (k-- > 0) p_->transports[k]->on_unregister(b);
      (void)p_->registry_.remove(b.addr);
      if (b.shm_guard != 0) set_shm_guard(b, guard_before);
      return r;
    }
  }
  p_->schedule_publish();
  return ok();
}

result<void> engine::unregister_memory(void* addr) {
  auto r = p_->registry_.remove(reinterpret_cast<std::uint64_t>(addr));
  if (!r) return fail(r.error());
  // From here a same-host peer's copy through an older descriptor fails: its check before the copy
  // sees 0, or its check after it does (and reports the copy as failed).
  if (r->shm_guard != 0) set_shm_guard(*r, 0);
  for (auto& t : p_->transports) t->on_unregister(*r);
  p_->schedule_publish();
  return ok();
}

result<void*> engine::allocate_shared(std::size_t length, bool hugepages) {
  auto b = shm_allocate(length, hugepages);
  if (!b) return fail(b.error());
  {
    std::lock_guard lk(p_->shm_mu);
    b->id = ++p_->next_shm_id;
    p_->shm_blocks.emplace(reinterpret_cast<std::uint64_t>(b->addr), *b);
  }
  if (auto r = register_memory(b->addr, length); !r) {
    std::lock_guard lk(p_->shm_mu);
    p_->shm_blocks.erase(reinterpret_cast<std::uint64_t>(b->addr));
    shm_free(*b);
    return fail(r.error());
  }
  return b->addr;
}

result<void> engine::free_shared(void* addr) {
  shm_block b;
  {
    std::lock_guard lk(p_->shm_mu);
    auto it = p_->shm_blocks.find(reinterpret_cast<std::uint64_t>(addr));
    if (it == p_->shm_blocks.end()) return fail(te_errc::address_not_registered);
    b = it->second;
    p_->shm_blocks.erase(it);
  }
  // Unregistered first (the caller may have done it already): the transports drop the buffer, the
  // guard goes to 0, and a new descriptor goes out.
  (void)unregister_memory(addr);
  // Replaces the block's pages with a reservation in one step (no window where another mapping
  // could take the range), then closes the memfd: its memory goes once no peer maps it.
  void* r = ::mmap(b.addr, b.mapped, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED | MAP_NORESERVE, -1, 0);
  if (r == MAP_FAILED) {
    shm_free(b);
    return ok();
  }
  if (b.fd >= 0) ::close(b.fd);
  std::lock_guard lk(p_->shm_mu);
  p_->retired.emplace_back(b.addr, b.mapped);
  return ok();
}

task<result<segment_id>> engine::open_segment(std::string name) {
  auto& p = *p_;
  {
    std::lock_guard lk(p.peers_mu);
    if (auto it = p.by_name.find(name); it != p.by_name.end()) co_return it->second;
  }
  coro::executor* caller = coro::current_executor();
  if (!p.on_engine_thread()) co_await p.pool_->at(p.pick_reactor()).schedule();
  auto d = co_await p.fetch_desc(name);
  if (!d) {
    co_await hop_to{caller, {}};
    co_return fail(d.error());
  }
  segment_id id;
  {
    std::lock_guard lk(p.peers_mu);
    if (auto it = p.by_name.find(name); it != p.by_name.end()) {
      id = it->second;
    } else {
      id = p.next_segment++;
      auto pe = p.make_peer(id, name, /*self=*/false, std::move(*d));
      p.peers.emplace(id, pe);
      p.by_name.emplace(name, id);
    }
  }
  co_await hop_to{caller, {}};
  co_return id;
}

result<void> engine::close_segment(segment_id id) {
  if (id == 0) return ok();
  std::shared_ptr<peer> pe;
  {
    std::lock_guard lk(p_->peers_mu);
    auto it = p_->peers.find(id);
    if (it == p_->peers.end()) return fail(te_errc::invalid_argument);
    pe = it->second;
    p_->by_name.erase(pe->name);
    p_->peers.erase(it);
    p_->peers_gen.fetch_add(1, std::memory_order_release);
  }
  for (std::size_t k = 0; k < p_->transports.size(); ++k) p_->transports[k]->close_peer(pe->info(k));
  return ok();
}

result<segment_desc> engine::segment_descriptor(segment_id id) const {
  if (id == 0) return p_->build_desc();
  auto pe = p_->find_peer(id);
  if (!pe) return fail(te_errc::invalid_argument);
  return *pe->snapshot();
}

io::reactor& engine::next_reactor() noexcept { return p_->pool_->at(p_->pick_reactor()); }
io::reactor_pool& engine::reactors() noexcept { return *p_->pool_; }

task<batch_result> engine::transfer(std::span<const transfer_request> batch, batch_options opts) {
  auto& p = *p_;
  batch_result out;
  out.errors.assign(batch.size(), std::error_code{});
  if (batch.size() > p.cfg.max_batch_size) {
    for (auto& e : out.errors) e = make_error_code(te_errc::too_many_requests);
    co_return out;
  }
  coro::executor* caller = coro::current_executor();
  // A caller on any reactor (the engine's or its own) runs the batch where it is: local and shm
  // copies then cost no thread hop at all, and tcp slices hop only to their connection's reactor. A
  // plain thread has no reactor for the deadline timer, so it borrows one of the engine's.
  if (!io::reactor::current()) co_await p.pool_->at(p.pick_reactor()).schedule();
  // A copy done on the spot cannot be interrupted by a timer anyway: only what waits is raced
  // against the deadline.
  if (auto rest = p.run_inline(batch, out.errors); !rest.empty()) {
    auto deadline = opts.deadline.value_or(p.cfg.batch_deadline);
    auto r = co_await io::with_timeout(p.run_rest(batch, out.errors, std::move(rest)), deadline);
    if (!r && is_timeout(r.error())) {
      for (auto& e : out.errors)
        if (is_canceled(e)) e = std::make_error_code(std::errc::timed_out);
      p.abort_peers(batch, out.errors);
    }
  }
  if (!opts.notify.empty()) {
    std::set<segment_id> targets;
    for (std::size_t i = 0; i < batch.size(); ++i)
      if (!out.errors[i]) targets.insert(batch[i].segment);
    for (segment_id s : targets) {
      auto pe = p.find_peer(s);
      if (!pe) continue;
      if (auto ec = co_await p.send_notify(pe, opts.notify))
        log::warn("engine {}: notification to {} failed: {}", p.name, pe->name, ec.message());
    }
  }
  co_await hop_to{caller, {}};
  co_return out;
}

task<result<void>> engine::write(segment_id seg, const void* source, std::uint64_t target_offset,
                                 std::uint64_t length) {
  transfer_request r{opcode::write, const_cast<void*>(source), seg, target_offset, length};
  auto res = co_await transfer(std::span(&r, 1));
  if (auto ec = res.first_error()) co_return fail(ec);
  co_return ok();
}

task<result<void>> engine::read(segment_id seg, void* dest, std::uint64_t target_offset, std::uint64_t length) {
  transfer_request r{opcode::read, dest, seg, target_offset, length};
  auto res = co_await transfer(std::span(&r, 1));
  if (auto ec = res.first_error()) co_return fail(ec);
  co_return ok();
}

result<batch_id> engine::submit(std::vector<transfer_request> batch, batch_options opts) {
  if (batch.size() > p_->cfg.max_batch_size) return fail(te_errc::too_many_requests);
  auto st = std::make_shared<impl::batch_state>();
  st->reqs = std::move(batch);
  batch_id id;
  {
    std::lock_guard lk(p_->batches_mu);
    id = p_->next_batch++;
    p_->batches.emplace(id, st);
  }
  auto run = [](engine* self, std::shared_ptr<impl::batch_state> s, batch_options o) -> task<void> {
    s->result = co_await self->transfer(s->reqs, std::move(o));
    s->done.store(true, std::memory_order_release);
    s->done.notify_all();
  };
  p_->pool_->spawn(p_->pick_reactor(), run(this, st, std::move(opts)));
  return id;
}

result<transfer_status> engine::status(batch_id id, std::size_t index) const {
  std::shared_ptr<impl::batch_state> st;
  {
    std::lock_guard lk(p_->batches_mu);
    auto it = p_->batches.find(id);
    if (it == p_->batches.end()) return fail(te_errc::invalid_argument);
    st = it->second;
  }
  if (index >= st->reqs.size()) return fail(te_errc::invalid_argument);
  if (!st->done.load(std::memory_order_acquire)) return transfer_status::pending;
  const auto& e = st->result.errors[index];
  if (!e) return transfer_status::completed;
  if (is_timeout(e)) return transfer_status::timeout;
  if (is_canceled(e)) return transfer_status::canceled;
  return transfer_status::failed;
}

result<batch_result> engine::wait(batch_id id) {
  std::shared_ptr<impl::batch_state> st;
  {
    std::lock_guard lk(p_->batches_mu);
    auto it = p_->batches.find(id);
    if (it == p_->batches.end()) return fail(te_errc::invalid_argument);
    st = it->second;
  }
  while (!st->done.load(std::memory_order_acquire)) st->done.wait(false, std::memory_order_acquire);
  return st->result;
}

result<void> engine::free_batch(batch_id id) {
  std::lock_guard lk(p_->batches_mu);
  auto it = p_->batches.find(id);
  if (it == p_->batches.end()) return fail(te_errc::invalid_argument);
  if (!it->second->done.load(std::memory_order_acquire)) return fail(te_errc::batch_busy);
  p_->batches.erase(it);
  return ok();
}

task<result<void>> engine::notify(segment_id seg, std::string message) {
  auto pe = p_->find_peer(seg);
  if (!pe) co_return fail(te_errc::invalid_argument);
  coro::executor* caller = coro::current_executor();
  auto ec = co_await p_->send_notify(pe, std::move(message));
  co_await hop_to{caller, {}};
  if (ec) co_return fail(ec);
  co_return ok();
}

std::optional<notification> engine::try_next_notification() {
  std::lock_guard lk(p_->notif_mu);
  if (p_->notifs.empty()) return std::nullopt;
  notification n = std::move(p_->notifs.front());
  p_->notifs.pop_front();
  return n;
}

task<result<notification>> engine::next_notification() {
  for (;;) {
    {
      std::lock_guard lk(p_->notif_mu);
      if (!p_->notifs.empty()) {
        notification n = std::move(p_->notifs.front());
        p_->notifs.pop_front();
        co_return n;
      }
      p_->notif_event.reset();
    }
    auto w = co_await p_->notif_event.wait();
    if (!w) co_return fail(w.error());
  }
}

transport_counts engine::counters(std::string_view transport) const {
  const std::size_t k = impl::kind_index(transport);
  const transport_counters& c = p_->cells(k);
  transport_counts out;
  out.requests = c.requests.load(std::memory_order_relaxed);
  out.bytes = c.bytes.load(std::memory_order_relaxed);
  out.failures = c.failures.load(std::memory_order_relaxed);
  out.fallbacks_from = c.fallbacks_from.load(std::memory_order_relaxed);
  out.zero_copy_bytes = c.zero_copy_bytes.load(std::memory_order_relaxed);
  for (const auto& ts : p_->tstates) {
    out.requests += ts->requests[k].load(std::memory_order_relaxed);
    out.bytes += ts->bytes[k].load(std::memory_order_relaxed);
  }
  return out;
}

bool engine::usable(std::string_view transport) const {
  for (const auto& t : p_->transports)
    if (t->name() == transport) return t->usable();
  return false;
}

std::string engine::metrics_text() const {
  std::string out;
  auto line = [&](const char* metric, std::string_view t, std::uint64_t v) {
    out += fmt::format("yutu_transfer_{}{{segment=\"{}\",transport=\"{}\"}} {}\n", metric, p_->name, t, v);
  };
  for (std::string_view t : {"local", "shm", "tcp", "rdma"}) {
    const transport_counts c = counters(t);
    line("requests_total", t, c.requests);
    line("bytes_total", t, c.bytes);
    line("failures_total", t, c.failures);
    line("fallbacks_total", t, c.fallbacks_from);
    if (t == "tcp") line("zero_copy_bytes_total", t, c.zero_copy_bytes);
  }
  return out;
}

}  // namespace yutu::transfer
