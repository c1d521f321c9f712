// sync_wait: blocks a plain (non-reactor) thread until a task completes, wherever it completes.
//
// The task starts on the calling thread and may hop to reactor threads (co_await r.schedule()); the
// caller sleeps until the final resumption, then returns the value or rethrows. Driving a reactor from
// the calling thread is reactor::block_on's job, not this one's.
//
// The completion is signalled with a mutex and a condition variable, notified under the lock: with an
// atomic flag, the caller could see it set, return and destroy the frame while the finishing thread
// was still inside notify() on that frame.
#pragma once

#include <condition_variable>
#include <coroutine>
#include <exception>
#include <mutex>
#include <stop_token>
#include <utility>

#include "yutu/coro/task.hpp"

namespace yutu::coro {
namespace detail {

class sync_wait_task {
 public:
  struct promise_type {
    std::mutex mutex;
    std::condition_variable cv;
    bool done = false;
    sync_wait_task get_return_object() noexcept {
      return sync_wait_task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        promise_type& p = h.promise();
        std::lock_guard lock(p.mutex);
        p.done = true;
        p.cv.notify_one();
      }
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
  explicit sync_wait_task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  sync_wait_task(sync_wait_task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  ~sync_wait_task() {
    if (h_) h_.destroy();
  }
  void run_and_wait() noexcept {
    h_.resume();
    promise_type& p = h_.promise();
    std::unique_lock lock(p.mutex);
    p.cv.wait(lock, [&] { return p.done; });
  }

 private:
  std::coroutine_handle<promise_type> h_;
};

template <class T>
sync_wait_task make_sync_wait_task(task<T>& t) {
  try {
    (void)co_await t;
  } catch (...) {
    // Rethrown from t's promise by sync_wait.
  }
}

}  // namespace detail

// Runs `t` to completion and returns its result (rethrowing its exception).
template <class T>
decltype(auto) sync_wait(task<T> t) {
  auto w = detail::make_sync_wait_task(t);
  w.run_and_wait();
  if constexpr (std::is_void_v<T>)
    t.handle().promise().result();
  else if constexpr (std::is_reference_v<T>)
    return t.handle().promise().result();
  else
    return T(std::move(t.handle().promise()).result());
}

// As sync_wait(t), with `token` as the task's stop token.
template <class T>
decltype(auto) sync_wait(task<T> t, std::stop_token token) {
  return sync_wait(std::move(t).with_stop_token(std::move(token)));
}

}  // namespace yutu::coro

namespace yutu {
using coro::sync_wait;
}
