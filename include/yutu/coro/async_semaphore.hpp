// async_semaphore: a counting semaphore for coroutines (bounding in-flight transfers, buffer credits).
//
// Waiters are served strictly in FIFO order: a waiter asking for more units than are available holds
// back the smaller requests queued behind it, so large requests cannot starve. release(n) hands units
// straight to the waiters it can satisfy. An acquire still queued when the awaiting task's stop token
// fires ends with operation_canceled and takes nothing (and its departure may let those behind it
// through). Any thread may acquire and release; a waiter resumes on the executor it suspended on
// (see detail/waiter.hpp).
//
//   if (auto r = co_await credits.acquire(); !r) co_return fail(r.error());
//   ...
//   credits.release();
#pragma once

#include <cassert>
#include <coroutine>
#include <cstddef>
#include <mutex>

#include "yutu/coro/detail/waiter.hpp"
#include "yutu/error.hpp"

namespace yutu::coro {

class async_semaphore {
 public:
  explicit async_semaphore(std::size_t initial) noexcept : count_(initial) {}
  async_semaphore(const async_semaphore&) = delete;
  async_semaphore& operator=(const async_semaphore&) = delete;
  ~async_semaphore() { assert(waiters_.empty() && "async_semaphore destroyed while tasks wait on it"); }

  // Units available now (a snapshot).
  std::size_t available() const noexcept {
    std::lock_guard lock(mutex_);
    return count_;
  }

  // Takes `n` units if they are available and nobody is queued; never waits.
  bool try_acquire(std::size_t n = 1) noexcept {
    std::lock_guard lock(mutex_);
    if (!waiters_.empty() || count_ < n) return false;
    count_ -= n;
    return true;
  }

  // Returns `n` units, waking the waiters at the front that they satisfy.
  void release(std::size_t n = 1) noexcept {
    detail::wake_list woken;
    {
      std::lock_guard lock(mutex_);
      count_ += n;
      grant_locked(woken);
    }
    woken.wake_all({});
  }

  class acquire_awaiter : detail::waiter {
   public:
    acquire_awaiter(async_semaphore& s, std::size_t n) noexcept : waiter(&cancel), s_(&s), want_(n) {}

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
      begin(h);
      {
        std::lock_guard lock(s_->mutex_);
        if (s_->waiters_.empty() && s_->count_ >= want_) {
          s_->count_ -= want_;
          return false;
        }
        if (stop_already_requested()) return false;
        s_->waiters_.push_back(*this);
      }
      return arm();
    }
    result<void> await_resume() noexcept {
      if (auto ec = finish()) return fail(ec);
      return ok();
    }

   private:
    friend class async_semaphore;

    static void cancel(detail::waiter* w) noexcept {
      auto* self = static_cast<acquire_awaiter*>(w);
      async_semaphore& s = *self->s_;
      detail::wake_list woken;
      {
        std::lock_guard lock(s.mutex_);
        if (!w->queued) return;  // already granted: the acquire stands
        s.waiters_.remove(*w);
        // It may have been the front waiter holding back smaller requests.
        s.grant_locked(woken);
      }
      woken.wake_all({});
      w->wake(detail::canceled_code());
    }

    async_semaphore* s_;
    std::size_t want_;
  };

  // `co_await s.acquire(n)` -> result<void>: ok once `n` units are taken, or operation_canceled.
  [[nodiscard]] acquire_awaiter acquire(std::size_t n = 1) noexcept { return acquire_awaiter(*this, n); }

 private:
  void grant_locked(detail::wake_list& woken) noexcept {
    while (detail::waiter* w = waiters_.front()) {
      auto* a = static_cast<acquire_awaiter*>(w);
      if (count_ < a->want_) break;
      count_ -= a->want_;
      waiters_.remove(*w);
      woken.push_back(*w);
    }
  }

  mutable std::mutex mutex_;
  std::size_t count_;
  detail::waiter_queue waiters_;
};

}  // namespace yutu::coro

namespace yutu {
using coro::async_semaphore;
}
