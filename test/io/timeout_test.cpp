// with_timeout / with_deadline: the value when in time, timed_out (after the cancelled task finished)
// when late, flattening of result<U>, void tasks, the awaiting task's cancellation, and no operation
// left in flight.
#include <doctest/doctest.h>

#include <chrono>
#include <stop_token>
#include <system_error>

#include "yutu/coro/async_event.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/timeout.hpp"

using namespace std::chrono_literals;
using yutu::result;
using yutu::task;
using yutu::io::reactor;

namespace {

task<int> quick(int v) {
  (void)co_await yutu::io::nop();
  co_return v;
}

// Sleeps long unless cancelled; records that it saw the cancellation and that it finished.
struct sleeper_log {
  bool canceled = false;
  bool finished = false;
};
task<int> slow(sleeper_log& log) {
  auto r = co_await yutu::io::sleep_for(10s);
  log.canceled = !r && yutu::is_canceled(r.error());
  log.finished = true;
  co_return 1;
}
task<result<int>> slow_result(sleeper_log& log) {
  auto r = co_await yutu::io::sleep_for(10s);
  log.finished = true;
  if (!r) co_return yutu::fail(r.error());
  co_return 1;
}
task<result<int>> fails_fast() { co_return yutu::fail(yutu::errc::object_not_found); }
task<void> quick_void() {
  (void)co_await yutu::io::nop();
}

}  // namespace

TEST_CASE("a task that finishes in time yields its value; the timer is cancelled at once") {
  reactor r;
  auto t0 = std::chrono::steady_clock::now();
  auto v = r.block_on(yutu::io::with_timeout(quick(7), 5s));
  REQUIRE(v);
  CHECK(*v == 7);
  CHECK(std::chrono::steady_clock::now() - t0 < 4s);
  CHECK(r.in_flight() == 0);
  auto w = r.block_on(yutu::io::with_timeout(quick_void(), 5s));
  CHECK(w.has_value());
}

TEST_CASE("a late task is cancelled and awaited before timed_out is returned") {
  reactor r;
  sleeper_log log;
  auto awaited_before = false;
  auto body = [&]() -> task<result<int>> {
    auto res = co_await yutu::io::with_timeout(slow(log), 10ms);
    awaited_before = log.finished;  // observed right when with_timeout returned
    co_return res;
  };
  auto t0 = std::chrono::steady_clock::now();
  auto v = r.block_on(body());
  REQUIRE_FALSE(v);
  CHECK(yutu::is_timeout(v.error()));
  CHECK(awaited_before);
  CHECK(log.canceled);
  CHECK(std::chrono::steady_clock::now() - t0 >= 10ms);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("task<result<U>> is flattened to task<result<U>>") {
  reactor r;
  static_assert(std::is_same_v<decltype(yutu::io::with_timeout(fails_fast(), 1s)), task<result<int>>>);
  auto e = r.block_on(yutu::io::with_timeout(fails_fast(), 1s));
  REQUIRE_FALSE(e);
  CHECK(e.error() == yutu::make_error_code(yutu::errc::object_not_found));
  sleeper_log log;
  auto late = r.block_on(yutu::io::with_timeout(slow_result(log), 5ms));
  REQUIRE_FALSE(late);
  CHECK(yutu::is_timeout(late.error()));
  CHECK(log.finished);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("with_deadline bounds by a time point") {
  reactor r;
  sleeper_log log;
  auto late = r.block_on(yutu::io::with_deadline(slow(log), yutu::io::clock::now() + 5ms));
  REQUIRE_FALSE(late);
  CHECK(yutu::is_timeout(late.error()));
  CHECK(log.finished);
  auto ok = r.block_on(yutu::io::with_deadline(quick(3), yutu::io::clock::now() + 5s));
  REQUIRE(ok);
  CHECK(*ok == 3);
  // A deadline already past: the timer fires at once, unless the task finishes synchronously.
  sleeper_log log2;
  auto past = r.block_on(yutu::io::with_deadline(slow(log2), yutu::io::clock::now() - 1s));
  REQUIRE_FALSE(past);
  CHECK(yutu::is_timeout(past.error()));
  CHECK(r.in_flight() == 0);
}

namespace {
task<void> stop_after_a_nop(std::stop_source& src) {
  (void)co_await yutu::io::nop();
  src.request_stop();
}
task<result<int>> bounded_then_stopped(std::stop_source& src, sleeper_log& log) {
  auto bounded = yutu::io::with_timeout(slow_result(log), 10s);
  auto stopper = stop_after_a_nop(src);
  auto [v, none] = co_await yutu::when_all(std::move(bounded), std::move(stopper));
  (void)none;
  co_return v;
}
}  // namespace

TEST_CASE("the awaiting task's stop request is a cancellation, not a timeout") {
  reactor r;
  std::stop_source src;
  sleeper_log log;
  auto t0 = std::chrono::steady_clock::now();
  auto v = r.block_on(bounded_then_stopped(src, log).with_stop_token(src.get_token()));
  REQUIRE_FALSE(v);
  CHECK(yutu::is_canceled(v.error()));
  CHECK(log.finished);
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("a wait on a sync primitive is bounded too") {
  reactor r;
  yutu::async_event never;
  auto wait = [&]() -> task<result<void>> { co_return co_await never.wait(); };
  auto v = r.block_on(yutu::io::with_timeout(wait(), 5ms));
  REQUIRE_FALSE(v);
  CHECK(yutu::is_timeout(v.error()));
  CHECK(r.in_flight() == 0);
}
