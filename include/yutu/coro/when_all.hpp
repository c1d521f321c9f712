// when_all: runs several tasks concurrently and completes when every one of them has.
//
// Children start in argument (or range) order on the awaiting thread and inherit the awaiting task's
// stop token. Completion is counted with an atomic, so children may finish on other threads (after
// hopping reactors); the awaiting task then resumes on the thread where the LAST child finished (or
// simply continues on its own thread if every child had finished by the time the last one was
// started), and must hop back itself if it cares (co_await r.schedule()). Exceptions are rethrown only after every
// child has finished: the one from the lowest-indexed child that threw; the others are dropped.
//
//   auto [a, b] = co_await when_all(fetch(x), fetch(y));      // task<std::tuple<A, B>>
//   std::vector<R> rs = co_await when_all(std::move(tasks));  // task<std::vector<R>>
//
// In the variadic form a task<void> contributes std::monostate and task<T&> a T&. The range form over
// task<void> returns task<void> (a vector of monostate would carry nothing); over task<T&> it returns
// std::vector<std::reference_wrapper<T>>. Values are moved out of the children, never copied.
#pragma once

#include <array>
#include <atomic>
#include <coroutine>
#include <cstddef>
#include <stop_token>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#include "yutu/coro/detail/child.hpp"
#include "yutu/coro/task.hpp"

namespace yutu::coro {
namespace detail {

class when_all_group : public child_sink {
 public:
  explicit when_all_group(std::size_t children) noexcept : remaining_(children + 1) { child_done = &done; }

  std::stop_token child_token(const std::stop_token& awaiting) const noexcept { return awaiting; }

  std::atomic<std::size_t> remaining_;
  std::coroutine_handle<> parent_;

 private:
  static std::coroutine_handle<> done(child_sink* s, std::size_t) noexcept {
    auto* self = static_cast<when_all_group*>(s);
    // acq_rel: every child's result is visible to whoever resumes the parent.
    if (self->remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) return self->parent_;
    return std::noop_coroutine();
  }
};

template <class T>
using when_all_range_value_t = std::conditional_t<std::is_void_v<T>, void, stored_value_t<T>>;
template <class T>
using when_all_range_result_t =
    std::conditional_t<std::is_void_v<T>, void, std::vector<when_all_range_value_t<T>>>;

}  // namespace detail

template <class... Ts>
task<std::tuple<detail::child_value_t<Ts>...>> when_all(task<Ts>... tasks) {
  std::array<detail::child_task, sizeof...(Ts)> children{detail::make_child(tasks)...};
  detail::when_all_group group(sizeof...(Ts));
  co_await detail::start_children<detail::when_all_group>{group, children.data(), children.size()};
  // Braced initialisation evaluates in order: the lowest-indexed exception is the one rethrown.
  co_return std::tuple<detail::child_value_t<Ts>...>{detail::take_result(tasks)...};
}

template <class T>
task<detail::when_all_range_result_t<T>> when_all(std::vector<task<T>> tasks) {
  std::vector<detail::child_task> children;
  children.reserve(tasks.size());
  for (task<T>& t : tasks) children.push_back(detail::make_child(t));
  detail::when_all_group group(children.size());
  co_await detail::start_children<detail::when_all_group>{group, children.data(), children.size()};
  if constexpr (std::is_void_v<T>) {
    for (task<T>& t : tasks) t.handle().promise().result();
  } else {
    std::vector<detail::when_all_range_value_t<T>> out;
    out.reserve(tasks.size());
    for (task<T>& t : tasks) out.emplace_back(detail::take_result(t));
    co_return std::move(out);
  }
}

}  // namespace yutu::coro

namespace yutu {
using coro::when_all;
}
