// when_any: runs several tasks concurrently; the first to finish wins and the others are cancelled.
//
// Every child gets the token of a stop_source owned by the when_any, linked to the awaiting task's
// token (a stop request there reaches the children too). When the first child finishes, the source
// is stopped, so the losers' waits (I/O, timers, sync primitives) end with operation_canceled; the
// when_any itself returns only after EVERY child has finished, so nothing it started outlives it.
// Children start in order on the awaiting thread; one that finishes synchronously wins before the
// next starts, and the later ones start with their stop already requested. A child that set its own
// token (with_stop_token) is not cancelled, and is still awaited. The awaiting task resumes on the
// thread where the last child finished (as with when_all).
//
// The result is the winner's: its index and value. If the winner threw, its exception is rethrown;
// the losers' results and exceptions are dropped (they were cancelled, after all).
//
//   auto v = co_await when_any(read_a(), read_b());   // task<std::variant<A, B>>, v.index() = winner
//   auto r = co_await when_any(std::move(tasks));     // task<when_any_result<R>> {index, value}
//
// task<void> contributes std::monostate and task<T&> a std::reference_wrapper<T>. The variant is
// built with std::in_place_index, so several children of one type are told apart by index.
#pragma once

#include <array>
#include <atomic>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <stop_token>
#include <tuple>
#include <utility>
#include <variant>
#include <vector>

#include "yutu/coro/detail/child.hpp"
#include "yutu/coro/task.hpp"

namespace yutu::coro {

template <class R>
struct when_any_result {
  std::size_t index;
  R value;
};

namespace detail {

class when_any_group : public child_sink {
 public:
  static constexpr std::size_t none = SIZE_MAX;

  explicit when_any_group(std::size_t children) : remaining_(children + 1) { child_done = &done; }

  // The children's token; the awaiting task's stop request is forwarded to it.
  std::stop_token child_token(const std::stop_token& awaiting) {
    link_.emplace(awaiting, forward_stop{&source_});
    return source_.get_token();
  }
  std::size_t winner() const noexcept { return winner_.load(std::memory_order_acquire); }

  std::atomic<std::size_t> remaining_;
  std::coroutine_handle<> parent_;

 private:
  struct forward_stop {
    std::stop_source* source;
    void operator()() const noexcept { source->request_stop(); }
  };

  static std::coroutine_handle<> done(child_sink* s, std::size_t index) noexcept {
    auto* self = static_cast<when_any_group*>(s);
    std::size_t expected = none;
    // The losers' cancellation runs before our own count drops, so the parent (which owns source_)
    // cannot resume and destroy it while request_stop is running.
    if (self->winner_.compare_exchange_strong(expected, index, std::memory_order_acq_rel))
      self->source_.request_stop();
    if (self->remaining_.fetch_sub(1, std::memory_order_acq_rel) == 1) return self->parent_;
    return std::noop_coroutine();
  }

  std::atomic<std::size_t> winner_{none};
  std::stop_source source_;
  // Declared after source_: destroyed first, waiting for a forward running on another thread.
  std::optional<std::stop_callback<forward_stop>> link_;
};

template <class V, std::size_t I = 0, class Tuple>
V take_winner(std::size_t winner, Tuple& tasks) {
  if constexpr (I + 1 < std::tuple_size_v<Tuple>) {
    if (winner != I) return take_winner<V, I + 1>(winner, tasks);
  }
  return V(std::in_place_index<I>, take_result(std::get<I>(tasks)));
}

}  // namespace detail

template <class... Ts>
task<std::variant<detail::stored_value_t<Ts>...>> when_any(task<Ts>... tasks) {
  static_assert(sizeof...(Ts) > 0, "when_any of nothing never completes");
  std::array<detail::child_task, sizeof...(Ts)> children{detail::make_child(tasks)...};
  detail::when_any_group group(sizeof...(Ts));
  co_await detail::start_children<detail::when_any_group>{group, children.data(), children.size()};
  std::tuple<task<Ts>&...> refs{tasks...};
  co_return detail::take_winner<std::variant<detail::stored_value_t<Ts>...>>(group.winner(), refs);
}

template <class T>
task<when_any_result<detail::stored_value_t<T>>> when_any(std::vector<task<T>> tasks) {
  if (tasks.empty()) throw std::invalid_argument("yutu::when_any of an empty range");
  std::vector<detail::child_task> children;
  children.reserve(tasks.size());
  for (task<T>& t : tasks) children.push_back(detail::make_child(t));
  detail::when_any_group group(children.size());
  co_await detail::start_children<detail::when_any_group>{group, children.data(), children.size()};
  std::size_t w = group.winner();
  co_return when_any_result<detail::stored_value_t<T>>{w, detail::take_result(tasks[w])};
}

}  // namespace yutu::coro

namespace yutu {
using coro::when_any;
using coro::when_any_result;
}
