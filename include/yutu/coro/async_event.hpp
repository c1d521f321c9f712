// async_event: a manual-reset event that coroutines wait on without blocking their thread.
//
// set() releases every current waiter and lets later waits through until reset(). A wait ends with
// operation_canceled if the awaiting task's stop token fires first (a set event never reports
// cancellation: `co_await ev.wait()` on a set event is ok even under a stop request). Any thread may
// set, reset or wait; a waiter resumes on the executor it suspended on (see detail/waiter.hpp).
// Waiting allocates nothing: the waiter lives in the awaiter, in the waiting coroutine's frame.
//
//   if (auto r = co_await ready.wait(); !r) co_return fail(r.error());
#pragma once

#include <atomic>
#include <cassert>
#include <coroutine>
#include <mutex>

#include "yutu/coro/detail/waiter.hpp"
#include "yutu/error.hpp"

namespace yutu::coro {

class async_event {
 public:
  explicit async_event(bool initially_set = false) noexcept : set_(initially_set) {}
  async_event(const async_event&) = delete;
  async_event& operator=(const async_event&) = delete;
  ~async_event() { assert(waiters_.empty() && "async_event destroyed while tasks wait on it"); }

  bool is_set() const noexcept { return set_.load(std::memory_order_acquire); }

  // Wakes every waiter; waits started afterwards complete at once until reset().
  void set() noexcept {
    detail::wake_list woken;
    {
      std::lock_guard lock(mutex_);
      set_.store(true, std::memory_order_release);
      woken.append_chain(waiters_.take_all());
    }
    woken.wake_all({});
  }
  void reset() noexcept { set_.store(false, std::memory_order_release); }

  class wait_awaiter : detail::waiter {
   public:
    explicit wait_awaiter(async_event& ev) noexcept : waiter(&cancel), ev_(&ev) {}

    bool await_ready() const noexcept { return ev_->is_set(); }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
      begin(h);
      {
        std::lock_guard lock(ev_->mutex_);
        if (ev_->set_.load(std::memory_order_relaxed)) return false;
        if (stop_already_requested()) return false;
        ev_->waiters_.push_back(*this);
      }
      return arm();
    }
    result<void> await_resume() noexcept {
      if (auto ec = finish()) return fail(ec);
      return ok();
    }

   private:
    static void cancel(detail::waiter* w) noexcept {
      auto* self = static_cast<wait_awaiter*>(w);
      {
        std::lock_guard lock(self->ev_->mutex_);
        if (!w->queued) return;
        self->ev_->waiters_.remove(*w);
      }
      w->wake(detail::canceled_code());
    }

    async_event* ev_;
  };

  // `co_await ev.wait()` -> result<void>: ok once set, operation_canceled on a stop request.
  [[nodiscard]] wait_awaiter wait() noexcept { return wait_awaiter(*this); }

 private:
  std::atomic<bool> set_;
  std::mutex mutex_;
  detail::waiter_queue waiters_;
};

}  // namespace yutu::coro

namespace yutu {
using coro::async_event;
}
