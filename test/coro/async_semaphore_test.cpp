// async_semaphore: counting, FIFO service (a large request holds back smaller ones), cancellation
// letting those behind through, a concurrency limit, and release racing a stop request.
#include <doctest/doctest.h>

#include <atomic>
#include <stop_token>
#include <vector>

#include "fixtures.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/async_semaphore.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using yutu::async_scope;
using yutu::async_semaphore;
using yutu::result;
using yutu::task;

namespace {
task<result<void>> acquire(async_semaphore& s, std::size_t n) { co_return co_await s.acquire(n); }
}  // namespace

TEST_CASE("units are counted") {
  async_semaphore s(3);
  CHECK(s.available() == 3);
  CHECK(s.try_acquire());
  CHECK(s.try_acquire(2));
  CHECK_FALSE(s.try_acquire());
  CHECK(s.available() == 0);
  s.release(2);
  CHECK(s.available() == 2);
  CHECK(yutu::sync_wait(acquire(s, 2)).has_value());
  CHECK(s.available() == 0);
  CHECK(yutu::sync_wait(acquire(s, 0)).has_value());
  s.release(3);
  CHECK(s.available() == 3);
}

namespace {
task<void> take(async_semaphore& s, std::size_t n, std::vector<int>& order, int id) {
  auto r = co_await s.acquire(n);
  order.push_back(r ? id : -id);
}
task<std::vector<int>> fifo_service() {
  async_semaphore s(1);
  std::vector<int> order;
  async_scope scope;
  scope.spawn(take(s, 3, order, 1));  // waits: only 1 available
  scope.spawn(take(s, 1, order, 2));  // would fit, but waits behind the larger request
  CHECK_FALSE(s.try_acquire());       // no barging past the queue either
  (void)co_await yutu::io::nop();
  CHECK(order.empty());
  s.release(2);  // 3 available: request 1 is served, request 2 still waits (0 left)
  (void)co_await yutu::io::nop();
  CHECK(order == std::vector<int>{1});
  s.release(1);
  co_await scope.join();
  CHECK(s.available() == 0);
  co_return order;
}
}  // namespace

TEST_CASE("waiters are served in FIFO order; a large request is not starved") {
  yutu::io::reactor r;
  CHECK(r.block_on(fifo_service()) == std::vector<int>{1, 2});
}

namespace {
task<std::vector<int>> cancel_front() {
  async_semaphore s(1);
  std::vector<int> order;
  std::stop_source src;
  async_scope scope;
  scope.spawn(take(s, 5, order, 1).with_stop_token(src.get_token()));
  scope.spawn(take(s, 1, order, 2));
  (void)co_await yutu::io::nop();
  CHECK(order.empty());
  // The large request leaves; the small one behind it now fits.
  src.request_stop();
  co_await scope.join();
  CHECK(s.available() == 0);
  co_return order;
}
}  // namespace

TEST_CASE("cancelling the front waiter lets the smaller requests behind it through") {
  yutu::io::reactor r;
  auto order = r.block_on(cancel_front());
  REQUIRE(order.size() == 2);
  // Both resume through the reactor's queue: the granted one first (woken under the same lock).
  CHECK(order == std::vector<int>{2, -1});
}

namespace {
task<void> limited(async_semaphore& s, int& running, int& max_running) {
  auto r = co_await s.acquire();
  REQUIRE(r);
  if (++running > max_running) max_running = running;
  (void)co_await yutu::io::nop();
  (void)co_await yutu::io::nop();
  --running;
  s.release();
}
task<int> limit_concurrency() {
  async_semaphore s(4);
  int running = 0, max_running = 0;
  std::vector<task<void>> ts;
  for (int i = 0; i < 1000; ++i) ts.push_back(limited(s, running, max_running));
  co_await yutu::when_all(std::move(ts));
  CHECK(running == 0);
  CHECK(s.available() == 4);
  co_return max_running;
}
}  // namespace

TEST_CASE("a semaphore bounds concurrency exactly") {
  yutu::io::reactor r;
  CHECK(r.block_on(limit_concurrency()) == 4);
}

namespace {
task<void> acquire_counted(async_semaphore& s, std::atomic<int>& resumed, std::atomic<int>& got) {
  auto r = co_await s.acquire(2);
  resumed.fetch_add(1);
  if (r) got.fetch_add(1);
}
}  // namespace

TEST_CASE("release racing a stop request resumes the waiter exactly once and loses no unit") {
  yutu::test::reactor_thread home;
  int got_total = 0;
  constexpr int iterations = 2000;
  for (int i = 0; i < iterations; ++i) {
    async_semaphore s(1);
    std::stop_source src;
    std::atomic<int> resumed{0}, got{0};
    yutu::test::race_two(
        &home.r, acquire_counted(s, resumed, got).with_stop_token(src.get_token()), [&] { s.release(); },
        [&] { src.request_stop(); });
    REQUIRE(resumed.load() == 1);
    got_total += got.load();
    // Granted: both units taken. Cancelled: both still there.
    REQUIRE(s.available() == (got.load() ? 0u : 2u));
  }
  MESSAGE("acquire won in " << got_total << " of " << iterations << " races");
}
