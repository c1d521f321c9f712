// async_scope: eager start, frames destroyed on completion, join, request_stop reaching spawned tasks,
// exceptions surfacing at join, 100k tasks, and tasks finishing on another thread.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>
#include <stop_token>
#include <thread>
#include <vector>

#include "counted.hpp"
#include "fixtures.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using yutu::async_event;
using yutu::async_scope;
using yutu::task;
using yutu::test::counted;

namespace {
task<void> hold_until(async_event& ev, counted c, int& finished) {
  auto r = co_await ev.wait();
  (void)r;
  (void)c;
  ++finished;
}
}  // namespace

TEST_CASE("spawn starts at once; each frame is destroyed when its task completes") {
  counted::reset();
  async_event a, b;
  int finished = 0;
  async_scope scope;
  scope.spawn(hold_until(a, counted(1), finished));
  scope.spawn(hold_until(b, counted(2), finished));
  CHECK(scope.running() == 2);
  CHECK(counted::alive() == 2);  // one argument kept alive in each suspended frame
  a.set();                       // plain thread: resumes inline
  CHECK(finished == 1);
  CHECK(scope.running() == 1);
  CHECK(counted::alive() == 1);  // the finished task's frame is gone already
  b.set();
  CHECK(scope.running() == 0);
  CHECK(counted::alive() == 0);
  auto join = [](async_scope& s) -> task<void> { co_await s.join(); };
  yutu::sync_wait(join(scope));
  CHECK(counted::copies == 0);
}

namespace {
task<void> wait_for_stop(async_event& ev, int& canceled) {
  auto r = co_await ev.wait();
  if (!r && yutu::is_canceled(r.error())) ++canceled;
}
task<void> own_token(async_event& ev, int& finished) {
  auto r = co_await ev.wait();
  if (r) ++finished;
}
task<int> stop_and_join(async_event& ev, int& own_finished) {
  int canceled = 0;
  async_scope scope;
  for (int i = 0; i < 10; ++i) scope.spawn(wait_for_stop(ev, canceled));
  // A task with its own token is not stopped by the scope.
  std::stop_source own;
  scope.spawn(own_token(ev, own_finished).with_stop_token(own.get_token()));
  scope.request_stop();
  CHECK(scope.get_stop_token().stop_requested());
  (void)co_await yutu::io::nop();
  CHECK(canceled == 10);
  CHECK(scope.running() == 1);
  ev.set();
  co_await scope.join();
  co_return canceled;
}
}  // namespace

TEST_CASE("request_stop reaches every spawned task; join waits for all") {
  yutu::io::reactor r;
  async_event ev;
  int own_finished = 0;
  CHECK(r.block_on(stop_and_join(ev, own_finished)) == 10);
  CHECK(own_finished == 1);
}

namespace {
task<void> nothing() { co_return; }
task<void> fail_after(async_event& ev, const char* what) {
  auto r = co_await ev.wait();
  (void)r;
  throw std::runtime_error(what);
}
task<void> join_rethrows() {
  async_event ev;
  async_scope scope;
  scope.spawn(fail_after(ev, "first"));
  scope.spawn(fail_after(ev, "second"));
  ev.set();
  bool caught = false;
  try {
    co_await scope.join();
  } catch (const std::runtime_error& e) {
    caught = true;
    CHECK(std::string(e.what()) == "first");
  }
  CHECK(caught);
  // The error was consumed; the scope is reusable.
  scope.spawn(nothing());
  co_await scope.join();
}
}  // namespace

TEST_CASE("join rethrows the first exception a spawned task threw") {
  yutu::io::reactor r;
  r.block_on(join_rethrows());
}

namespace {
task<void> one_nop(int& done) {
  auto r = co_await yutu::io::nop();
  if (r) ++done;
}
task<int> hundred_thousand() {
  int done = 0;
  async_scope scope;
  for (int i = 0; i < 100'000; ++i) scope.spawn(one_nop(done));
  co_await scope.join();
  co_return done;
}
}  // namespace

TEST_CASE("100k spawned tasks, each a nop through the ring") {
  counted::reset();
  yutu::io::reactor r;
  CHECK(r.block_on(hundred_thousand()) == 100'000);
  CHECK(r.in_flight() == 0);
}

namespace {
task<void> finish_over_there(yutu::io::reactor& other, std::thread::id& ran_on) {
  co_await other.schedule();
  ran_on = std::this_thread::get_id();
}
task<std::thread::id> join_from_home(yutu::io::reactor& home, yutu::io::reactor& other, std::thread::id& ran_on) {
  co_await home.schedule();
  async_scope scope;
  scope.spawn(finish_over_there(other, ran_on));
  co_await scope.join();
  co_return std::this_thread::get_id();
}
}  // namespace

TEST_CASE("a task finishing on another thread: join resumes on the joiner's thread") {
  yutu::test::reactor_thread home, other;
  for (int i = 0; i < 200; ++i) {
    std::thread::id ran_on;
    std::thread::id joined_on = yutu::sync_wait(join_from_home(home.r, other.r, ran_on));
    CHECK(ran_on == other.id());
    CHECK(joined_on == home.id());
  }
}
