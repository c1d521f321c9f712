// The store RPC server (see rpc_server.hpp): accept loop, per-connection reader, request handlers,
// coalesced response writes.
#include "yutu/store/rpc_server.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <exception>
#include <stop_token>
#include <utility>

#include <fmt/format.h>

#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_mutex.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/async_semaphore.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/log.hpp"

namespace yutu::store {

using rpc::op;

namespace {
constexpr std::size_t recv_chunk = 64 * 1024;
// The reader stops taking requests while more than this many response bytes wait to be sent.
constexpr std::size_t out_high_water = 4 << 20;
}  // namespace

struct rpc_server::state {
  io::tcp_listener listener;
  rpc_server_options opts;
  std::stop_source accept_stop;
  async_scope conns;  // one task per connection; its stop token stops their readers

  std::atomic<std::uint64_t> accepted{0}, open{0}, rejected{0}, requests{0}, bad_requests{0}, protocol_closes{0};
  std::atomic<std::uint64_t> by_op[rpc::op_max + 1] = {};
  std::atomic<std::uint64_t> failed_by_op[rpc::op_max + 1] = {};

  void request_stop() noexcept {
    accept_stop.request_stop();
    conns.request_stop();
  }
};

namespace {

struct connection {
  rpc_server::state* st;
  master_service* svc;
  io::reactor* home;
  io::tcp_stream s;
  std::string out;      // responses queued, not yet being sent
  std::string sending;  // the batch a flusher is sending
  async_mutex write_mu;
  async_event drained;  // pulsed after each send, for a reader waiting for out to shrink
  async_semaphore slots;
  bool dispatching = false;  // the reader is handing buffered frames out: it flushes afterwards
  bool broken = false;       // sending failed: responses are dropped and the reader ends

