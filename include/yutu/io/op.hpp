// The awaitable behind every io_uring operation: one SQE, cancellation by stop token, optional
// per-operation deadline (a linked timeout), and the lifetime rule that keeps it safe.
//
// Lifetime rule (PhotonLibOS learned it the hard way): the awaiter is the SQE's user_data, so it must
// outlive every completion the kernel owes for it: the operation's own (two for SEND_ZC: result and
// notification), the linked timeout's, and the ASYNC_CANCEL's. `pending_` counts them; the coroutine
// is resumed, and the awaiter may be destroyed, only when it reaches zero AND no cancel request posted
// by another thread is still queued on the reactor.
//
// Cancellation: a stop request (from any thread) posts the op's cancel item to its reactor; the
// reactor thread then submits IORING_OP_ASYNC_CANCEL for it. The operation completes with -ECANCELED,
// reported as std::errc::operation_canceled. If it completed first, its own result stands.
#pragma once

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <optional>
#include <poll.h>
#include <stop_token>

#include "yutu/coro/executor.hpp"
#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/reactor.hpp"

namespace yutu::io {

using clock = std::chrono::steady_clock;

inline __kernel_timespec to_timespec(std::chrono::nanoseconds d) noexcept {
  if (d.count() < 0) d = std::chrono::nanoseconds(0);
  __kernel_timespec ts{};
  ts.tv_sec = static_cast<long long>(d.count() / 1000000000);
  ts.tv_nsec = static_cast<long long>(d.count() % 1000000000);
  return ts;
}

// Base of all io_uring awaitables. Derived classes implement `void prepare(io_uring_sqe*)` and
// optionally `bool on_result(int res, uint32_t flags)` (return true when more CQEs follow for the
// same SQE, as SEND_ZC's notification does).
template <class Derived>
class uring_op : private io_completion {
 public:
  uring_op() noexcept { on_cqe = &main_cqe; }
  uring_op(const uring_op&) = delete;
  uring_op& operator=(const uring_op&) = delete;
  // Movable only before it was awaited (awaitables are returned by value from factory functions).
  uring_op(uring_op&& o) noexcept : uring_op() {
    token_ = std::move(o.token_);
    explicit_token_ = o.explicit_token_;
    timeout_ = o.timeout_;
    has_timeout_ = o.has_timeout_;
  }

  // Overrides the stop token inherited from the awaiting task.
  Derived& with_stop_token(std::stop_token t) & noexcept {
    token_ = std::move(t);
    explicit_token_ = true;
    return static_cast<Derived&>(*this);
  }
  Derived&& with_stop_token(std::stop_token t) && noexcept {
    return std::move(with_stop_token(std::move(t)));
  }
  // Fails the operation with std::errc::timed_out if it has not completed within `d`.
  template <class Rep, class Period>
  Derived&& with_timeout(std::chrono::duration<Rep, Period> d) && noexcept {
    timeout_ = to_timespec(std::chrono::duration_cast<std::chrono::nanoseconds>(d));
    has_timeout_ = true;
    return std::move(static_cast<Derived&>(*this));
  }

  bool await_ready() const noexcept { return false; }

  template <class P>
  bool await_suspend(std::coroutine_handle<P> h) noexcept {
    if (!explicit_token_) token_ = coro::detail::stop_token_of(h);
    r_ = reactor::current();
    assert(r_ && "io operations must be awaited on a reactor thread");
    if (token_.stop_requested()) {
      res_ = -ECANCELED;
      return false;
    }
    waiter_ = h;
    // The hot path: a free SQE straight from the ring; reactor::get_sqe (out of line) flushes a full
    // SQ. Only a linked pair needs both slots guaranteed without a flush between them.
    if (has_timeout_) r_->reserve_sqes(2);
    io_uring_sqe* sqe = io_uring_get_sqe(r_->ring());
    if (!sqe) sqe = r_->get_sqe();
    static_cast<Derived*>(this)->prepare(sqe);
    io_uring_sqe_set_data(sqe, static_cast<io_completion*>(this));
    pending_ = 1;
    if (has_timeout_) {
      sqe->flags |= IOSQE_IO_LINK;
      io_uring_sqe* t = r_->get_sqe();
      io_uring_prep_link_timeout(t, &timeout_, 0);
      timeout_cqe_.on_cqe = &timeout_done;
      timeout_cqe_.owner = this;
      io_uring_sqe_set_data(t, static_cast<io_completion*>(&timeout_cqe_));
      ++pending_;
    }
    r_->op_started();
    if (token_.stop_possible()) stop_cb_.emplace(token_, stop_fn{this});
    return true;
  }

