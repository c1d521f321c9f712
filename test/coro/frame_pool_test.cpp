// frame_pool: coroutine frames are reused on their thread, bounded per size class, and a frame freed
// on another thread or after that thread's lists are gone is still freed correctly.
#include <doctest/doctest.h>

#include <array>
#include <cstddef>
#include <thread>
#include <vector>

#include "yutu/coro/detail/frame_pool.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/task.hpp"

using yutu::task;
using yutu::coro::detail::frame_pool;

namespace {

// Not inlined: clang may otherwise elide a frame whose whole life it sees (its allocation then never
// reaches the pool, which is what elision is for, but not what these tests look at).
[[gnu::noinline]] task<int> small(int v) { co_return v + 1; }

// A frame larger than the pool serves: it bypasses the lists.
[[gnu::noinline, maybe_unused]] task<int> large(int v) {
  std::array<char, 8192> pad{};
  pad[static_cast<std::size_t>(v) % pad.size()] = 1;
  co_return v + pad[0];
}

// The address of a task's frame (the coroutine handle's address is the frame's start under both
// g++ and clang).
template <class T>
void* frame_of(task<T>& t) {
  return t.handle().address();
}

}  // namespace

#if YUTU_FRAME_POOL

TEST_CASE("a finished task's frame is reused by the next task of its size on the same thread") {
  void* first = nullptr;
  {
    auto t = small(1);
    first = frame_of(t);
    CHECK(yutu::sync_wait(std::move(t)) == 2);
  }
  const std::size_t kept = frame_pool::cached_frames();
  CHECK(kept >= 1);
  auto t2 = small(2);
  CHECK(frame_of(t2) == first);
  CHECK(frame_pool::cached_frames() == kept - 1);
  CHECK(yutu::sync_wait(std::move(t2)) == 3);
}

TEST_CASE("a size class keeps at most kept_bytes of frames; the rest go back to malloc") {
  std::vector<task<int>> ts;
  for (int i = 0; i < 5000; ++i) ts.push_back(small(i));
  const std::size_t before = frame_pool::cached_frames();
  ts.clear();
  const std::size_t added = frame_pool::cached_frames() - before;
  CHECK(added > 0);
  CHECK(added <= frame_pool::kept_bytes / yutu::coro::detail::frame_granule);
  CHECK(added < 5000);
}

TEST_CASE("frames over the pool's largest class bypass it") {
  const std::size_t before = frame_pool::cached_frames();
  CHECK(yutu::sync_wait(large(3)) == 3);
  CHECK(frame_pool::cached_frames() == before);
}

TEST_CASE("a frame made on one thread and destroyed on another joins that thread's lists") {
  auto t = small(7);
  void* addr = frame_of(t);
  std::size_t kept_there = 0;
  std::size_t kept_after_free = 0;
  bool reused_there = false;
  std::thread th([&] {
    // This thread has allocated nothing yet, so its lists are not armed: the frame is freed.
    { auto moved = std::move(t); }
    kept_there = frame_pool::cached_frames();
    // Arm by allocating, then free: now kept, and reused on this thread.
    std::vector<task<int>> held;
    held.push_back(small(1));
    void* a = frame_of(held.back());
    held.clear();
    kept_after_free = frame_pool::cached_frames();
    held.push_back(small(2));
    reused_there = frame_of(held.back()) == a;
    CHECK(yutu::sync_wait(std::move(held.back())) == 3);
  });
  th.join();
  (void)addr;
  CHECK(kept_there == 0);
  CHECK(kept_after_free == 1);
  CHECK(reused_there);
}

#else

TEST_CASE("frame_pool is off under AddressSanitizer") {
  // Skipped on purpose: the pool would hide a use of a destroyed frame from ASan.
  const std::size_t before = frame_pool::cached_frames();
  { auto t = small(1); }
  CHECK(frame_pool::cached_frames() == before);
}

#endif
