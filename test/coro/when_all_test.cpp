// when_all: results and their lifetimes, start order, stop-token inheritance, exceptions after every
// child finished, completion on other threads, and 100k children on a reactor.
#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <string>
#include <thread>
#include <tuple>
#include <variant>
#include <vector>

#include "counted.hpp"
#include "fixtures.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using yutu::async_event;
using yutu::task;
using yutu::when_all;
using yutu::test::counted;

namespace {

task<int> value(int v) { co_return v; }
task<std::string> text(std::string s) { co_return s; }
task<void> nothing() { co_return; }
task<int&> ref_to(int& x) { co_return x; }
task<counted> make_counted(int v) { co_return counted(v); }

task<void> record(std::vector<int>& order, int i) {
  order.push_back(i);
  co_return;
}

task<void> throw_now(std::string what) {
  throw std::runtime_error(what);
  co_return;
}

task<void> wait_then_mark(async_event& ev, bool& finished) {
  (void)co_await ev.wait();
  finished = true;
}

task<void> set_event(async_event& ev) {
  ev.set();
  co_return;
}

task<bool> token_stopped() { co_return (co_await yutu::coro::get_stop_token()).stop_requested(); }

}  // namespace

TEST_CASE("variadic when_all returns every value in argument order") {
  int x = 5;
  auto [a, s, v, r] = yutu::sync_wait(when_all(value(1), text("two"), nothing(), ref_to(x)));
  CHECK(a == 1);
  CHECK(s == "two");
  CHECK(std::is_same_v<decltype(v), std::monostate>);
  CHECK(&r == &x);
  auto empty = yutu::sync_wait(when_all());
  CHECK(std::tuple_size_v<decltype(empty)> == 0);
}

TEST_CASE("children start in order on the awaiting thread") {
  std::vector<int> order;
  yutu::sync_wait(when_all(record(order, 0), record(order, 1), record(order, 2)));
  CHECK(order == std::vector<int>{0, 1, 2});

  std::vector<task<void>> ts;
  for (int i = 0; i < 5; ++i) ts.push_back(record(order, 10 + i));
  yutu::sync_wait(when_all(std::move(ts)));
  CHECK(order == std::vector<int>{0, 1, 2, 10, 11, 12, 13, 14});
}

TEST_CASE("values are moved out of the children, never copied, and nothing leaks") {
  counted::reset();
  {
    auto [a, b] = yutu::sync_wait(when_all(make_counted(1), make_counted(2)));
    CHECK(a.value == 1);
    CHECK(b.value == 2);
    std::vector<task<counted>> ts;
    for (int i = 0; i < 10; ++i) ts.push_back(make_counted(i));
    std::vector<counted> vs = yutu::sync_wait(when_all(std::move(ts)));
    REQUIRE(vs.size() == 10);
    for (int i = 0; i < 10; ++i) CHECK(vs[i].value == i);
  }
  CHECK(counted::copies == 0);
  CHECK(counted::alive() == 0);
}

TEST_CASE("range when_all: values, references, void and empty") {
  std::vector<task<int>> ts;
  for (int i = 0; i < 100; ++i) ts.push_back(value(i * 2));
  std::vector<int> vs = yutu::sync_wait(when_all(std::move(ts)));
  REQUIRE(vs.size() == 100);
  for (int i = 0; i < 100; ++i) CHECK(vs[i] == i * 2);

  int a = 1, b = 2;
  std::vector<task<int&>> rs;
  rs.push_back(ref_to(a));
  rs.push_back(ref_to(b));
  auto refs = yutu::sync_wait(when_all(std::move(rs)));
  CHECK(&refs[0].get() == &a);
  CHECK(&refs[1].get() == &b);

  std::vector<task<void>> none;
  yutu::sync_wait(when_all(std::move(none)));  // task<void>, completes at once
  CHECK(yutu::sync_wait(when_all(std::vector<task<int>>{})).empty());
}

TEST_CASE("an exception is rethrown only after every child finished") {
  // Child 0 throws at once; child 1 waits for an event that child 2 sets. On a plain thread the set
  // resumes child 1 inline, so all of it happens inside the when_all.
  async_event ev;
  bool finished = false;
  CHECK_THROWS_WITH_AS(yutu::sync_wait(when_all(throw_now("first"), wait_then_mark(ev, finished), set_event(ev))),
                       "first", std::runtime_error);
  CHECK(finished);

  // The lowest-indexed child's exception wins, not the chronologically first.
  async_event ev2;
  bool finished2 = false;
  std::vector<task<void>> ts;
  ts.push_back(wait_then_mark(ev2, finished2));
  ts.push_back(throw_now("b"));
  ts.push_back(throw_now("c"));
  ts.push_back(set_event(ev2));
  CHECK_THROWS_WITH_AS(yutu::sync_wait(when_all(std::move(ts))), "b", std::runtime_error);
  CHECK(finished2);
}

TEST_CASE("children inherit the awaiting task's stop token") {
  std::stop_source src;
  src.request_stop();
  auto [a, b] = yutu::sync_wait(when_all(token_stopped(), token_stopped()), src.get_token());
  CHECK(a);
  CHECK(b);
  std::vector<task<bool>> ts;
  ts.push_back(token_stopped());
  auto v = yutu::sync_wait(when_all(std::move(ts)), src.get_token());
  CHECK(v[0]);
  auto [c] = yutu::sync_wait(when_all(token_stopped()));
  CHECK_FALSE(c);
}

namespace {
task<std::thread::id> finish_on(yutu::io::reactor& r) {
  co_await r.schedule();
  co_return std::this_thread::get_id();
}
task<std::thread::id> all_on_other_threads(yutu::io::reactor& a, yutu::io::reactor& b, std::thread::id& resumed) {
  auto [x, y, z] = co_await when_all(finish_on(a), finish_on(b), finish_on(a));
  resumed = std::this_thread::get_id();
  CHECK(x == z);
  CHECK(x != y);
  co_return y;
}
}  // namespace

TEST_CASE("children may finish on other threads; the awaiter resumes where the last one finished") {
  yutu::test::reactor_thread a, b;
  for (int i = 0; i < 200; ++i) {
    std::thread::id resumed;
    std::thread::id on_b = yutu::sync_wait(all_on_other_threads(a.r, b.r, resumed));
    CHECK(on_b == b.id());
    // Where the last child finished; or here, if all had finished before the last one was started.
    CHECK((resumed == a.id() || resumed == b.id() || resumed == std::this_thread::get_id()));
  }
}

namespace {
task<int> one_nop() {
  auto r = co_await yutu::io::nop();
  co_return r ? 1 : 0;
}
task<std::size_t> hundred_thousand_nops() {
  std::vector<task<int>> ts;
  ts.reserve(100'000);
  for (int i = 0; i < 100'000; ++i) ts.push_back(one_nop());
  std::vector<int> rs = co_await when_all(std::move(ts));
  std::size_t ok = 0;
  for (int v : rs) ok += static_cast<std::size_t>(v);
  co_return ok;
}
}  // namespace

TEST_CASE("100k concurrent children, each a nop through the ring") {
  yutu::io::reactor r;
  CHECK(r.block_on(hundred_thousand_nops()) == 100'000);
  CHECK(r.in_flight() == 0);
}