 protected:
  // The main CQE's result (negative errno on failure). Valid in await_resume.
  int res_ = 0;
  std::uint32_t flags_ = 0;
  bool timed_out_ = false;

  // Translates res_ into an error, taking the linked timeout and cancellation into account.
  std::error_code error() const noexcept {
    if (res_ >= 0) return {};
    if (res_ == -ECANCELED) {
      if (timed_out_) return std::make_error_code(std::errc::timed_out);
      return std::make_error_code(std::errc::operation_canceled);
    }
    if (res_ == -ETIME && timed_out_) return std::make_error_code(std::errc::timed_out);
    return {-res_, std::system_category()};
  }

  // Derived ops with extra completions (SEND_ZC) call this when one is expected / arrived.
  void expect_more() noexcept { ++pending_; }
  void one_done() noexcept {
    if (--pending_ == 0) finish();
  }
  bool on_result(int, std::uint32_t) noexcept { return false; }

 private:
  struct stop_fn {
    uring_op* op;
    void operator()() noexcept { op->request_cancel(); }
  };
  struct cancel_item : coro::work_item {
    uring_op* op;
  };
  // The linked timeout's and the ASYNC_CANCEL's completions, each a user_data of its own.
  struct sub_completion : io_completion {
    uring_op* owner = nullptr;
  };

  static void main_cqe(io_completion* c, int res, std::uint32_t flags) noexcept {
    auto* self = static_cast<uring_op*>(c);
    if (!self->main_seen_) {
      self->main_seen_ = true;
      self->res_ = res;
      self->flags_ = flags;
      if (static_cast<Derived*>(self)->on_result(res, flags)) self->expect_more();
    } else {
      // A follow-up CQE (SEND_ZC's notification) for the same SQE.
      (void)static_cast<Derived*>(self)->on_result(res, flags);
    }
    self->one_done();
  }
  static void timeout_done(io_completion* c, int res, std::uint32_t) noexcept {
    auto* self = static_cast<sub_completion*>(c)->owner;
    if (res == -ETIME) self->timed_out_ = true;
    self->one_done();
  }
  static void cancel_done(io_completion* c, int, std::uint32_t) noexcept {
    static_cast<sub_completion*>(c)->owner->one_done();
  }

  // Any thread (the stop callback).
  void request_cancel() noexcept {
    std::uint8_t expected = 0;
    if (!cancel_state_.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) return;
    citem_.op = this;
    citem_.run = [](coro::work_item* w) noexcept { static_cast<cancel_item*>(w)->op->on_cancel_item(); };
    r_->post(&citem_);
  }

  // Reactor thread: the posted cancel request is being processed.
  void on_cancel_item() noexcept {
    cancel_state_.store(2, std::memory_order_release);
    if (resume_after_drain_) {
      resume();
      return;
    }
    if (pending_ == 0) return;
    io_uring_sqe* sqe = r_->get_sqe();
    io_uring_prep_cancel(sqe, static_cast<io_completion*>(this), 0);
    cancel_cqe_.on_cqe = &cancel_done;
    cancel_cqe_.owner = this;
    io_uring_sqe_set_data(sqe, static_cast<io_completion*>(&cancel_cqe_));
    ++pending_;
  }

  // Reactor thread: every completion owed has arrived.
  void finish() noexcept {
    r_->op_finished();
    // Waits for a stop callback running on another thread; none can start afterwards.
    stop_cb_.reset();
    if (cancel_state_.load(std::memory_order_acquire) == 1) {
      resume_after_drain_ = true;  // the reactor still holds our cancel item
      return;
    }
    resume();
  }
  void resume() noexcept { waiter_.resume(); }

