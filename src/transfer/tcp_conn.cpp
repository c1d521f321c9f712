// The initiator side of a pipelined TCP connection: send lock, FIFO of slots, receiver coroutine.
#include "tcp_conn.hpp"

#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "yutu/log.hpp"

namespace yutu::transfer::detail {

task<result<void>> send_frame(int fd, const wire::header_bytes& hdr, std::span<const std::byte> payload) {
  std::size_t sent = 0;
  const std::size_t total = hdr.size() + payload.size();
  bool first = true;
  while (sent < total) {
    iovec iov[2];
    int n = 0;
    if (sent < hdr.size()) {
      iov[n++] = {const_cast<std::byte*>(hdr.data()) + sent, hdr.size() - sent};
      if (!payload.empty()) iov[n++] = {const_cast<std::byte*>(payload.data()), payload.size()};
    } else {
      std::size_t off = sent - hdr.size();
      iov[n++] = {const_cast<std::byte*>(payload.data()) + off, payload.size() - off};
    }
    msghdr m{};
    m.msg_iov = iov;
    m.msg_iovlen = static_cast<std::size_t>(n);
    if (first) {
      // Fast path: while the socket buffer has room a send is a memcpy, so do it here, non-blocking,
      // and use the ring only for what did not fit (one io_uring operation and loop turn less per
      // frame; see docs/performance.md).
      first = false;
      const ssize_t k = ::sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (k > 0) {
        sent += static_cast<std::size_t>(k);
        continue;
      }
      if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) co_return fail_errno(-errno);
    }
    auto r = co_await sendmsg_op(fd, &m);
    if (!r) co_return fail(r.error());
    if (*r == 0) co_return fail(errc::closed);
    sent += *r;
  }
  co_return ok();
}

task<result<void>> recv_all(io::tcp_stream& s, std::span<std::byte> buf, bool try_now) {
  std::size_t got = 0;
  if (try_now && !buf.empty()) {
    // The caller expects the bytes to be here already (a payload right behind its header): take
    // them without a ring round trip; the ring waits only for what has not arrived.
    const ssize_t k = ::recv(s.fd(), buf.data(), buf.size(), MSG_DONTWAIT);
    if (k == 0) co_return fail(errc::closed);
    if (k > 0) got = static_cast<std::size_t>(k);
    else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) co_return fail_errno(-errno);
  }
  while (got < buf.size()) {
    // Not cancellable by the caller's token: a half-received frame would desynchronise the stream.
    // Connections are ended by shutdown() instead.
    // MSG_WAITALL: the kernel keeps receiving until the span is full, so a 1 MiB slice costs one
    // completion instead of one per socket-buffer's worth.
    auto r = co_await io::recv_op(s.fd(), buf.subspan(got), MSG_WAITALL).with_stop_token(std::stop_token{});
    if (!r) co_return fail(r.error());
    if (*r == 0) co_return fail(errc::closed);
    got += *r;
  }
  co_return ok();
}

task<result<void>> drain(io::tcp_stream& s, std::uint64_t n) {
  static thread_local std::vector<std::byte> scratch(64 * 1024);
  while (n > 0) {
    std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, scratch.size()));
    auto r = co_await recv_all(s, std::span(scratch.data(), chunk));
    if (!r) co_return r;
    n -= chunk;
  }
  co_return ok();
}

client_conn::~client_conn() {
  while (free_) {
    slot* n = free_->next;
    delete free_;
    free_ = n;
  }
}

void client_conn::start(std::size_t home_index, engine_spawner& sp) {
  sp.spawn_on(home_index, receive_loop(shared_from_this()));
}

client_conn::slot* client_conn::acquire_slot() {
  slot* s = free_;
  if (s) {
    free_ = s->next;
  } else {
    s = new slot;
    ++slots_allocated_;
    s->conn = this;
    s->cancel_item.owner = s;
    s->cancel_item.run = [](coro::work_item* w) noexcept {
      // The stop callback posted this; we are on the home reactor.
      slot* sl = static_cast<slot::cancel_node*>(w)->owner;
      client_conn* c = sl->conn;
      if (!sl->done) {
        if (sl->dest && sl->receiving_payload) {
          // The payload is being received into the caller's memory right now: only aborting the
          // socket both ends the wait promptly and guarantees no byte lands after we return.
          c->shutdown();
        } else {
          sl->dest = nullptr;  // a late payload is drained, never written
          sl->payload_out = nullptr;
          c->complete(sl, std::make_error_code(std::errc::operation_canceled));
        }
      }
      c->release(sl);
    };
  }
  s->next = nullptr;
  s->done = false;
  s->receiving_payload = false;
  s->waiter = {};
  s->ec = {};
  s->dest = nullptr;
  s->payload_out = nullptr;
  s->refs.store(2, std::memory_order_relaxed);  // the FIFO's and the caller's
  return s;
}

void client_conn::release(slot* s) noexcept {
  if (s->refs.fetch_sub(1, std::memory_order_acq_rel) == 1) {
    s->next = free_;
    free_ = s;
  }
}

