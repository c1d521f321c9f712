// when_any: the first child wins, the losers are cancelled AND awaited, exceptions, duplicate types,
// stop propagation from the awaiting task, lifetimes, and children finishing on other threads.
#include <doctest/doctest.h>

#include <chrono>
#include <stdexcept>
#include <string>
#include <thread>
#include <variant>
#include <vector>

#include "counted.hpp"
#include "fixtures.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_any.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using namespace std::chrono_literals;
using yutu::async_event;
using yutu::task;
using yutu::when_any;
using yutu::test::counted;

namespace {

task<int> value(int v) { co_return v; }
task<std::string> text(std::string s) { co_return s; }
task<void> nothing() { co_return; }
task<counted> make_counted(int v) { co_return counted(v); }

// A loser: waits for an event nobody sets, and records that it saw the cancellation.
struct loser_log {
  int canceled = 0;
  int finished = 0;
};
task<int> wait_forever(async_event& ev, loser_log& log) {
  auto r = co_await ev.wait();
  if (!r && yutu::is_canceled(r.error())) ++log.canceled;
  ++log.finished;
  co_return -1;
}

task<void> throw_now(std::string what) {
  throw std::runtime_error(what);
  co_return;
}

task<int> throw_after_wait(async_event& ev) {
  (void)co_await ev.wait();
  throw std::runtime_error("loser");
}

}  // namespace

TEST_CASE("the first child to finish wins; index tells which") {
  async_event never;
  loser_log log;
  auto v = yutu::sync_wait(when_any(wait_forever(never, log), value(7), wait_forever(never, log)));
  REQUIRE(v.index() == 1);
  CHECK(std::get<1>(v) == 7);
  // Both losers were cancelled and had finished before when_any returned.
  CHECK(log.canceled == 2);
  CHECK(log.finished == 2);
}

TEST_CASE("duplicate types are told apart by index; void is monostate") {
  auto v = yutu::sync_wait(when_any(value(1), value(2)));
  CHECK(v.index() == 0);
  CHECK(std::get<0>(v) == 1);
  auto w = yutu::sync_wait(when_any(nothing(), text("x")));
  CHECK(w.index() == 0);
  CHECK(std::holds_alternative<std::monostate>(w));
}

TEST_CASE("children that start after the winner start already cancelled") {
  async_event never;
  loser_log log;
  auto v = yutu::sync_wait(when_any(value(3), wait_forever(never, log)));
  CHECK(v.index() == 0);
  CHECK(log.canceled == 1);
  CHECK(log.finished == 1);
}

TEST_CASE("range when_any returns index and value") {
  async_event never;
  loser_log log;
  std::vector<task<int>> ts;
  ts.push_back(wait_forever(never, log));
  ts.push_back(wait_forever(never, log));
  ts.push_back(value(42));
  ts.push_back(wait_forever(never, log));
  auto r = yutu::sync_wait(when_any(std::move(ts)));
  CHECK(r.index == 2);
  CHECK(r.value == 42);
  CHECK(log.canceled == 3);
  CHECK(log.finished == 3);

  CHECK_THROWS_AS(yutu::sync_wait(when_any(std::vector<task<int>>{})), std::invalid_argument);
}

TEST_CASE("a winner's exception is rethrown; a loser's is dropped") {
  async_event never;
  loser_log log;
  CHECK_THROWS_WITH_AS(yutu::sync_wait(when_any(throw_now("winner"), wait_forever(never, log))), "winner",
                       std::runtime_error);
  CHECK(log.finished == 1);

  async_event ev;
  auto v = yutu::sync_wait(when_any(throw_after_wait(ev), value(5)));
  CHECK(v.index() == 1);
  CHECK(std::get<1>(v) == 5);
}

TEST_CASE("the awaiting task's stop request reaches every child") {
  std::stop_source src;
  async_event never;
  loser_log log;
  auto body = [&]() -> task<std::size_t> {
    auto stopper = [&]() -> task<int> {
      src.request_stop();
      co_return 0;
    };
    auto stop_now = stopper();
    // Whoever wins, both waiters were cancelled through the linked token, not as losers: the
    // stopper cannot have finished before its request_stop() returned.
    auto v = co_await when_any(wait_forever(never, log), wait_forever(never, log), std::move(stop_now));
    co_return v.index();
  };
  CHECK(yutu::sync_wait(body(), src.get_token()) < 2);
  CHECK(log.canceled == 2);
  CHECK(log.finished == 2);

  // A stop already requested: every child starts cancelled; the first to finish still wins.
  loser_log log2;
  auto v = yutu::sync_wait(when_any(wait_forever(never, log2), wait_forever(never, log2)), src.get_token());
  CHECK(v.index() == 0);
  CHECK(log2.canceled == 2);
}

TEST_CASE("the winner's value is moved, never copied, and nothing leaks") {
  counted::reset();
  {
    async_event never;
    auto forever_counted = [&]() -> task<counted> {
      (void)co_await never.wait();
      co_return counted(-1);
    };
    auto v = yutu::sync_wait(when_any(forever_counted(), make_counted(9)));
    CHECK(std::get<1>(v).value == 9);
    std::vector<task<counted>> ts;
    for (int i = 0; i < 5; ++i) ts.push_back(make_counted(i));
    auto r = yutu::sync_wait(when_any(std::move(ts)));
    CHECK(r.index == 0);
    CHECK(r.value.value == 0);
  }
  CHECK(counted::copies == 0);
  CHECK(counted::alive() == 0);
}

namespace {
task<yutu::result<void>> long_sleep(int& finished) {
  auto r = co_await yutu::io::sleep_for(10s);
  ++finished;
  co_return r;
}
task<int> nop_then(int v) {
  (void)co_await yutu::io::nop();
  co_return v;
}
}  // namespace

TEST_CASE("on a reactor, a pending timer loses to a nop and is cancelled through the ring") {
  yutu::io::reactor r;
  int finished = 0;
  auto t0 = std::chrono::steady_clock::now();
  auto v = r.block_on(when_any(long_sleep(finished), nop_then(4)));
  CHECK(v.index() == 1);
  CHECK(std::get<1>(v) == 4);
  CHECK(finished == 1);
  CHECK(r.in_flight() == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
}

namespace {
task<std::thread::id> on(yutu::io::reactor& r, async_event& ev) {
  co_await r.schedule();
  (void)co_await ev.wait();
  co_return std::this_thread::get_id();
}
task<std::thread::id> winner_on(yutu::io::reactor& r) {
  co_await r.schedule();
  co_return std::this_thread::get_id();
}
}  // namespace

TEST_CASE("children on other threads: losers there are cancelled and awaited") {
  yutu::test::reactor_thread a, b;
  for (int i = 0; i < 200; ++i) {
    async_event never;
    auto v = yutu::sync_wait(when_any(on(a.r, never), winner_on(b.r), on(a.r, never)));
    REQUIRE(v.index() == 1);
    CHECK(std::get<1>(v) == b.id());
  }
}
