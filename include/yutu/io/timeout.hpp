// with_timeout / with_deadline: bound any task by time, the way the API composes timeouts:
// when_any(task, sleep). When the timer wins, the task is cancelled through its stop token and
// AWAITED (nothing it started outlives the call) before std::errc::timed_out is returned; when the
// task wins, the timer is cancelled the same way. A stop request on the awaiting task reaches both and
// yields the task's own result if it finishes first, operation_canceled otherwise.
//
// task<T> becomes task<result<T>>, and task<result<U>> becomes task<result<U>> (flattened, so a
// timeout is just another error). A task that ignores its stop token delays the return until it ends.
// Must be awaited on a reactor thread (the timer is an io_uring timeout). For a single io_uring
// operation prefer its own `.with_timeout(d)`, a linked timeout, which costs one SQE instead of a task.
//
//   auto r = co_await io::with_timeout(fetch(key), 50ms);
//   if (!r && is_timeout(r.error())) ...
#pragma once

#include <chrono>
#include <type_traits>
#include <utility>
#include <variant>

#include "yutu/coro/task.hpp"
#include "yutu/coro/when_any.hpp"
#include "yutu/error.hpp"
#include "yutu/io/op.hpp"

namespace yutu::io {
namespace detail {

template <class T>
struct timeout_value {
  using type = T;
};
template <class U>
struct timeout_value<result<U>> {
  using type = U;
};

inline task<result<void>> sleep_task(std::chrono::nanoseconds d) { co_return co_await sleep_for(d); }
inline task<result<void>> sleep_until_task(clock::time_point tp) { co_return co_await sleep_until(tp); }

}  // namespace detail

// What with_timeout(task<T>) yields: result<T>, or result<U> when T is already result<U>.
template <class T>
using timeout_result_t = result<typename detail::timeout_value<T>::type>;

namespace detail {

template <class T>
task<timeout_result_t<T>> race_timer(task<T> t, task<result<void>> timer) {
  static_assert(!std::is_reference_v<T>, "with_timeout needs a task returning a value");
  auto v = co_await coro::when_any(std::move(t), std::move(timer));
  if (v.index() == 1) {
    // The timer's own error is the awaiting task's cancellation, not a timeout.
    if (result<void>& r = std::get<1>(v); !r) co_return fail(r.error());
    co_return fail(std::errc::timed_out);
  }
  if constexpr (std::is_void_v<T>)
    co_return ok();
  else
    co_return timeout_result_t<T>(std::move(std::get<0>(v)));
}

}  // namespace detail

template <class T, class Rep, class Period>
task<timeout_result_t<T>> with_timeout(task<T> t, std::chrono::duration<Rep, Period> d) {
  return detail::race_timer(std::move(t),
                            detail::sleep_task(std::chrono::ceil<std::chrono::nanoseconds>(d)));
}

template <class T>
task<timeout_result_t<T>> with_deadline(task<T> t, clock::time_point deadline) {
  return detail::race_timer(std::move(t), detail::sleep_until_task(deadline));
}

}  // namespace yutu::io
