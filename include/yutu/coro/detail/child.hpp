// Internals of when_all and when_any: the small coroutine that runs one child task and reports its
// completion to the combinator that started it.
//
// The child task itself is awaited by reference through run_task_awaiter, which neither reads nor
// rethrows its result: the value or exception stays in the child's promise, where the combinator takes
// it (moved, never copied) once every child has finished. One wrapper type serves every T, so each
// child costs one small frame besides its own.
#pragma once

#include <cassert>
#include <coroutine>
#include <cstddef>
#include <exception>
#include <functional>
#include <stop_token>
#include <type_traits>
#include <utility>
#include <variant>

#include "yutu/coro/task.hpp"

namespace yutu::coro::detail {

// Told when a child has finished; returns the coroutine to transfer to (noop_coroutine() for none).
// Runs in the child's final_suspend, on whichever thread the child finished on.
struct child_sink {
  std::coroutine_handle<> (*child_done)(child_sink* self, std::size_t index) noexcept = nullptr;
};

class child_task {
 public:
  struct promise_type : stop_token_holder, pooled_frame {
    child_sink* sink = nullptr;
    std::size_t index = 0;

    child_task get_return_object() noexcept {
      return child_task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        promise_type& p = h.promise();
        // The frame is suspended here, so the sink may let the combinator destroy it at once.
        return p.sink->child_done(p.sink, p.index);
      }
      void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    // run_task_awaiter cannot throw: the child's exception stays in the child's promise.
    void unhandled_exception() noexcept { std::terminate(); }
  };

  explicit child_task(std::coroutine_handle<promise_type> h) noexcept : h_(h) {}
  child_task(child_task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  child_task& operator=(child_task&&) = delete;
  child_task(const child_task&) = delete;
  ~child_task() {
    if (h_) h_.destroy();
  }

  // Runs the child on the calling thread until its first suspension.
  void start(child_sink& sink, std::size_t index, std::stop_token token) noexcept {
    promise_type& p = h_.promise();
    p.sink = &sink;
    p.index = index;
    p.set_stop_token(std::move(token));
    h_.resume();
  }

 private:
  std::coroutine_handle<promise_type> h_;
};

// Awaits a task without taking its result; the task inherits the awaiting coroutine's stop token.
struct run_task_awaiter {
  task_promise_base* promise;
  std::coroutine_handle<> frame;

  bool await_ready() const noexcept { return false; }
  template <class P>
  std::coroutine_handle<> await_suspend(std::coroutine_handle<P> caller) noexcept {
    promise->set_continuation(caller);
    promise->inherit_stop_token(stop_token_of(caller));
    return frame;
  }
  void await_resume() const noexcept {}
};

inline child_task run_child(run_task_awaiter a) { co_await a; }

template <class T>
child_task make_child(task<T>& t) {
  auto h = t.handle();
  assert(h && !h.done() && "when_all/when_any need unstarted tasks");
  return run_child(run_task_awaiter{&h.promise(), h});
}

// Starts every child in order on the calling thread, then suspends the combinator until the last one
// finished. `Group` is a child_sink with `remaining_` (children + 1: the +1 is this awaiter's, so no
// child can be last while children are still being started), `parent_`, and
// `std::stop_token child_token(const std::stop_token& awaiting)`.
template <class Group>
struct start_children {
  Group& group;
  child_task* children;
  std::size_t count;

  bool await_ready() const noexcept { return count == 0; }
  template <class P>
  bool await_suspend(std::coroutine_handle<P> h) noexcept {
    group.parent_ = h;
    std::stop_token token = group.child_token(stop_token_of(h));
    for (std::size_t i = 0; i < count; ++i) children[i].start(group, i, token);
    // Children that completed synchronously did not resume us; if they all did, carry on.
    return group.remaining_.fetch_sub(1, std::memory_order_acq_rel) > 1;
  }
  void await_resume() const noexcept {}
};

// What a child of type task<T> contributes: void becomes std::monostate.
template <class T>
using child_value_t = std::conditional_t<std::is_void_v<T>, std::monostate, T>;

// As child_value_t, but references become std::reference_wrapper (for variants and vectors).
template <class T>
using stored_value_t =
    std::conditional_t<std::is_reference_v<T>, std::reference_wrapper<std::remove_reference_t<T>>, child_value_t<T>>;

// The finished child's result: an rvalue reference into its promise (so the caller moves it once),
// an lvalue reference for task<T&>, monostate for void; rethrows the child's exception.
template <class T>
decltype(auto) take_result(task<T>& t) {
  auto& p = t.handle().promise();
  if constexpr (std::is_void_v<T>) {
    p.result();
    return std::monostate{};
  } else if constexpr (std::is_reference_v<T>) {
    return p.result();
  } else {
    return std::move(p).result();
  }
}

}  // namespace yutu::coro::detail
