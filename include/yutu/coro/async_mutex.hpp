// async_mutex: mutual exclusion between coroutines, FIFO-fair, with a cancellable lock().
//
// unlock() hands the mutex directly to the longest waiter instead of releasing it, so no newcomer
// (try_lock or a fresh lock()) can barge ahead of a queued waiter and nobody starves. A lock() still
// queued when the awaiting task's stop token fires ends with operation_canceled and without the mutex.
// Any thread may lock and unlock; a waiter resumes on the executor it suspended on (see
// detail/waiter.hpp). Not recursive.
//
//   auto guard = co_await m.lock();
//   if (!guard) co_return fail(guard.error());
//   ...                                   // unlocked when `guard` goes out of scope
#pragma once

#include <cassert>
#include <coroutine>
#include <mutex>
#include <utility>

#include "yutu/coro/detail/waiter.hpp"
#include "yutu/error.hpp"

namespace yutu::coro {

class async_mutex;

// Owns a locked async_mutex and unlocks it on destruction. Move-only.
class async_mutex_lock {
 public:
  async_mutex_lock() noexcept = default;
  // Adopts `m`, which the caller has locked.
  explicit async_mutex_lock(async_mutex& m) noexcept : m_(&m) {}
  async_mutex_lock(async_mutex_lock&& o) noexcept : m_(std::exchange(o.m_, nullptr)) {}
  async_mutex_lock& operator=(async_mutex_lock&& o) noexcept {
    if (this != &o) {
      unlock();
      m_ = std::exchange(o.m_, nullptr);
    }
    return *this;
  }
  async_mutex_lock(const async_mutex_lock&) = delete;
  async_mutex_lock& operator=(const async_mutex_lock&) = delete;
  ~async_mutex_lock() { unlock(); }

  bool owns_lock() const noexcept { return m_ != nullptr; }
  explicit operator bool() const noexcept { return owns_lock(); }
  async_mutex* mutex() const noexcept { return m_; }
  // Gives up ownership without unlocking.
  async_mutex* release() noexcept { return std::exchange(m_, nullptr); }
  inline void unlock() noexcept;

 private:
  async_mutex* m_ = nullptr;
};

class async_mutex {
 public:
  async_mutex() noexcept = default;
  async_mutex(const async_mutex&) = delete;
  async_mutex& operator=(const async_mutex&) = delete;
  ~async_mutex() { assert(waiters_.empty() && "async_mutex destroyed while tasks wait on it"); }

  // Takes the mutex if it is free (and so nobody waits); never waits.
  bool try_lock() noexcept {
    std::lock_guard lock(mutex_);
    if (locked_) return false;
    locked_ = true;
    return true;
  }

  // Unlocks, or hands the mutex to the longest waiter. Call only while holding it.
  void unlock() noexcept {
    detail::waiter* next;
    {
      std::lock_guard lock(mutex_);
      assert(locked_ && "unlock of an async_mutex that is not locked");
      next = waiters_.pop_front();
      if (!next) locked_ = false;
    }
    if (next) next->wake({});
  }

  class lock_awaiter : detail::waiter {
   public:
    explicit lock_awaiter(async_mutex& m) noexcept : waiter(&cancel), m_(&m) {}

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
      begin(h);
      {
        std::lock_guard lock(m_->mutex_);
        if (!m_->locked_) {
          m_->locked_ = true;
          return false;
        }
        if (stop_already_requested()) return false;
        m_->waiters_.push_back(*this);
      }
      return arm();
    }
    // The guard, or operation_canceled (without the mutex).
    result<async_mutex_lock> await_resume() noexcept {
      if (auto ec = finish()) return fail(ec);
      return async_mutex_lock(*m_);
    }

   private:
    static void cancel(detail::waiter* w) noexcept {
      auto* self = static_cast<lock_awaiter*>(w);
      {
        std::lock_guard lock(self->m_->mutex_);
        if (!w->queued) return;  // the mutex was already handed to it: the lock stands
        self->m_->waiters_.remove(*w);
      }
      w->wake(detail::canceled_code());
    }

    async_mutex* m_;
  };

  // `co_await m.lock()` -> result<async_mutex_lock>.
  [[nodiscard]] lock_awaiter lock() noexcept { return lock_awaiter(*this); }

 private:
  std::mutex mutex_;
  bool locked_ = false;
  detail::waiter_queue waiters_;
};

inline void async_mutex_lock::unlock() noexcept {
  if (m_) std::exchange(m_, nullptr)->unlock();
}

}  // namespace yutu::coro

namespace yutu {
using coro::async_mutex;
using coro::async_mutex_lock;
}