void client_conn::complete(slot* s, std::error_code ec) noexcept {
  if (s->done) return;
  s->done = true;
  s->ec = ec;
  if (s->waiter) {
    s->resume.handle = s->waiter;
    home_->schedule_local(&s->resume);
  }
}

void client_conn::shutdown() noexcept {
  int fd = s_.fd();
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

void client_conn::fail_all(std::error_code ec) noexcept {
  broken_ = true;
  broken_ec_ = ec;
  while (slot* s = fifo_head_) {
    fifo_head_ = s->next;
    complete(s, ec);
    release(s);
  }
  fifo_tail_ = nullptr;
}

struct client_conn::slot_awaiter {
  slot* s;
  struct cb {
    slot* s;
    void operator()() noexcept {
      s->refs.fetch_add(1, std::memory_order_relaxed);  // the posted item's reference
      s->conn->home_->post(&s->cancel_item);
    }
  };
  std::optional<std::stop_callback<cb>> stop_cb;

  bool await_ready() const noexcept { return s->done; }
  template <class P>
  void await_suspend(std::coroutine_handle<P> h) noexcept {
    s->waiter = h;
    std::stop_token tok = coro::detail::stop_token_of(h);
    if (tok.stop_possible()) stop_cb.emplace(tok, cb{s});
  }
  std::error_code await_resume() noexcept {
    stop_cb.reset();
    return s->ec;
  }
};

task<std::error_code> client_conn::call(wire::header h, std::span<const std::byte> payload, std::byte* dest,
                                         std::string* payload_out) {
  if (broken_) co_return make_error_code(te_errc::peer_unreachable);
  slot* s = nullptr;
  {
    auto guard = co_await send_mu_.lock();
    if (!guard) co_return guard.error();
    if (broken_) co_return make_error_code(te_errc::peer_unreachable);
    s = acquire_slot();
    s->id = next_id_++;
    h.id = s->id;
    switch (h.type) {
      case wire::frame_type::write: s->expect = wire::frame_type::write_ack; break;
      case wire::frame_type::read: s->expect = wire::frame_type::read_resp; break;
      case wire::frame_type::desc_req: s->expect = wire::frame_type::desc_resp; break;
      case wire::frame_type::notify: s->expect = wire::frame_type::notify_ack; break;
      default: s->expect = h.type; break;
    }
    s->dest = dest;
    s->length = h.type == wire::frame_type::read ? h.length : 0;
    s->payload_out = payload_out;
    if (fifo_tail_)
      fifo_tail_->next = s;
    else
      fifo_head_ = s;
    fifo_tail_ = s;
    auto hb = wire::encode(h);
    auto r = co_await send_frame(s_.fd(), hb, payload);
    if (!r) {
      // A partial frame desynchronises the stream: end the connection; the receiver fails the slots.
      log::debug("tcp: send failed: {}", r.error().message());
      shutdown();
    }
  }
  std::error_code ec = co_await slot_awaiter{s, {}};
  release(s);
  co_return ec;
}

task<void> client_conn::receive_loop(std::shared_ptr<client_conn> self) {
  wire::header_bytes hb;
  std::error_code err;
  for (;;) {
    auto r = co_await recv_all(s_, hb);
    if (!r) {
      err = make_error_code(te_errc::peer_unreachable);
      break;
    }
    auto h = wire::decode(hb, max_payload_);
    slot* s = fifo_head_;
    if (!h || !s || h->id != s->id || h->type != s->expect) {
      log::warn("tcp: unexpected or malformed response frame; closing the connection");
      err = make_error_code(errc::protocol_error);
      break;
    }
    fifo_head_ = s->next;
    if (!fifo_head_) fifo_tail_ = nullptr;
    std::error_code ec;
    if (h->status != 0) ec = make_error_code(static_cast<te_errc>(h->status));
    bool stream_ok = true;
    if (h->type == wire::frame_type::read_resp && h->status == 0) {
      if (h->length != s->length) {
        err = make_error_code(errc::protocol_error);
        complete(s, err);
        release(s);
        break;
      }
      result<void> rr;
      if (s->dest && !s->done) {
        s->receiving_payload = true;
        rr = co_await recv_all(s_, std::span(s->dest, h->length), /*try_now=*/true);
        s->receiving_payload = false;
      } else {
        rr = co_await drain(s_, h->length);
      }
      if (!rr) stream_ok = false;
    } else if (h->type == wire::frame_type::desc_resp && h->status == 0) {
      std::string body(h->length, '\0');
      auto rr = co_await recv_all(s_, std::as_writable_bytes(std::span(body)), /*try_now=*/true);
      if (!rr)
        stream_ok = false;
      else if (s->payload_out && !s->done)
        *s->payload_out = std::move(body);
    }
    if (!stream_ok) {
      err = make_error_code(te_errc::peer_unreachable);
      complete(s, err);
      release(s);
      break;
    }
    complete(s, ec);
    release(s);
  }
  fail_all(err);
  s_.close();
  (void)self;
}

}  // namespace yutu::transfer::detail