  connection(rpc_server::state* st_, master_service* svc_, io::reactor* home_, io::tcp_stream s_)
      : st(st_), svc(svc_), home(home_), s(std::move(s_)), slots(st_->opts.max_in_flight) {}
};

task<result<void>> send_bytes(int fd, std::string_view bytes, std::chrono::milliseconds timeout) {
  return io::send_all_within(fd, std::as_bytes(std::span(bytes.data(), bytes.size())), timeout);
}

// Sends everything queued on `c`; the caller holds c.write_mu (adopted here).
task<void> flush_locked(connection& c) {
  async_mutex_lock guard(c.write_mu);
  while (!c.out.empty() && !c.broken) {
    std::swap(c.out, c.sending);
    auto r = co_await send_bytes(c.s.fd(), c.sending, c.st->opts.send_timeout);
    c.sending.clear();
    if (!r) {
      log::debug("rpc server: send failed ({}); closing the connection", r.error().message());
      c.broken = true;
      c.out.clear();
      ::shutdown(c.s.fd(), SHUT_RDWR);  // ends the reader's recv
    }
    c.drained.set();
    c.drained.reset();
  }
}

task<void> flush(connection& c) {
  if (c.broken || !c.write_mu.try_lock()) co_return;  // the holder sends what we queued
  co_await flush_locked(c);
}

template <op O>
bool failed(const result<rpc::response_t<O>>& r) {
  if (!r) return true;
  if constexpr (requires { r->front().has_value(); }) {
    for (const auto& item : *r)
      if (!item) return true;
  }
  return false;
}

template <op O>
void respond(connection& c, std::uint64_t id, const result<rpc::response_t<O>>& r) {
  if (failed<O>(r)) c.st->failed_by_op[static_cast<std::size_t>(O)].fetch_add(1, std::memory_order_relaxed);
  if (!c.broken) rpc::append_response<O>(c.out, id, r);
}

// Calls the service for one request. Its result is converted to the wire shape result<response>.
task<void> call_service(connection& c, std::uint64_t id, rpc::any_request& req) {
  master_service& s = *c.svc;
  auto home = [&c] { return c.home->running_in_this_thread(); };
  switch (req.kind) {
#define YUTU_RPC_CASE(O, Body, ...)                                     \
  case op::O: {                                                         \
    auto& b = std::get<Body>(req.body);                                 \
    result<rpc::response_t<op::O>> r = co_await s.O(__VA_ARGS__);       \
    if (!home()) co_await c.home->schedule();                           \
    respond<op::O>(c, id, r);                                           \
    co_return;                                                          \
  }
    YUTU_RPC_CASE(mount_segment, rpc::mount_segment_request, std::move(b.client), std::move(b.segment))
    YUTU_RPC_CASE(unmount_segment, rpc::unmount_segment_request, std::move(b.client), std::move(b.segment_name))
    YUTU_RPC_CASE(ping, rpc::ping_request, std::move(b.client))
    YUTU_RPC_CASE(put_start, rpc::put_start_request, std::move(b.client), std::move(b.key), b.size, std::move(b.config))
    YUTU_RPC_CASE(put_end, rpc::client_key_request, std::move(b.client), std::move(b.key))
    YUTU_RPC_CASE(put_revoke, rpc::client_key_request, std::move(b.client), std::move(b.key))
    YUTU_RPC_CASE(upsert_start, rpc::put_start_request, std::move(b.client), std::move(b.key), b.size,
                  std::move(b.config))
    YUTU_RPC_CASE(batch_put_start, rpc::batch_put_start_request, std::move(b.client), std::move(b.keys),
                  std::move(b.sizes), std::move(b.config))
    YUTU_RPC_CASE(batch_put_end, rpc::client_keys_request, std::move(b.client), std::move(b.keys))
    YUTU_RPC_CASE(batch_put_revoke, rpc::client_keys_request, std::move(b.client), std::move(b.keys))
    YUTU_RPC_CASE(get_replica_list, rpc::key_request, std::move(b.key))
    YUTU_RPC_CASE(batch_get_replica_list, rpc::keys_request, std::move(b.keys))
    YUTU_RPC_CASE(match_prefix, rpc::keys_request, std::move(b.keys))
    YUTU_RPC_CASE(exist, rpc::key_request, std::move(b.key))
    YUTU_RPC_CASE(batch_exist, rpc::keys_request, std::move(b.keys))
    YUTU_RPC_CASE(get_size, rpc::key_request, std::move(b.key))
    YUTU_RPC_CASE(remove, rpc::remove_request, std::move(b.key), b.force)
    YUTU_RPC_CASE(batch_remove, rpc::batch_remove_request, std::move(b.keys), b.force)
    YUTU_RPC_CASE(remove_all, rpc::remove_all_request, b.force)
    YUTU_RPC_CASE(batch_put_commit, rpc::batch_put_commit_request, std::move(b.client), std::move(b.placeholders),
                  std::move(b.keys))
#undef YUTU_RPC_CASE
  }
}

task<void> handle(connection& c, std::uint64_t id, rpc::any_request req) {
  const op kind = req.kind;
  bool threw = false;
  try {
    co_await call_service(c, id, req);
  } catch (const std::exception& e) {
    log::error("rpc server: {} threw: {}", rpc::op_name(kind), e.what());
    threw = true;
  }
  if (threw) {
    if (!c.home->running_in_this_thread()) co_await c.home->schedule();
    c.st->failed_by_op[static_cast<std::size_t>(kind)].fetch_add(1, std::memory_order_relaxed);
    if (!c.broken) rpc::append_error(c.out, rpc::response_type(kind), id, make_error_code(errc::internal_error));
  }
  c.slots.release();
  if (!c.dispatching) co_await flush(c);
}

// Queues an error response to a request that never reached the service.
void reject(connection& c, std::uint16_t type, std::uint64_t id, std::error_code ec) {
  c.st->bad_requests.fetch_add(1, std::memory_order_relaxed);
  if (!c.broken) rpc::append_error(c.out, type, id, ec);
}

task<void> serve_connection(connection& c, async_scope& handlers) {
  rpc_server::state& st = *c.st;
  const rpc_server_options& o = st.opts;
  std::stop_token stop = co_await coro::get_stop_token();
  rpc::frame_buffer in;
  std::optional<io::clock::time_point> frame_began;
  for (;;) {
    // Hand out every complete frame buffered, then send what they answered at once.
    c.dispatching = true;
    bool close = false;
    for (;;) {
      auto f = in.next(o.limits);
      if (!f) {
        log::warn("rpc server: malformed frame from {}; closing the connection", c.s.peer_address().to_string());
        st.protocol_closes.fetch_add(1, std::memory_order_relaxed);
        close = true;
        break;
      }
      if (!*f) break;
      frame_began.reset();
      const rpc::header& h = (*f)->h;
      st.requests.fetch_add(1, std::memory_order_relaxed);
      auto kind = rpc::check_request(h);
      if (!kind) {
        // A foreign version's types may mean anything: the neutral error_type answers it.
        auto o_ = rpc::op_of(h.type);
        bool typed = o_ && !rpc::is_response(h.type) && kind.error() != errc::invalid_version;
        reject(c, typed ? rpc::response_type(*o_) : rpc::error_type, h.id, kind.error());
        continue;
      }
      st.by_op[static_cast<std::size_t>(*kind)].fetch_add(1, std::memory_order_relaxed);
      auto req = rpc::decode_request(*kind, (*f)->payload, o.limits);
      if (!req) {
        reject(c, rpc::response_type(*kind), h.id, req.error());
        continue;
      }
      if (!c.slots.try_acquire()) {
        // Back-pressure: the frame stays decoded in `req`; nothing more is read meanwhile.
        c.dispatching = false;
        if (!c.out.empty() && c.write_mu.try_lock()) handlers.spawn(flush_locked(c));
        if (auto r = co_await c.slots.acquire(); !r) {
          close = true;
          break;
        }
        c.dispatching = true;
      }
      handlers.spawn(handle(c, h.id, std::move(*req)).with_stop_token(std::stop_token{}));
    }
    c.dispatching = false;
    if (!c.out.empty() && c.write_mu.try_lock()) handlers.spawn(flush_locked(c));
    if (close || c.broken) break;
    while (c.out.size() > out_high_water && !c.broken) {
      if (auto r = co_await c.drained.wait(); !r) break;
    }
    if (stop.stop_requested() || c.broken) break;

    // Read more. A partial frame must complete within frame_timeout of its first byte.
    std::optional<std::chrono::nanoseconds> limit;
    if (in.partial()) {
      if (!frame_began) frame_began = io::clock::now();
      limit = *frame_began + o.frame_timeout - io::clock::now();
      if (limit->count() <= 0) limit = std::chrono::nanoseconds(1);
    } else if (o.idle_timeout.count() > 0 && c.slots.available() == o.max_in_flight) {
      limit = o.idle_timeout;
    }
    auto recv = c.s.recv(in.prepare(recv_chunk));
    if (limit) std::move(recv).with_timeout(*limit);
    auto n = co_await recv;
    if (!n) {
      if (is_timeout(n.error()) && in.partial()) {
        log::warn("rpc server: {} left a frame half-sent for {} ms; closing the connection",
                  c.s.peer_address().to_string(), o.frame_timeout.count());
        st.protocol_closes.fetch_add(1, std::memory_order_relaxed);
      } else if (!is_canceled(n.error()) && !is_timeout(n.error())) {
        log::debug("rpc server: recv: {}", n.error().message());
      }
      break;
    }
    if (*n == 0) break;  // the client closed its side
    in.commit(*n);
  }
  // Requests being handled finish and are answered; then the connection closes.
  co_await handlers.join();
  if (!c.out.empty() && !c.broken && c.write_mu.try_lock()) co_await flush_locked(c);
}

task<void> run_connection(rpc_server::state* st, master_service* svc, io::reactor* home, io::tcp_stream s) {
  co_await home->schedule();
  {
    connection c(st, svc, home, std::move(s));
    async_scope handlers;
    co_await serve_connection(c, handlers);
    ::shutdown(c.s.fd(), SHUT_RDWR);
  }
  st->open.fetch_sub(1, std::memory_order_relaxed);
}

void enable_keepalive(const io::tcp_stream& s) {
  // Finds clients whose host vanished without a FIN or RST (their connection would idle forever).
  (void)io::detail::set_int_option(s.fd(), SOL_SOCKET, SO_KEEPALIVE, 1);
  (void)io::detail::set_int_option(s.fd(), IPPROTO_TCP, TCP_KEEPIDLE, 60);
  (void)io::detail::set_int_option(s.fd(), IPPROTO_TCP, TCP_KEEPINTVL, 10);
  (void)io::detail::set_int_option(s.fd(), IPPROTO_TCP, TCP_KEEPCNT, 3);
}

}  // namespace

rpc_server::rpc_server(std::unique_ptr<state> s) noexcept : s_(std::move(s)) {}
rpc_server::rpc_server(rpc_server&&) noexcept = default;
rpc_server& rpc_server::operator=(rpc_server&&) noexcept = default;
rpc_server::~rpc_server() = default;

result<rpc_server> rpc_server::bind(const io::address& at, rpc_server_options opts) {
  if (opts.max_in_flight == 0) return fail(errc::invalid_params);
  auto l = io::tcp_listener::bind(at);
  if (!l) return fail(l.error());
  auto st = std::make_unique<state>();
  st->listener = std::move(*l);
  st->opts = std::move(opts);
  return rpc_server(std::move(st));
}

io::address rpc_server::local_address() const { return s_->listener.local_address(); }

void rpc_server::stop() noexcept { s_->request_stop(); }

task<void> rpc_server::serve(master_service& svc, io::reactor_pool& pool) {
  state* st = s_.get();
  std::stop_token outer = co_await coro::get_stop_token();
  struct stopper {
    state* st;
    void operator()() noexcept { st->request_stop(); }
  };
  std::stop_callback<stopper> on_outer_stop(outer, stopper{st});
  std::size_t next = 0;
  for (;;) {
    auto s = co_await st->listener.accept().with_stop_token(st->accept_stop.get_token());
    if (!s) {
      if (is_canceled(s.error())) break;
      if (s.error() == std::errc::too_many_files_open || s.error() == std::errc::too_many_files_open_in_system ||
          s.error() == std::errc::no_buffer_space || s.error() == std::errc::not_enough_memory) {
        log::warn("rpc server: accept: {}; retrying", s.error().message());
        (void)co_await io::sleep_for(std::chrono::milliseconds(50)).with_stop_token(st->accept_stop.get_token());
        continue;
      }
      if (s.error() == std::errc::connection_aborted || s.error() == std::errc::interrupted) continue;
      log::error("rpc server: accept: {}; no longer accepting", s.error().message());
      break;
    }
    st->accepted.fetch_add(1, std::memory_order_relaxed);
    if (st->open.load(std::memory_order_relaxed) >= st->opts.max_connections) {
      st->rejected.fetch_add(1, std::memory_order_relaxed);
      continue;  // closed as `s` goes
    }
    enable_keepalive(*s);
    st->open.fetch_add(1, std::memory_order_relaxed);
    io::reactor* home = &pool.at(next++ % pool.size());
    st->conns.spawn(run_connection(st, &svc, home, std::move(*s)));
  }
  st->listener.close();
  st->conns.request_stop();
  co_await st->conns.join();
}

rpc_server_stats rpc_server::stats() const noexcept {
  const state& st = *s_;
  rpc_server_stats s;
  s.connections_accepted = st.accepted.load(std::memory_order_relaxed);
  s.connections_open = st.open.load(std::memory_order_relaxed);
  s.connections_rejected = st.rejected.load(std::memory_order_relaxed);
  s.requests = st.requests.load(std::memory_order_relaxed);
  s.bad_requests = st.bad_requests.load(std::memory_order_relaxed);
  s.protocol_closes = st.protocol_closes.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i <= rpc::op_max; ++i) {
    s.requests_by_op[i] = st.by_op[i].load(std::memory_order_relaxed);
    s.failures_by_op[i] = st.failed_by_op[i].load(std::memory_order_relaxed);
  }
  return s;
}

