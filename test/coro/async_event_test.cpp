// async_event: set/reset/wait, cancellation, resumption on the waiter's own thread, set racing a
// stop request (exactly-once resumption), and 100k waiters.
#include <doctest/doctest.h>

#include <atomic>
#include <stop_token>
#include <thread>
#include <vector>

#include "fixtures.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using yutu::async_event;
using yutu::async_scope;
using yutu::result;
using yutu::task;

namespace {

task<result<void>> wait_on(async_event& ev) { co_return co_await ev.wait(); }

task<void> wait_and_count(async_event& ev, int& woken) {
  auto r = co_await ev.wait();
  if (r) ++woken;
}

}  // namespace

TEST_CASE("a set event lets waits through until reset") {
  async_event ev;
  CHECK_FALSE(ev.is_set());
  ev.set();
  CHECK(ev.is_set());
  CHECK(yutu::sync_wait(wait_on(ev)).has_value());
  CHECK(yutu::sync_wait(wait_on(ev)).has_value());
  ev.reset();
  CHECK_FALSE(ev.is_set());
  async_event initially(true);
  CHECK(initially.is_set());
}

TEST_CASE("set wakes every waiter, through the reactor they suspended on") {
  yutu::io::reactor r;
  auto body = [](async_event& ev) -> task<int> {
    int woken = 0;
    async_scope scope;
    for (int i = 0; i < 10; ++i) scope.spawn(wait_and_count(ev, woken));
    CHECK(woken == 0);
    ev.set();
    // Woken waiters resume through the reactor's queue, not inside set().
    CHECK(woken == 0);
    co_await scope.join();
    co_return woken;
  };
  async_event ev;
  CHECK(r.block_on(body(ev)) == 10);
}

TEST_CASE("a stop request ends a wait with operation_canceled") {
  yutu::io::reactor r;
  async_event ev;

  // Already requested: no suspension at all.
  std::stop_source stopped;
  stopped.request_stop();
  auto res = r.block_on(wait_on(ev).with_stop_token(stopped.get_token()));
  REQUIRE_FALSE(res);
  CHECK(yutu::is_canceled(res.error()));

  // Requested while waiting, from another task on the same reactor.
  std::stop_source src;
  auto body = [&]() -> task<result<void>> {
    async_scope scope;
    result<void> out;
    auto waiter = [&]() -> task<void> { out = co_await ev.wait(); };
    scope.spawn(waiter().with_stop_token(src.get_token()));
    src.request_stop();
    co_await scope.join();
    co_return out;
  };
  auto res2 = r.block_on(body());
  REQUIRE_FALSE(res2);
  CHECK(yutu::is_canceled(res2.error()));

  // A set event is not a cancellation, even under a stop request.
  ev.set();
  CHECK(r.block_on(wait_on(ev).with_stop_token(stopped.get_token())).has_value());
}

namespace {

// Starts the waiter, then (once it is surely suspended: when_all starts children in order) hands
// control to `wake`, which runs on another thread. Returns the thread the waiter resumed on.
task<std::thread::id> waiter_part(async_event& ev, std::error_code& ec) {
  auto r = co_await ev.wait();
  if (!r) ec = r.error();
  co_return std::this_thread::get_id();
}
template <class F>
task<void> wake_part(std::thread& th, F& wake) {
  th = std::thread(wake);
  co_return;
}
template <class F>
task<std::thread::id> wait_on_and_wake(yutu::io::reactor& home, async_event& ev, std::error_code& ec,
                                       std::thread& th, F& wake) {
  co_await home.schedule();
  auto [id, none] = co_await yutu::when_all(waiter_part(ev, ec), wake_part(th, wake));
  (void)none;
  co_return id;
}

}  // namespace

TEST_CASE("a waiter woken from a plain thread resumes on its own reactor's thread") {
  yutu::test::reactor_thread a;
  for (int i = 0; i < 100; ++i) {
    async_event ev;
    std::error_code ec;
    std::thread th;
    auto wake = [&] { ev.set(); };
    std::thread::id resumed = yutu::sync_wait(wait_on_and_wake(a.r, ev, ec, th, wake));
    th.join();
    CHECK(resumed == a.id());
    CHECK_FALSE(ec);
  }
}

TEST_CASE("a waiter woken by a task on another reactor resumes on its own reactor") {
  yutu::test::reactor_thread a, b;
  for (int i = 0; i < 100; ++i) {
    async_event ev;
    std::error_code ec;
    std::thread th;
    auto wake = [&] {
      auto setter = [&]() -> task<void> {
        co_await b.r.schedule();
        ev.set();
      };
      yutu::sync_wait(setter());
    };
    std::thread::id resumed = yutu::sync_wait(wait_on_and_wake(a.r, ev, ec, th, wake));
    th.join();
    CHECK(resumed == a.id());
    CHECK_FALSE(ec);
  }
}

TEST_CASE("a cancellation from a plain thread resumes the waiter on its own reactor") {
  yutu::test::reactor_thread a;
  for (int i = 0; i < 100; ++i) {
    async_event ev;
    std::stop_source src;
    std::error_code ec;
    std::thread th;
    auto wake = [&] { src.request_stop(); };
    std::thread::id resumed =
        yutu::sync_wait(wait_on_and_wake(a.r, ev, ec, th, wake).with_stop_token(src.get_token()));
    th.join();
    CHECK(resumed == a.id());
    CHECK(yutu::is_canceled(ec));
  }
}

namespace {
task<void> counted_wait(async_event& ev, std::atomic<int>& resumed, std::atomic<int>& canceled) {
  auto r = co_await ev.wait();
  resumed.fetch_add(1);
  if (!r) canceled.fetch_add(1);
}

void set_versus_stop(yutu::io::reactor* home, int iterations) {
  int canceled_total = 0;
  for (int i = 0; i < iterations; ++i) {
    async_event ev;
    std::stop_source src;
    std::atomic<int> resumed{0}, canceled{0};
    yutu::test::race_two(
        home, counted_wait(ev, resumed, canceled).with_stop_token(src.get_token()), [&] { ev.set(); },
        [&] { src.request_stop(); });
    REQUIRE(resumed.load() == 1);
    canceled_total += canceled.load();
  }
  MESSAGE("cancelled in " << canceled_total << " of " << iterations << " races");
}
}  // namespace

TEST_CASE("set racing a stop request from two threads resumes the waiter exactly once") {
  SUBCASE("waiter on a reactor") {
    yutu::test::reactor_thread a;
    set_versus_stop(&a.r, 2000);
  }
  SUBCASE("waiter on a plain thread: resumed inline by whichever wins") { set_versus_stop(nullptr, 2000); }
}

namespace {
task<void> nop_then_wait(async_event& ev, int& arrived, int& done) {
  (void)co_await yutu::io::nop();
  ++arrived;
  auto r = co_await ev.wait();
  if (r) ++done;
}
task<int> hundred_thousand_waiters(async_event& ev) {
  int arrived = 0, done = 0;
  async_scope scope;
  for (int i = 0; i < 100'000; ++i) scope.spawn(nop_then_wait(ev, arrived, done));
  // Until every nop has completed, so that all 100k are queued on the event.
  while (arrived < 100'000) (void)co_await yutu::io::nop();
  CHECK(done == 0);
  CHECK(scope.running() == 100'000);
  ev.set();
  co_await scope.join();
  co_return done;
}
}  // namespace

TEST_CASE("100k waiters through an async_scope, all released by one set") {
  yutu::io::reactor r;
  async_event ev;
  CHECK(r.block_on(hundred_thousand_waiters(ev)) == 100'000);
  CHECK(r.in_flight() == 0);
}
