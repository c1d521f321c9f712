// task<T>: the lazy, move-only coroutine type every yutu operation returns.
//
// A task does nothing until it is awaited; awaiting it transfers control to it symmetrically, and its
// final_suspend transfers back to the awaiter, so chains of co_await of any depth never grow the stack.
// Exceptions thrown in the body propagate to the awaiter. A task carries a std::stop_token that it
// inherits from the task awaiting it unless one was set explicitly (with_stop_token); awaitables that
// can wait (I/O, timers, sync primitives) read it through the promise, which is how when_any and
// deadlines cancel work several frames down without threading a token through every signature.
#pragma once

#include <cassert>
#include <coroutine>
#include <exception>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

#include "yutu/coro/detail/frame_pool.hpp"

namespace yutu::coro {

template <class T = void>
class task;

namespace detail {

// Promises that carry a stop token expose it through this interface.
class stop_token_holder {
 public:
  const std::stop_token& stop_token() const noexcept { return token_; }
  void set_stop_token(std::stop_token t) noexcept {
    token_ = std::move(t);
    explicit_ = true;
  }
  void inherit_stop_token(const std::stop_token& t) noexcept {
    if (!explicit_) token_ = t;
  }

 private:
  std::stop_token token_;
  bool explicit_ = false;
};

template <class P>
concept has_stop_token = requires(const P& p) {
  { p.stop_token() } -> std::convertible_to<const std::stop_token&>;
};

// The stop token of the coroutine behind `h`, or an empty one.
template <class P>
std::stop_token stop_token_of(std::coroutine_handle<P> h) noexcept {
  if constexpr (has_stop_token<P>)
    return h.promise().stop_token();
  else
    return {};
}

class task_promise_base : public stop_token_holder, public pooled_frame {
 public:
  struct final_awaiter {
    bool await_ready() const noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      auto c = h.promise().continuation_;
      return c ? c : std::noop_coroutine();
    }
    void await_resume() noexcept {}
  };

  std::suspend_always initial_suspend() noexcept { return {}; }
  final_awaiter final_suspend() noexcept { return {}; }
  void set_continuation(std::coroutine_handle<> c) noexcept { continuation_ = c; }

 private:
  std::coroutine_handle<> continuation_;
};

template <class T>
class task_promise final : public task_promise_base {
 public:
  task<T> get_return_object() noexcept;

  template <class U>
    requires std::is_convertible_v<U&&, T>
  void return_value(U&& v) noexcept(std::is_nothrow_constructible_v<T, U&&>) {
    value_.template emplace<1>(std::forward<U>(v));
  }
  void unhandled_exception() noexcept { value_.template emplace<2>(std::current_exception()); }

  T& result() & {
    if (value_.index() == 2) std::rethrow_exception(std::get<2>(value_));
    assert(value_.index() == 1 && "task result read before completion");
    return std::get<1>(value_);
  }
  T&& result() && { return std::move(result()); }

 private:
  std::variant<std::monostate, T, std::exception_ptr> value_;
};

template <class T>
class task_promise<T&> final : public task_promise_base {
 public:
  task<T&> get_return_object() noexcept;
  void return_value(T& v) noexcept { value_ = std::addressof(v); }
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  T& result() {
    if (exception_) std::rethrow_exception(exception_);
    return *value_;
  }

 private:
  T* value_ = nullptr;
  std::exception_ptr exception_;
};

template <>
class task_promise<void> final : public task_promise_base {
 public:
  task<void> get_return_object() noexcept;
  void return_void() noexcept {}
  void unhandled_exception() noexcept { exception_ = std::current_exception(); }
  void result() {
    if (exception_) std::rethrow_exception(exception_);
  }

 private:
  std::exception_ptr exception_;
};

}  // namespace detail

template <class T>
class [[nodiscard]] task {
 public:
  using promise_type = detail::task_promise<T>;
  using value_type = T;

  task() noexcept = default;
  explicit task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  task(task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  task& operator=(task&& o) noexcept {
    if (this != &o) {
      destroy();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  task(const task&) = delete;
  task& operator=(const task&) = delete;
  ~task() { destroy(); }

  bool valid() const noexcept { return static_cast<bool>(h_); }
  bool done() const noexcept { return !h_ || h_.done(); }

  // Sets the token this task (and what it awaits) observes, instead of inheriting the awaiter's.
  task&& with_stop_token(std::stop_token t) && noexcept {
    h_.promise().set_stop_token(std::move(t));
    return std::move(*this);
  }

  auto operator co_await() & noexcept { return awaiter<false>{h_}; }
  auto operator co_await() && noexcept { return awaiter<true>{h_}; }

  // For combinators and drivers that start the coroutine themselves.
  std::coroutine_handle<promise_type> handle() const noexcept { return h_; }
  std::coroutine_handle<promise_type> release() noexcept { return std::exchange(h_, {}); }

 private:
  template <bool Move>
  struct awaiter {
    std::coroutine_handle<promise_type> h;
    bool await_ready() const noexcept { return !h || h.done(); }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> caller) noexcept {
      h.promise().set_continuation(caller);
      h.promise().inherit_stop_token(detail::stop_token_of(caller));
      return h;
    }
    decltype(auto) await_resume() {
      assert(h && "awaiting an empty task");
      if constexpr (Move)
        return std::move(h.promise()).result();
      else
        return h.promise().result();
    }
  };

  void destroy() noexcept {
    if (h_) h_.destroy();
  }

  std::coroutine_handle<promise_type> h_;
};

namespace detail {
template <class T>
task<T> task_promise<T>::get_return_object() noexcept {
  return task<T>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
template <class T>
task<T&> task_promise<T&>::get_return_object() noexcept {
  return task<T&>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
inline task<void> task_promise<void>::get_return_object() noexcept {
  return task<void>{std::coroutine_handle<task_promise>::from_promise(*this)};
}
}  // namespace detail

// `co_await get_stop_token()` yields the stop token of the calling task without suspending.
struct get_stop_token_t {
  std::stop_token token;
  bool await_ready() const noexcept { return false; }
  template <class P>
  bool await_suspend(std::coroutine_handle<P> h) noexcept {
    token = detail::stop_token_of(h);
    return false;
  }
  std::stop_token await_resume() noexcept { return std::move(token); }
};
inline get_stop_token_t get_stop_token() noexcept { return {}; }

// The type `co_await a` produces.
template <class A>
using await_result_t = decltype(std::declval<A>().operator co_await().await_resume());

}  // namespace yutu::coro

namespace yutu {
using coro::task;
}
