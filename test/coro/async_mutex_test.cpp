// async_mutex: guards, try_lock, FIFO hand-off, cancellation of a queued lock, mutual exclusion under
// contention from two reactor threads, and unlock racing a stop request.
#include <doctest/doctest.h>

#include <atomic>
#include <stop_token>
#include <thread>
#include <vector>

#include "fixtures.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_mutex.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using yutu::async_event;
using yutu::async_mutex;
using yutu::async_mutex_lock;
using yutu::async_scope;
using yutu::result;
using yutu::task;

namespace {
task<result<async_mutex_lock>> lock_it(async_mutex& m) { co_return co_await m.lock(); }
}  // namespace

TEST_CASE("lock returns a guard that unlocks; try_lock never waits") {
  async_mutex m;
  {
    auto g = yutu::sync_wait(lock_it(m));
    REQUIRE(g);
    CHECK(g->owns_lock());
    CHECK(g->mutex() == &m);
    CHECK_FALSE(m.try_lock());
    async_mutex_lock moved = std::move(*g);
    CHECK_FALSE(g->owns_lock());
    CHECK(moved.owns_lock());
    CHECK_FALSE(m.try_lock());
  }
  CHECK(m.try_lock());
  async_mutex_lock adopted(m);
  adopted.unlock();
  CHECK_FALSE(adopted.owns_lock());
  CHECK(m.try_lock());
  m.unlock();
}

namespace {
task<void> lock_and_record(async_mutex& m, std::vector<int>& order, int i) {
  auto g = co_await m.lock();
  REQUIRE(g);
  order.push_back(i);
  (void)co_await yutu::io::nop();  // hold it across a suspension
}
task<std::vector<int>> fifo_order() {
  async_mutex m;
  std::vector<int> order;
  async_scope scope;
  auto first = co_await m.lock();
  for (int i = 0; i < 20; ++i) scope.spawn(lock_and_record(m, order, i));
  CHECK(order.empty());
  first->unlock();
  // Handed to waiter 0, not released: nobody can barge in.
  CHECK_FALSE(m.try_lock());
  co_await scope.join();
  CHECK(m.try_lock());
  m.unlock();
  co_return order;
}
}  // namespace

TEST_CASE("the mutex is handed to waiters in FIFO order") {
  yutu::io::reactor r;
  std::vector<int> expected;
  for (int i = 0; i < 20; ++i) expected.push_back(i);
  CHECK(r.block_on(fifo_order()) == expected);
}

namespace {
task<void> lock_or_cancel(async_mutex& m, std::vector<int>& got, int i) {
  auto g = co_await m.lock();
  got.push_back(g ? i : -i);
}
task<std::vector<int>> cancel_queued() {
  async_mutex m;
  std::vector<int> got;
  std::stop_source src;
  async_scope scope;
  auto held = co_await m.lock();
  scope.spawn(lock_or_cancel(m, got, 1));
  scope.spawn(lock_or_cancel(m, got, 2).with_stop_token(src.get_token()));
  scope.spawn(lock_or_cancel(m, got, 3));
  src.request_stop();
  (void)co_await yutu::io::nop();  // waiter 2 resumes through the reactor
  held->unlock();
  co_await scope.join();
  CHECK(m.try_lock());
  m.unlock();
  co_return got;
}
}  // namespace

TEST_CASE("a queued lock is cancelled by a stop request and skipped by the hand-off") {
  yutu::io::reactor r;
  CHECK(r.block_on(cancel_queued()) == std::vector<int>{-2, 1, 3});
  // Already requested: fails at once when the mutex is taken, succeeds when it is free.
  async_mutex m;
  std::stop_source stopped;
  stopped.request_stop();
  REQUIRE(m.try_lock());
  auto g = r.block_on(lock_it(m).with_stop_token(stopped.get_token()));
  REQUIRE_FALSE(g);
  CHECK(yutu::is_canceled(g.error()));
  m.unlock();
  auto g2 = r.block_on(lock_it(m).with_stop_token(stopped.get_token()));
  CHECK(g2);
}

namespace {
struct shared_state {
  async_mutex m;
  int inside = 0;      // tasks in the critical section; must never exceed 1
  int max_inside = 0;
  long counter = 0;    // plain, non-atomic: only the mutex protects it
};
task<void> contend(shared_state& s, int rounds) {
  for (int i = 0; i < rounds; ++i) {
    auto g = co_await s.m.lock();
    REQUIRE(g);
    int now = ++s.inside;
    if (now > s.max_inside) s.max_inside = now;
    long c = s.counter;
    if (i % 4 == 0) (void)co_await yutu::io::nop();  // sometimes hold it across a suspension
    s.counter = c + 1;
    --s.inside;
  }
}
task<void> contend_many(shared_state& s, int tasks, int rounds) {
  std::vector<task<void>> ts;
  for (int i = 0; i < tasks; ++i) ts.push_back(contend(s, rounds));
  co_await yutu::when_all(std::move(ts));
}
}  // namespace

TEST_CASE("mutual exclusion under contention from two reactor threads") {
  shared_state s;
  constexpr int tasks = 50, rounds = 200;
  auto run = [&] {
    yutu::io::reactor r;
    r.block_on(contend_many(s, tasks, rounds));
  };
  std::thread t1(run), t2(run);
  t1.join();
  t2.join();
  CHECK(s.counter == 2L * tasks * rounds);
  CHECK(s.max_inside == 1);
  CHECK(s.m.try_lock());
  s.m.unlock();
}

namespace {
task<void> lock_counted(async_mutex& m, std::atomic<int>& resumed, std::atomic<int>& got) {
  auto g = co_await m.lock();
  resumed.fetch_add(1);
  if (g) got.fetch_add(1);
}
}  // namespace

TEST_CASE("unlock racing a stop request resumes the waiter exactly once and leaves the mutex sound") {
  yutu::test::reactor_thread home;
  int got_total = 0;
  constexpr int iterations = 2000;
  for (int i = 0; i < iterations; ++i) {
    async_mutex m;
    std::stop_source src;
    std::atomic<int> resumed{0}, got{0};
    REQUIRE(m.try_lock());
    yutu::test::race_two(
        &home.r, lock_counted(m, resumed, got).with_stop_token(src.get_token()), [&] { m.unlock(); },
        [&] { src.request_stop(); });
    REQUIRE(resumed.load() == 1);
    got_total += got.load();
    // Either the waiter got it and released it with its guard, or the unlock released it.
    REQUIRE(m.try_lock());
    m.unlock();
  }
  MESSAGE("lock won in " << got_total << " of " << iterations << " races");
}
