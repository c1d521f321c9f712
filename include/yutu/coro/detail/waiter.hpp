// Internals of the synchronisation primitives: the intrusive waiter every awaiter embeds, the FIFO
// queue it waits in, and the handshake that lets a wake-up, a cancellation and the suspension itself
// race from different threads while the coroutine is still resumed exactly once, on its own thread.
//
// Who resumes a waiter is decided under the primitive's lock: whoever takes it off the queue (a
// set/unlock/release/send, or the stop callback) owns its wake-up, and calls wake() after unlocking.
// wake() may run before the suspending thread has finished await_suspend (the stop callback is
// registered only after the waiter was queued and the lock dropped); the `phase_` exchange settles
// that: whichever of wake() and arm() comes second resumes, and if that is arm(), await_suspend just
// returns false and the coroutine continues on its own thread.
//
// A woken waiter is resumed through the executor it suspended on (recorded at suspension), even when
// the waker runs on that same thread: wake-ups then never nest on the stack (a chain of mutex
// hand-offs would otherwise recurse once per waiter) and never run inside the waker's locks or a
// request_stop(). Only on a plain thread, with no executor, is it resumed inline by the waker.
#pragma once

#include <atomic>
#include <coroutine>
#include <optional>
#include <stop_token>
#include <system_error>
#include <utility>

#include "yutu/coro/executor.hpp"
#include "yutu/coro/task.hpp"

namespace yutu::coro::detail {

class waiter : public resume_item {
 public:
  // Called by the stop callback (any thread). Takes the primitive's lock and, if `w` is still queued,
  // removes it and calls w->wake(operation_canceled) after unlocking.
  using cancel_fn = void (*)(waiter* w) noexcept;

  explicit waiter(cancel_fn on_stop) noexcept : on_stop_(on_stop) {}
  waiter(const waiter&) = delete;
  waiter& operator=(const waiter&) = delete;

  // In await_suspend, before taking the primitive's lock.
  template <class P>
  void begin(std::coroutine_handle<P> h) noexcept {
    handle = h;
    exec_ = current_executor();
    token_ = stop_token_of(h);
  }
  // Under the lock, once the fast path failed: true (and status = canceled) when there is no point
  // in queuing because a stop was already requested.
  bool stop_already_requested() noexcept {
    if (!token_.stop_requested()) return false;
    status = std::make_error_code(std::errc::operation_canceled);
    return true;
  }
  // After queuing, with the lock released. Returns what await_suspend returns.
  bool arm() noexcept {
    if (token_.stop_possible()) stop_cb_.emplace(token_, stop_hook{this});
    return phase_.exchange(suspended, std::memory_order_acq_rel) != woken;
  }
  // By whoever took the waiter off its queue, outside the lock. The waiter may be gone afterwards.
  void wake(std::error_code ec) noexcept {
    status = ec;
    if (phase_.exchange(woken, std::memory_order_acq_rel) == suspended) {
      if (exec_)
        exec_->post(this);
      else
        handle.resume();
    }
  }
  // In await_resume: deregisters the stop callback (waiting for one running on another thread) and
  // returns how the wait ended.
  std::error_code finish() noexcept {
    stop_cb_.reset();
    return status;
  }

  // Set by the waker before wake(); read in await_resume.
  std::error_code status;
  // Queue links and membership, guarded by the primitive's lock.
  waiter* qnext = nullptr;
  waiter* qprev = nullptr;
  bool queued = false;

 private:
  struct stop_hook {
    waiter* w;
    void operator()() const noexcept { w->on_stop_(w); }
  };
  enum : unsigned char { suspending, suspended, woken };

  executor* exec_ = nullptr;
  std::stop_token token_;
  std::atomic<unsigned char> phase_{suspending};
  std::optional<std::stop_callback<stop_hook>> stop_cb_;
  cancel_fn on_stop_;
};

// Intrusive FIFO of waiters; the owner holds its lock around every call.
class waiter_queue {
 public:
  bool empty() const noexcept { return head_ == nullptr; }
  waiter* front() const noexcept { return head_; }

  void push_back(waiter& w) noexcept {
    w.qnext = nullptr;
    w.qprev = tail_;
    if (tail_)
      tail_->qnext = &w;
    else
      head_ = &w;
    tail_ = &w;
    w.queued = true;
  }
  void remove(waiter& w) noexcept {
    if (w.qprev)
      w.qprev->qnext = w.qnext;
    else
      head_ = w.qnext;
    if (w.qnext)
      w.qnext->qprev = w.qprev;
    else
      tail_ = w.qprev;
    w.qnext = w.qprev = nullptr;
    w.queued = false;
  }
  waiter* pop_front() noexcept {
    waiter* w = head_;
    if (w) remove(*w);
    return w;
  }
  // Empties the queue; the waiters stay linked through qnext, in order, for wake_all.
  waiter* take_all() noexcept {
    for (waiter* w = head_; w; w = w->qnext) w->queued = false;
    return std::exchange(head_, tail_ = nullptr);
  }

 private:
  waiter* head_ = nullptr;
  waiter* tail_ = nullptr;
};

// A list of waiters taken off their queue under the lock, to be woken after unlocking.
class wake_list {
 public:
  void push_back(waiter& w) noexcept {
    w.qnext = nullptr;
    if (tail_)
      tail_->qnext = &w;
    else
      head_ = &w;
    tail_ = &w;
  }
  void append_chain(waiter* chain) noexcept {
    while (chain) {
      waiter* next = chain->qnext;
      push_back(*chain);
      chain = next;
    }
  }
  // Wakes every waiter with `ec`, reading each link before the waiter can disappear.
  void wake_all(std::error_code ec) noexcept {
    waiter* w = std::exchange(head_, tail_ = nullptr);
    while (w) {
      waiter* next = w->qnext;
      w->wake(ec);
      w = next;
    }
  }

 private:
  waiter* head_ = nullptr;
  waiter* tail_ = nullptr;
};

inline std::error_code canceled_code() noexcept { return std::make_error_code(std::errc::operation_canceled); }

}  // namespace yutu::coro::detail