  reactor* r_ = nullptr;
  std::coroutine_handle<> waiter_;
  std::stop_token token_;
  bool explicit_token_ = false;
  std::optional<std::stop_callback<stop_fn>> stop_cb_;
  std::atomic<std::uint8_t> cancel_state_{0};  // 0 none, 1 posted, 2 processed
  bool resume_after_drain_ = false;
  bool main_seen_ = false;
  int pending_ = 0;
  cancel_item citem_;
  sub_completion cancel_cqe_;
  sub_completion timeout_cqe_;
  __kernel_timespec timeout_{};
  bool has_timeout_ = false;
};

// --- simple operations ---

// A no-op through the ring: the unit of the reactor's per-operation cost.
class nop_op : public uring_op<nop_op> {
 public:
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_nop(sqe); }
  result<void> await_resume() const noexcept {
    if (auto ec = error()) return fail(ec);
    return ok();
  }
};
inline nop_op nop() noexcept { return {}; }

// Sleeps for a duration (an IORING_OP_TIMEOUT). Cancellation ends it early with operation_canceled.
class sleep_op : public uring_op<sleep_op> {
 public:
  explicit sleep_op(std::chrono::nanoseconds d) noexcept : ts_(to_timespec(d)) {}
  sleep_op(sleep_op&& o) noexcept : uring_op<sleep_op>(std::move(o)), ts_(o.ts_) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_timeout(sqe, &ts_, 0, 0); }
  result<void> await_resume() const noexcept {
    if (res_ == -ETIME || res_ >= 0) return ok();
    return fail(error());
  }

 private:
  __kernel_timespec ts_;
};
template <class Rep, class Period>
sleep_op sleep_for(std::chrono::duration<Rep, Period> d) noexcept {
  return sleep_op(std::chrono::duration_cast<std::chrono::nanoseconds>(d));
}
inline sleep_op sleep_until(clock::time_point t) noexcept {
  return sleep_op(std::chrono::duration_cast<std::chrono::nanoseconds>(t - clock::now()));
}

// Waits until `fd` is ready for `events` (POLLIN, POLLOUT, ...); returns the ready mask. Used for the
// ibverbs completion channel and other foreign fds.
class poll_op : public uring_op<poll_op> {
 public:
  poll_op(int fd, unsigned events) noexcept : fd_(fd), events_(events) {}
  poll_op(poll_op&& o) noexcept : uring_op<poll_op>(std::move(o)), fd_(o.fd_), events_(o.events_) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_poll_add(sqe, fd_, events_); }
  result<unsigned> await_resume() const noexcept {
    if (auto ec = error()) return fail(ec);
    return static_cast<unsigned>(res_);
  }

 private:
  int fd_;
  unsigned events_;
};
inline poll_op poll(int fd, unsigned events) noexcept { return poll_op(fd, events); }

// Advice about [addr, addr + len) to the kernel (IORING_OP_MADVISE). The ring runs it in the
// kernel's worker threads, so long work (MADV_POPULATE_READ over a gigabyte) does not hold up the
// reactor. Not cancellable once a worker has started it. The submission's length field has 32 bits:
// a range of 4 GiB or more fails with invalid_argument rather than being cut short.
class madvise_op : public uring_op<madvise_op> {
 public:
  madvise_op(void* addr, std::size_t len, int advice) noexcept : addr_(addr), len_(len), advice_(advice) {}
  madvise_op(madvise_op&& o) noexcept
      : uring_op<madvise_op>(std::move(o)), addr_(o.addr_), len_(o.len_), advice_(o.advice_) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    if (too_long())
      io_uring_prep_nop(sqe);
    else
      io_uring_prep_madvise(sqe, addr_, static_cast<off_t>(len_), advice_);
  }
  result<void> await_resume() const noexcept {
    if (too_long()) return fail(std::make_error_code(std::errc::invalid_argument));
    if (auto ec = error()) return fail(ec);
    return ok();
  }

 private:
  bool too_long() const noexcept { return len_ > 0xffffffffu; }
  void* addr_;
  std::size_t len_;
  int advice_;
};
inline madvise_op madvise(void* addr, std::size_t len, int advice) noexcept { return madvise_op(addr, len, advice); }

}  // namespace yutu::io
