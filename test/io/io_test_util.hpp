// Helpers shared by the io tests: a detached coroutine to run a second party (a server, a peer) on
// the same reactor as the test body, and a byte pattern that makes misplaced data visible.
#pragma once

#include <cstddef>
#include <cstdint>
#include <exception>
#include <span>
#include <vector>

#include "yutu/coro/task.hpp"

namespace yutu::test {

// Fire-and-forget: starts at once, destroys itself at the end. The task it awaits owns the state.
struct detached {
  struct promise_type {
    detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

// Runs `t` to completion in the background of the calling reactor thread; `done` counts finishes.
inline detached spawn(task<void> t, int* done = nullptr) {
  co_await std::move(t);
  if (done) ++*done;
}

inline std::vector<std::byte> pattern(std::size_t n, std::uint32_t seed = 1) {
  std::vector<std::byte> v(n);
  std::uint32_t x = seed * 2654435761u + 1;
  for (auto& b : v) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    b = static_cast<std::byte>(x);
  }
  return v;
}

}  // namespace yutu::test
