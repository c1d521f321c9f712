// reactor_pool: N threads, each constructing and running its own reactor (so each ring's single
// issuer is the thread that drives it), plus the two ways in from outside: spawn() for detached
// tasks the pool owns, and block_on() for plain threads that need a result.
//
// Shutdown order matters for the lifetime rule: stop_and_join() first waits until every spawned task
// has finished (tasks that loop forever must be stopped through their stop token before), then stops
// the loops and joins the threads; each reactor is destroyed on its own thread, after its loop ended.
// References from at(i) are valid until stop_and_join() returns.
#pragma once

#include <condition_variable>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "yutu/coro/task.hpp"
#include "yutu/io/reactor.hpp"

namespace yutu::io {

class reactor_pool;

namespace detail {

// A self-destroying coroutine that the pool starts on a reactor by posting its resume item.
struct pool_detached {
  struct promise_type {
    coro::resume_item start;
    pool_detached get_return_object() noexcept {
      return {std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    [[noreturn]] void unhandled_exception() noexcept { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
};

// Wakes a plain thread blocked in reactor_pool::block_on. The reactor thread notifies under the lock
// and touches nothing afterwards, so the waiter may destroy the state (and the frames) once it wakes.
struct blocking_state {
  std::mutex m;
  std::condition_variable cv;
  bool done = false;
  void signal() noexcept {
    std::lock_guard lk(m);
    done = true;
    cv.notify_one();
  }
  void wait() {
    std::unique_lock lk(m);
    cv.wait(lk, [this] { return done; });
  }
};

struct blocking_driver {
  struct promise_type {
    blocking_state* st = nullptr;
    blocking_driver get_return_object() noexcept {
      return {std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() noexcept { return false; }
      void await_suspend(std::coroutine_handle<promise_type> h) noexcept { h.promise().st->signal(); }
      void await_resume() noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    [[noreturn]] void unhandled_exception() noexcept { std::terminate(); }
  };
  std::coroutine_handle<promise_type> h;
  ~blocking_driver() {
    if (h) h.destroy();
  }
};

template <class T>
blocking_driver drive_on(reactor& r, task<T>& t) {
  co_await r.schedule();
  try {
    (void)co_await t;
  } catch (...) {
    // Left in t's promise; block_on rethrows it on the calling thread.
  }
}

}  // namespace detail

class reactor_pool {
 public:
  // Starts `threads` threads and returns once every reactor exists; a reactor that fails to construct
  // (io_uring refused) stops the others and rethrows here.
  explicit reactor_pool(std::size_t threads, reactor_options opts = {});
  ~reactor_pool();
  reactor_pool(const reactor_pool&) = delete;
  reactor_pool& operator=(const reactor_pool&) = delete;

  reactor& at(std::size_t i) noexcept { return *reactors_[i]; }
  std::size_t size() const noexcept { return reactors_.size(); }
  // The index of the calling thread's reactor in this pool, or npos when the caller runs on no
  // reactor of this pool (a plain thread, another pool's reactor).
  static constexpr std::size_t npos = static_cast<std::size_t>(-1);
  std::size_t index_of_current() const noexcept {
    const reactor* here = reactor::current();
    if (!here) return npos;
    for (std::size_t i = 0; i < reactors_.size(); ++i)
      if (reactors_[i] == here) return i;
    return npos;
  }

  // Starts `t` on reactor i, detached; the pool destroys it when it completes. An exception escaping
  // it is a broken invariant (std::terminate). Callable from any thread.
  void spawn(std::size_t i, task<void> t);

  // Runs `t` on reactor i and blocks the calling (non-reactor) thread until it completes; returns
  // its value or rethrows its exception. Blocking a thread of this pool on itself would deadlock:
  // std::logic_error.
  template <class T>
  T block_on(std::size_t i, task<T> t);

  // Waits for spawned tasks, then stops every loop and joins the threads. Idempotent.
  void stop_and_join();

  // Spawned tasks not yet finished.
  std::size_t outstanding() const;

 private:
  static detail::pool_detached run_detached(reactor_pool* pool, task<void> t);
  void task_finished() noexcept;
  void check_usable(std::size_t i) const;

  std::vector<reactor*> reactors_;
  std::vector<std::thread> threads_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  std::size_t outstanding_ = 0;
  bool stopped_ = false;
};

template <class T>
T reactor_pool::block_on(std::size_t i, task<T> t) {
  check_usable(i);
  detail::blocking_state st;
  detail::blocking_driver d = detail::drive_on(at(i), t);
  d.h.promise().st = &st;
  d.h.resume();  // hops to reactor i at once
  st.wait();
  if constexpr (std::is_void_v<T>)
    t.handle().promise().result();
  else if constexpr (std::is_reference_v<T>)
    return t.handle().promise().result();
  else
    return T(std::move(t.handle().promise()).result());
}

}  // namespace yutu::io
