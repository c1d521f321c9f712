// start(task): begin a task now and await its result later.
//
// Tasks are lazy, which is right for composition but not for overlap: a prefill loop wants the write
// of layer i in flight while it computes layer i+1. `auto w = start(te.write(...))` runs the task on
// the calling thread until its first suspension and returns a handle; `co_await w` (or
// when_all(std::move(handles))) yields the result once it finished, wherever it finished. A started
// handle must be awaited before it is destroyed (destroying a running one is a broken invariant).
#pragma once

#include <atomic>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

#include "yutu/coro/task.hpp"

namespace yutu::coro {

namespace detail {
template <class P, class T>
struct started_return {
  template <class U>
  void return_value(U&& v) {
    static_cast<P*>(this)->value.template emplace<1>(std::forward<U>(v));
  }
};
template <class P>
struct started_return<P, void> {
  void return_void() { static_cast<P*>(this)->value.template emplace<1>(); }
};
}  // namespace detail

template <class T>
class [[nodiscard]] started {
  using stored_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

 public:
  struct promise_type : detail::stop_token_holder, detail::pooled_frame, detail::started_return<promise_type, T> {
    std::variant<std::monostate, stored_t, std::exception_ptr> value;
    // nullptr: running, nobody waiting; done_tag(): finished; anything else: the waiter's address.
    std::atomic<void*> state{nullptr};

    started get_return_object() noexcept {
      return started{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_never initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        void* prev = h.promise().state.exchange(done_tag(), std::memory_order_acq_rel);
        if (prev && prev != done_tag()) return std::coroutine_handle<>::from_address(prev);
        return std::noop_coroutine();
      }
      void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void unhandled_exception() noexcept { value.template emplace<2>(std::current_exception()); }
  };

  started(started&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  started& operator=(started&&) = delete;
  ~started() {
    if (!h_) return;
    if (h_.promise().state.load(std::memory_order_acquire) != done_tag()) std::terminate();
    h_.destroy();
  }

  bool done() const noexcept { return h_.promise().state.load(std::memory_order_acquire) == done_tag(); }

  auto operator co_await() noexcept {
    struct awaiter {
      std::coroutine_handle<promise_type> h;
      bool await_ready() const noexcept { return h.promise().state.load(std::memory_order_acquire) == done_tag(); }
      bool await_suspend(std::coroutine_handle<> waiter) noexcept {
        void* expected = nullptr;
        // Fails only if the task finished in between: then continue without suspending.
        return h.promise().state.compare_exchange_strong(expected, waiter.address(), std::memory_order_acq_rel);
      }
      T await_resume() {
        auto& v = h.promise().value;
        if (v.index() == 2) std::rethrow_exception(std::get<2>(v));
        if constexpr (!std::is_void_v<T>) return std::move(std::get<1>(v));
      }
    };
    return awaiter{h_};
  }

 private:
  static void* done_tag() noexcept { return reinterpret_cast<void*>(static_cast<std::uintptr_t>(1)); }
  explicit started(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  std::coroutine_handle<promise_type> h_;
};

namespace detail {
template <class T>
started<T> start_impl(task<T> t) {
  if constexpr (std::is_void_v<T>)
    co_await std::move(t);
  else
    co_return co_await std::move(t);
}
}  // namespace detail

// A started handle as a lazy task, for combinators that take tasks: when_all over a vector of
// as_task(start(...)). The handle is moved into the task's frame, so the temporary may go.
template <class T>
task<T> as_task(started<T> s) {
  if constexpr (std::is_void_v<T>)
    co_await s;
  else
    co_return co_await s;
}

// Starts `t` now on the calling thread. `token` (if given) is the task's stop token.
template <class T>
started<T> start(task<T> t, std::stop_token token = {}) {
  if (token.stop_possible()) t = std::move(t).with_stop_token(std::move(token));
  return detail::start_impl(std::move(t));
}

}  // namespace yutu::coro

namespace yutu {
using coro::as_task;
using coro::start;
using coro::started;
}
