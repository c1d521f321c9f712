// The initiator side of a pipelined TCP connection: FIFO of slots, gathering sender, buffered receiver.
#include "tcp_conn.hpp"

#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "yutu/log.hpp"

namespace yutu::transfer::detail {

task<result<void>> send_frame(int fd, std::span<const std::byte> head, std::span<const std::byte> payload) {
  iovec iov[2] = {{const_cast<std::byte*>(head.data()), head.size()},
                  {const_cast<std::byte*>(payload.data()), payload.size()}};
  co_return co_await io::send_all_iov(fd, std::span(iov, payload.empty() ? 1 : 2));
}

task<result<void>> recv_rest(io::tcp_stream& s, std::span<std::byte> buf, std::size_t got) {
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

task<result<std::size_t>> recv_with_next(io::tcp_stream& s, std::span<std::byte> buf, std::span<std::byte> next) {
  // One non-blocking call takes the payload and whatever already follows it (the next frame's
  // header, pipelined behind): the next read then costs no call at all.
  iovec iov[2] = {{buf.data(), buf.size()}, {next.data(), next.size()}};
  msghdr m{};
  m.msg_iov = iov;
  m.msg_iovlen = 2;
  const ssize_t k = ::recvmsg(s.fd(), &m, MSG_DONTWAIT);
  if (k == 0) co_return fail(errc::closed);
  std::size_t got = 0;
  if (k > 0)
    got = static_cast<std::size_t>(k);
  else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
    co_return fail_errno(-errno);
  if (got >= buf.size()) co_return got - buf.size();
  if (auto r = co_await recv_rest(s, buf, got); !r) co_return fail(r.error());
  co_return std::size_t{0};
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
  sp.spawn_on(home_index, send_loop(shared_from_this()));
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
      c->cancel(sl);
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
  s->payload = {};
  s->queued = false;
  s->in_op = false;
  s->deferred = false;
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
  if (s->done || s->deferred) return;
  if (s->in_op) {
    // The kernel may still be reading this frame's payload: the caller gets it back only after the
    // sender's operation returned (end_op).
    s->deferred = true;
    s->ec = ec;
    return;
  }
  s->done = true;
  s->ec = ec;
  if (s->waiter) {
    s->resume.handle = s->waiter;
    home_->schedule_local(&s->resume);
  }
}

void client_conn::unlink_unsent(slot* s) noexcept {
  slot* prev = nullptr;
  for (slot* p = fifo_head_; p && p != s; p = p->next) prev = p;
  if (prev)
    prev->next = s->next;
  else
    fifo_head_ = s->next;
  if (fifo_tail_ == s) fifo_tail_ = prev;
  if (send_head_ == s) send_head_ = s->next;  // send_off_ is 0: nothing of it left
  s->next = nullptr;
  s->queued = false;
}

void client_conn::cancel(slot* sl) noexcept {
  if (sl->done || sl->deferred) return;
  if (sl->in_op || (sl->dest && sl->receiving_payload)) {
    // Bytes are moving between the socket and the caller's memory right now (its payload in the
    // send in flight, or a READ landing): only aborting the socket both ends the wait promptly and
    // guarantees the memory is untouched once the caller resumes.
    shutdown();
    return;
  }
  if (sl->queued && !(sl == send_head_ && send_off_ > 0)) {
    // Not sent at all: it never reaches the wire, and no response will come for it.
    unlink_unsent(sl);
    complete(sl, std::make_error_code(std::errc::operation_canceled));
    release(sl);  // the FIFO's reference
    return;
  }
  if (sl->queued) {
    // Half sent, nothing in flight: the stream cannot carry the rest without the caller's memory.
    broken_ = true;
    broken_ec_ = make_error_code(te_errc::peer_unreachable);
    shutdown();
  }
  sl->dest = nullptr;  // a late payload is drained, never written
  sl->payload_out = nullptr;
  complete(sl, std::make_error_code(std::errc::operation_canceled));
}

void client_conn::shutdown() noexcept {
  int fd = s_.fd();
  if (fd >= 0) ::shutdown(fd, SHUT_RDWR);
}

void client_conn::fail_all(std::error_code ec) noexcept {
  broken_ = true;
  broken_ec_ = ec;
  send_head_ = nullptr;
  send_off_ = 0;
  while (slot* s = fifo_head_) {
    fifo_head_ = s->next;
    s->queued = false;
    complete(s, ec);
    release(s);
  }
  fifo_tail_ = nullptr;
  if (sender_idle_) {  // let the sender see broken_ and end
    sender_wake_.handle = std::exchange(sender_idle_, {});
    home_->schedule_local(&sender_wake_);
  }
}

struct client_conn::idle_awaiter {
  client_conn* c;
  bool await_ready() const noexcept { return c->send_head_ != nullptr || c->broken_; }
  void await_suspend(std::coroutine_handle<> h) noexcept { c->sender_idle_ = h; }
  void await_resume() const noexcept {}
};

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
  std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
    s->waiter = h;
    std::stop_token tok = coro::detail::stop_token_of(h);
    if (tok.stop_possible()) stop_cb.emplace(tok, cb{s});
    // A parked sender is queued behind the work already runnable on this reactor, not run at once:
    // the other requests of a batch are started in that same turn, and their frames then leave
    // together in one write.
    client_conn* c = s->conn;
    if (auto idle = std::exchange(c->sender_idle_, {})) {
      c->sender_wake_.handle = idle;
      c->home_->schedule_local(&c->sender_wake_);
    }
    return std::noop_coroutine();
  }
  std::error_code await_resume() noexcept {
    stop_cb.reset();
    return s->ec;
  }
};

