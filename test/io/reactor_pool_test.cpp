// reactor_pool: each reactor on its own thread, cross-thread hops, spawn, block_on, shutdown order.
#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <thread>

#include "yutu/io/op.hpp"
#include "yutu/io/reactor_pool.hpp"

using namespace std::chrono_literals;
using yutu::task;
using yutu::io::reactor;
using yutu::io::reactor_pool;

namespace {

task<std::thread::id> thread_of_reactor() {
  co_return std::this_thread::get_id();
}

// Hops between reactors 0 and 1 `n` times, checking after every hop that it runs on the right thread.
task<int> ping_pong(reactor_pool& p, std::thread::id t0, std::thread::id t1, int n) {
  int good = 0;
  for (int i = 0; i < n; ++i) {
    co_await p.at(1).schedule();
    if (std::this_thread::get_id() == t1 && reactor::current() == &p.at(1)) ++good;
    co_await p.at(0).schedule();
    if (std::this_thread::get_id() == t0 && reactor::current() == &p.at(0)) ++good;
    // I/O on the reactor we are on must keep working between hops.
    if (i % 100 == 0 && !(co_await yutu::io::nop())) --good;
  }
  co_return good;
}

}  // namespace

TEST_CASE("each reactor runs on its own thread") {
  reactor_pool p(3);
  REQUIRE(p.size() == 3);
  auto a = p.block_on(0, thread_of_reactor());
  auto b = p.block_on(1, thread_of_reactor());
  auto c = p.block_on(2, thread_of_reactor());
  CHECK(a != b);
  CHECK(b != c);
  CHECK(a != c);
  CHECK(a != std::this_thread::get_id());
  CHECK(p.block_on(0, thread_of_reactor()) == a);
}

TEST_CASE("a task hops between reactors thousands of times and always lands on the right thread") {
  reactor_pool p(2);
  auto t0 = p.block_on(0, thread_of_reactor());
  auto t1 = p.block_on(1, thread_of_reactor());
  constexpr int n = 5000;
  CHECK(p.block_on(0, ping_pong(p, t0, t1, n)) == 2 * n);
  // Several at once, contending for both reactors' queues.
  std::atomic<int> total{0};
  auto worker = [&](int k) -> task<void> {
    total += co_await ping_pong(p, t0, t1, 1000 + k);
  };
  for (int k = 0; k < 8; ++k) p.spawn(k % 2, worker(k));
  p.stop_and_join();
  int expect = 0;
  for (int k = 0; k < 8; ++k) expect += 2 * (1000 + k);
  CHECK(total == expect);
}

TEST_CASE("stop_and_join waits for spawned tasks") {
  std::atomic<int> finished{0};
  auto slow = [&]() -> task<void> {
    auto r = co_await yutu::io::sleep_for(20ms);
    CHECK(r.has_value());
    ++finished;
  };
  {
    reactor_pool p(2);
    for (int i = 0; i < 10; ++i) p.spawn(i % 2, slow());
    p.stop_and_join();
    CHECK(finished == 10);
    CHECK(p.outstanding() == 0);
    CHECK_THROWS_AS(p.spawn(0, slow()), std::logic_error);
    p.stop_and_join();  // idempotent
  }
  CHECK(finished == 10);
}

TEST_CASE("spawned tasks may spawn more tasks, and stop_and_join waits for those too") {
  std::atomic<int> finished{0};
  reactor_pool p(2);
  struct ctx {
    reactor_pool* p;
    std::atomic<int>* finished;
  } c{&p, &finished};
  // A named coroutine function: no lambda closure has to outlive its frame.
  struct tree {
    static task<void> grow(ctx c, int depth) {
      co_await yutu::io::sleep_for(1ms);
      if (depth > 0) {
        c.p->spawn(0, grow(c, depth - 1));
        c.p->spawn(1, grow(c, depth - 1));
      }
      ++*c.finished;
    }
  };
  p.spawn(0, tree::grow(c, 5));
  p.stop_and_join();
  CHECK(finished == 63);  // 2^6 - 1 nodes
}

TEST_CASE("block_on rethrows, returns values and refuses to block its own reactor") {
  reactor_pool p(1);
  auto thrower = []() -> task<int> {
    co_await yutu::io::nop();
    throw std::runtime_error("boom");
  };
  CHECK_THROWS_AS(p.block_on(0, thrower()), std::runtime_error);
  auto seven = []() -> task<int> { co_return 7; };
  CHECK(p.block_on(0, seven()) == 7);
  auto nested = [&]() -> task<bool> {
    try {
      (void)p.block_on(0, []() -> task<int> { co_return 1; }());
    } catch (const std::logic_error&) {
      co_return true;
    }
    co_return false;
  };
  CHECK(p.block_on(0, nested()));
  p.stop_and_join();
  CHECK_THROWS_AS(p.block_on(0, seven()), std::logic_error);
}