std::string rpc_server::metrics_text() const {
  rpc_server_stats s = stats();
  std::string out;
  auto counter = [&](std::string_view name, std::string_view help, std::uint64_t v, std::string_view type) {
    out += fmt::format("# HELP {} {}\n# TYPE {} {}\n{} {}\n", name, help, name, type, name, v);
  };
  counter("master_rpc_connections_accepted_total", "RPC connections accepted", s.connections_accepted, "counter");
  counter("master_rpc_connections_open", "RPC connections open", s.connections_open, "gauge");
  counter("master_rpc_connections_rejected_total", "RPC connections refused over max_connections",
          s.connections_rejected, "counter");
  counter("master_rpc_frames_total", "RPC request frames received", s.requests, "counter");
  counter("master_rpc_bad_requests_total", "RPC requests answered with an error before reaching the master",
          s.bad_requests, "counter");
  counter("master_rpc_protocol_closes_total", "RPC connections closed for a malformed or stalled frame",
          s.protocol_closes, "counter");
  out += "# HELP master_rpc_requests_total RPC requests by operation\n# TYPE master_rpc_requests_total counter\n";
  for (std::size_t i = 1; i <= rpc::op_max; ++i)
    out += fmt::format("master_rpc_requests_total{{op=\"{}\"}} {}\n", rpc::op_name(static_cast<op>(i)),
                       s.requests_by_op[i]);
  out +=
      "# HELP master_rpc_failures_total RPC requests that failed (batches: any item) by operation\n"
      "# TYPE master_rpc_failures_total counter\n";
  for (std::size_t i = 1; i <= rpc::op_max; ++i)
    out += fmt::format("master_rpc_failures_total{{op=\"{}\"}} {}\n", rpc::op_name(static_cast<op>(i)),
                       s.failures_by_op[i]);
  return out;
}

}  // namespace yutu::store