task<std::error_code> client_conn::call(wire::header h, std::span<const std::byte> payload, std::byte* dest,
                                         std::string* payload_out) {
  if (broken_) co_return make_error_code(te_errc::peer_unreachable);
  slot* s = acquire_slot();
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
  s->hdr = wire::encode(h);
  s->payload = payload;
  s->queued = true;
  if (fifo_tail_)
    fifo_tail_->next = s;
  else
    fifo_head_ = s;
  fifo_tail_ = s;
  if (!send_head_) {
    send_head_ = s;
    send_off_ = 0;
  }
  std::error_code ec = co_await slot_awaiter{s, {}};
  release(s);
  co_return ec;
}

void client_conn::advance(std::size_t sent) noexcept {
  while (sent > 0 && send_head_) {
    slot* s = send_head_;
    const std::size_t left = s->hdr.size() + s->payload.size() - send_off_;
    if (sent < left) {
      send_off_ += sent;
      return;
    }
    sent -= left;
    s->queued = false;
    send_head_ = s->next;
    send_off_ = 0;
  }
}

void client_conn::end_op(std::size_t nslots) noexcept {
  for (std::size_t i = 0; i < nslots; ++i) {
    slot* s = op_slots_[i];
    s->in_op = false;
    if (s->deferred) {
      s->deferred = false;
      complete(s, s->ec);
    }
  }
}

