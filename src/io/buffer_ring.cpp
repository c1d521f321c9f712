// buffer_ring and multishot_receiver: ring registration, the multishot CQE state machine, orphans.
#include "yutu/io/buffer_ring.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <cassert>
#include <cerrno>
#include <cstdlib>

#include "yutu/io/socket.hpp"

namespace yutu::io {
namespace detail {

void buf_ring_state::recycle(std::uint16_t bid) noexcept {
  io_uring_buf_ring_add(br, buffer(bid), static_cast<unsigned>(buf_size), bid, static_cast<int>(mask), 0);
  io_uring_buf_ring_advance(br, 1);
  ++in_kernel;
  // Receivers that ran dry re-arm now; take the list first, arming may starve one again.
  rx_state* s = std::exchange(starved, nullptr);
  while (s) {
    rx_state* next = std::exchange(s->next_starved, nullptr);
    s->is_starved = false;
    s->arm();
    s = next;
  }
}

buf_ring_state::~buf_ring_state() {
  assert(lent == 0 && "a `received` outlived its buffer_ring");
  assert(starved == nullptr);
  if (registered) (void)io_uring_unregister_buf_ring(r->ring(), group);
  if (br) ::munmap(br, ring_bytes);
  std::free(mem);
}

rx_state::rx_state(int fd_, std::shared_ptr<buf_ring_state> ring_)
    : r(ring_->r), fd(fd_), ring(std::move(ring_)) {
  on_cqe = [](io_completion* c, int res, std::uint32_t flags) noexcept {
    static_cast<rx_state*>(c)->on_recv(res, flags);
  };
  cancel_cqe.owner = this;
  cancel_cqe.on_cqe = [](io_completion* c, int, std::uint32_t) noexcept {
    rx_state* self = static_cast<cancel_completion*>(c)->owner;
    --self->cancels;
    self->r->op_finished();
    self->maybe_free();
  };
  // Every CQE that carries data holds a buffer, so the queue never needs more than the ring has.
  q_cap = ring->count;
  q = std::make_unique<entry[]>(q_cap);
}

rx_state::~rx_state() { leave_starved_list(); }

void rx_state::arm() noexcept {
  if (armed || orphaned || final_) return;
  if (ring->in_kernel == 0) {
    // Arming now would only earn -ENOBUFS: wait for a buffer to come back.
    if (!is_starved) {
      is_starved = true;
      next_starved = ring->starved;
      ring->starved = this;
    }
    return;
  }
  leave_starved_list();
  io_uring_sqe* sqe = r->get_sqe();
  io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = ring->group;
  io_uring_sqe_set_data(sqe, static_cast<io_completion*>(this));
  armed = true;
  ++arms;
  r->op_started();
}

void rx_state::leave_starved_list() noexcept {
  if (!is_starved) return;
  for (rx_state** p = &ring->starved; *p; p = &(*p)->next_starved) {
    if (*p == this) {
      *p = next_starved;
      break;
    }
  }
  next_starved = nullptr;
  is_starved = false;
}

void rx_state::cancel() noexcept {
  io_uring_sqe* sqe = r->get_sqe();
  io_uring_prep_cancel(sqe, static_cast<io_completion*>(this), 0);
  io_uring_sqe_set_data(sqe, static_cast<io_completion*>(&cancel_cqe));
  ++cancels;
  r->op_started();
}

void rx_state::on_recv(int res, std::uint32_t flags) noexcept {
  const bool more = (flags & IORING_CQE_F_MORE) != 0;
  if (!more) {
    armed = false;
    r->op_finished();
  }
  if (flags & IORING_CQE_F_BUFFER) {
    auto bid = static_cast<std::uint16_t>(flags >> IORING_CQE_BUFFER_SHIFT);
    --ring->in_kernel;
    if (res > 0 && !orphaned) {
      assert(q_len < q_cap);
      q[(q_head + q_len) % q_cap] = entry{bid, static_cast<std::uint32_t>(res)};
      ++q_len;
    } else {
      ring->recycle(bid);
    }
  }
  if (orphaned) {
    maybe_free();  // last use of `this`
    return;
  }
  if (res == 0) {
    final_ = make_error_code(errc::closed);
  } else if (res == -ENOBUFS) {
    ++enobufs;
    if (!more) arm();  // re-arms now if a buffer came back meanwhile, else joins the starved list
  } else if (res < 0) {
    final_ = res == -ECANCELED ? std::make_error_code(std::errc::operation_canceled)
                               : std::error_code(-res, std::system_category());
  } else if (!more) {
    // The kernel ended the multishot after data (CQ pressure, retry limits): keep receiving.
    arm();
  }
  if (waiter) {
    if (has_entry())
      waiter->decide({});
    else if (final_)
      waiter->decide(final_);
  }
}

received rx_state::pop() noexcept {
  entry e = q[q_head];
  q_head = (q_head + 1) % q_cap;
  --q_len;
  ++ring->lent;
  return received(ring.get(), e.bid, e.len);
}

void rx_state::orphan() noexcept {
  orphaned = true;
  while (q_len) {
    entry e = q[q_head];
    q_head = (q_head + 1) % q_cap;
    --q_len;
    ring->recycle(e.bid);
  }
  leave_starved_list();
  if (armed) cancel();
  maybe_free();
}

void rx_state::maybe_free() noexcept {
  if (orphaned && !armed && cancels == 0) delete this;
}

}  // namespace detail

result<buffer_ring> buffer_ring::create(reactor& r, std::uint16_t group_id, unsigned count, std::size_t buf_size) {
  if (count == 0 || count > 32768 || (count & (count - 1)) != 0) return fail(errc::invalid_params);
  if (buf_size == 0 || buf_size > 0xffffffffu) return fail(errc::invalid_params);
  auto s = std::make_shared<detail::buf_ring_state>();
  s->r = &r;
  s->count = count;
  s->mask = count - 1;
  s->buf_size = buf_size;
  s->group = group_id;
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  s->ring_bytes = (count * sizeof(io_uring_buf) + page - 1) / page * page;
  void* br = ::mmap(nullptr, s->ring_bytes, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (br == MAP_FAILED) return fail_errno(-errno);
  s->br = static_cast<io_uring_buf_ring*>(br);
  const std::size_t bytes = (count * buf_size + page - 1) / page * page;
  s->mem = static_cast<std::byte*>(std::aligned_alloc(page, bytes));
  if (!s->mem) return fail(std::make_error_code(std::errc::not_enough_memory));

  io_uring_buf_reg reg{};
  reg.ring_addr = reinterpret_cast<std::uintptr_t>(s->br);
  reg.ring_entries = count;
  reg.bgid = group_id;
  int rc = io_uring_register_buf_ring(r.ring(), &reg, 0);
  if (rc < 0) return fail_errno(rc);
  s->registered = true;
  io_uring_buf_ring_init(s->br);
  for (unsigned i = 0; i < count; ++i)
    io_uring_buf_ring_add(s->br, s->buffer(static_cast<std::uint16_t>(i)), static_cast<unsigned>(buf_size),
                          static_cast<unsigned short>(i), static_cast<int>(s->mask), static_cast<int>(i));
  io_uring_buf_ring_advance(s->br, static_cast<int>(count));
  s->in_kernel = count;
  buffer_ring out;
  out.s_ = std::move(s);
  return out;
}

// --- rx_next_op ---

void rx_next_op::stop_fn::operator()() noexcept {
  std::uint8_t expected = 0;
  if (!op->stop_state_.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
  op->stop_item_.op = op;
  op->stop_item_.run = [](coro::work_item* w) noexcept { static_cast<cancel_item*>(w)->op->on_stop_item(); };
  op->r_->post(&op->stop_item_);
}

bool rx_next_op::suspend(std::coroutine_handle<> h) noexcept {
  r_ = reactor::current();
  assert(r_ == s_->r && "a multishot_receiver is used on its ring's reactor thread only");
  assert(!s_->waiter && "one next() at a time");
  if (token_.stop_requested()) {
    decided_ = true;
    ec_ = std::make_error_code(std::errc::operation_canceled);
    return false;
  }
  waiter_ = h;
  s_->waiter = this;
  s_->arm();
  if (has_timeout_) {
    io_uring_sqe* sqe = r_->get_sqe();
    io_uring_prep_timeout(sqe, &ts_, 0, 0);
    io_uring_sqe_set_data(sqe, static_cast<io_completion*>(this));
    timer_armed_ = true;
    ++pending_;
    r_->op_started();
  }
  if (token_.stop_possible()) stop_cb_.emplace(token_, stop_fn{this});
  return true;
}

void rx_next_op::decide(std::error_code ec) noexcept {
  if (decided_) return;
  decided_ = true;
  if (s_) {
    if (s_->waiter == this) s_->waiter = nullptr;
    if (!ec) {
      value_ = s_->pop();
      has_value_ = true;
    }
  }
  ec_ = ec;
  if (timer_armed_) {
    io_uring_sqe* sqe = r_->get_sqe();
    io_uring_prep_timeout_remove(sqe, reinterpret_cast<std::uint64_t>(static_cast<io_completion*>(this)), 0);
    remove_cqe_.owner = this;
    remove_cqe_.on_cqe = &remove_cqe;
    io_uring_sqe_set_data(sqe, static_cast<io_completion*>(&remove_cqe_));
    ++pending_;
    r_->op_started();
  }
  try_finish();
}

void rx_next_op::try_finish() noexcept {
  if (!decided_ || pending_ > 0) return;
  // Waits for a stop callback running on another thread; none can start afterwards.
  stop_cb_.reset();
  if (stop_state_.load(std::memory_order_acquire) == 1) {
    resume_after_drain_ = true;  // the reactor still holds our stop item
    return;
  }
  resume();
}

void rx_next_op::resume() noexcept {
  if (defer_resume_) {
    resume_item_.handle = waiter_;
    r_->schedule_local(&resume_item_);
  } else {
    waiter_.resume();
  }
}

void rx_next_op::on_stop_item() noexcept {
  stop_state_.store(2, std::memory_order_release);
  if (resume_after_drain_) {
    resume();
    return;
  }
  if (!decided_) decide(std::make_error_code(std::errc::operation_canceled));
}

void rx_next_op::timer_cqe(io_completion* c, int res, std::uint32_t) noexcept {
  auto* self = static_cast<rx_next_op*>(c);
  self->timer_armed_ = false;
  --self->pending_;
  self->r_->op_finished();
  if (!self->decided_)
    self->decide(std::make_error_code(res == -ETIME ? std::errc::timed_out : std::errc::operation_canceled));
  else
    self->try_finish();
}

void rx_next_op::remove_cqe(io_completion* c, int, std::uint32_t) noexcept {
  auto* self = static_cast<sub_completion*>(c)->owner;
  --self->pending_;
  self->r_->op_finished();
  self->try_finish();
}

result<received> rx_next_op::await_resume() noexcept {
  if (!decided_) {
    // Ready without suspending.
    if (s_->has_entry()) return s_->pop();
    return fail(s_->final_);
  }
  if (has_value_) return std::move(value_);
  return fail(ec_);
}

// --- multishot_receiver ---

multishot_receiver::multishot_receiver(int fd, buffer_ring& ring) : s_(new detail::rx_state(fd, ring.s_)) {}
multishot_receiver::multishot_receiver(const tcp_stream& s, buffer_ring& ring)
    : multishot_receiver(s.fd(), ring) {}

void multishot_receiver::reset() noexcept {
  detail::rx_state* s = std::exchange(s_, nullptr);
  if (!s) return;
  if (rx_next_op* w = std::exchange(s->waiter, nullptr)) {
    // Destroyed under a pending next(): that wait ends with `closed`, resumed from the loop rather
    // than from inside this destructor.
    w->defer_resume_ = true;
    w->s_ = nullptr;
    w->decide(make_error_code(errc::closed));
  }
  s->orphan();
}

}  // namespace yutu::io