task<void> client_conn::send_loop(std::shared_ptr<client_conn> self) {
  bool try_inline = true;
  // Towards a peer on another host, large payloads leave with SEND_ZC (the pages sent in place); on
  // this host it never pays (the receiver copies them anyway: io::tcp_stream::zc_threshold).
  bool zero_copy = s_.zero_copy_pays() && home_->features().send_zc;
  while (!broken_) {
    if (!send_head_) {
      co_await idle_awaiter{this};
      try_inline = true;
      continue;
    }
    // Gather the queued frames, from where the last write stopped.
    std::size_t niov = 0, nslots = 0, bytes = 0, payload_bytes = 0, off = send_off_;
    for (slot* s = send_head_; s && nslots < max_frames_per_send && bytes < max_bytes_per_send; s = s->next) {
      const std::size_t hs = s->hdr.size();
      if (off < hs) {
        iov_[niov++] = {const_cast<std::byte*>(s->hdr.data()) + off, hs - off};
        bytes += hs - off;
        off = hs;
      }
      if (off - hs < s->payload.size()) {
        iov_[niov++] = {const_cast<std::byte*>(s->payload.data()) + (off - hs), s->payload.size() - (off - hs)};
        bytes += s->payload.size() - (off - hs);
        payload_bytes += s->payload.size() - (off - hs);
      }
      op_slots_[nslots++] = s;
      off = 0;
    }
    msghdr m{};
    m.msg_iov = iov_;
    m.msg_iovlen = niov;
    std::size_t sent = 0;
    std::error_code err;
    const bool zc = zero_copy && payload_bytes >= io::tcp_stream::zc_threshold;
    if (try_inline && !zc) {
      // While the socket buffer has room a send is a memcpy: do it here, non-blocking, and use the
      // ring only for what did not fit (one io_uring operation and loop turn less per write).
      const ssize_t k = ::sendmsg(s_.fd(), &m, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (k > 0)
        sent = static_cast<std::size_t>(k);
      else if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
        err = std::error_code(errno, std::system_category());
    }
    if (!err && sent == 0) {
      for (std::size_t i = 0; i < nslots; ++i) op_slots_[i]->in_op = true;
      // Not cancellable by any caller's token: a half-sent frame would desynchronise the stream.
      // A connection is ended by shutdown() instead, which fails this at once.
      result<std::size_t> r;
      if (zc) {
        auto op = io::sendmsg_zc_op(s_.fd(), &m).with_stop_token(std::stop_token{});
        r = co_await op;
        if (r && op.used_zero_copy() && zc_bytes_) zc_bytes_->fetch_add(*r, std::memory_order_relaxed);
      } else {
        r = co_await io::sendmsg_op(s_.fd(), &m).with_stop_token(std::stop_token{});
      }
      end_op(nslots);
      if (!r && zc && r.error() == std::errc::operation_not_supported) {
        // A socket or device without zero-copy support refuses before sending anything: stop asking.
        zero_copy = false;
        continue;
      }
      if (!r)
        err = r.error();
      else if (*r == 0)
        err = make_error_code(errc::closed);
      else
        sent = *r;
      try_inline = true;
    } else {
      // A short inline write means the socket buffer is full: the rest goes through the ring.
      try_inline = sent == bytes;
    }
    if (err) {
      log::debug("tcp: send failed: {}", err.message());
      // The receiver sees the shut socket and fails every pending request.
      broken_ = true;
      broken_ec_ = make_error_code(te_errc::peer_unreachable);
      shutdown();
      break;
    }
    advance(sent);
  }
  (void)self;
}

task<result<void>> frame_reader::read_header(wire::header_bytes& hb) {
  if (has_header()) {
    // Once every so many frames served from the buffer, go round the reactor. A loop over frames
    // that never waits relies on symmetric transfer being a tail call to keep its stack flat; g++ 12
    // at -O2 with ASan does not make it one, and a 4000-request pipelined batch overflowed a
    // reactor thread's stack (transfer/engine's test). The detour costs one queue turn per 64 frames.
    if (++buffered_run_ == max_buffered_run) {
      buffered_run_ = 0;
      if (io::reactor* r = io::reactor::current()) co_await r->schedule();
    }
  } else {
    buffered_run_ = 0;
    std::memmove(buf_.data(), buf_.data() + pos_, end_ - pos_);
    end_ -= pos_;
    pos_ = 0;
    while (end_ < hb.size()) {
      // Whatever has arrived, up to the buffer's size.
      auto r = co_await io::recv_op(s_->fd(), std::span(buf_).subspan(end_)).with_stop_token(std::stop_token{});
      if (!r) co_return fail(r.error());
      if (*r == 0) co_return fail(errc::closed);
      end_ += *r;
    }
  }
  std::memcpy(hb.data(), buf_.data() + pos_, hb.size());
  pos_ += hb.size();
  co_return ok();
}

task<result<void>> frame_reader::read_payload(std::byte* dest, std::uint64_t n) {
  const std::size_t take = static_cast<std::size_t>(std::min<std::uint64_t>(n, end_ - pos_));
  if (dest && take > 0) std::memcpy(dest, buf_.data() + pos_, take);
  pos_ += take;
  if (take == n) co_return ok();
  pos_ = end_ = 0;  // all of it was taken
  if (!dest) co_return co_await drain(*s_, n - take);
  auto r = co_await recv_with_next(*s_, std::span(dest + take, n - take), std::span(buf_));
  if (!r) co_return fail(r.error());
  end_ = *r;
  co_return ok();
}

task<void> client_conn::receive_loop(std::shared_ptr<client_conn> self) {
  wire::header_bytes hb;
  std::error_code err;
  for (;;) {
    auto r = co_await in_.read_header(hb);
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
      const bool deliver = s->dest && !s->done;
      s->receiving_payload = deliver;
      auto rr = co_await in_.read_payload(deliver ? s->dest : nullptr, h->length);
      s->receiving_payload = false;
      if (!rr) stream_ok = false;
    } else if (h->type == wire::frame_type::desc_resp && h->status == 0) {
      std::string body(h->length, '\0');
      auto rr = co_await in_.read_payload(reinterpret_cast<std::byte*>(body.data()), h->length);
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
  shutdown();  // a sender blocked on a full socket returns at once
  fail_all(err);
  // An abortive close: the kernel drops what is still queued instead of retransmitting it for
  // minutes, so pages lent to a SEND_ZC are released (its notification comes) even when the peer
  // is unreachable, and the request holding them can end within its deadline.
  (void)s_.set_linger(true, 0);
  s_.close();
  (void)self;
}

}  // namespace yutu::transfer::detail
