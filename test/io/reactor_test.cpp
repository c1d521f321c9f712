// The reactor: nop, timers, cancellation, linked timeouts, cross-thread posting.
#include <doctest/doctest.h>

#include <thread>
#include <unistd.h>

#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using namespace std::chrono_literals;
using yutu::task;
using yutu::io::reactor;

TEST_CASE("nop completes through the ring") {
  reactor r;
  auto t = []() -> task<int> {
    int n = 0;
    for (int i = 0; i < 1000; ++i)
      if (co_await yutu::io::nop()) ++n;
    co_return n;
  };
  CHECK(r.block_on(t()) == 1000);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("sleep_for waits at least the duration") {
  reactor r;
  auto t0 = std::chrono::steady_clock::now();
  auto res = r.block_on([]() -> task<yutu::result<void>> { co_return co_await yutu::io::sleep_for(5ms); }());
  CHECK(res.has_value());
  CHECK(std::chrono::steady_clock::now() - t0 >= 5ms);
}

TEST_CASE("a stop request cancels a sleep promptly") {
  reactor r;
  std::stop_source src;
  auto sleeper = []() -> task<yutu::result<void>> { co_return co_await yutu::io::sleep_for(10s); };
  auto t0 = std::chrono::steady_clock::now();
  std::thread th([&] {
    std::this_thread::sleep_for(20ms);
    src.request_stop();
  });
  auto res = r.block_on(sleeper().with_stop_token(src.get_token()));
  th.join();
  REQUIRE_FALSE(res.has_value());
  CHECK(yutu::is_canceled(res.error()));
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("a linked timeout fails a stuck operation with timed_out") {
  reactor r;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  auto res = r.block_on([](int fd) -> task<yutu::result<unsigned>> {
    co_return co_await yutu::io::poll(fd, POLLIN).with_timeout(10ms);
  }(fds[0]));
  REQUIRE_FALSE(res.has_value());
  CHECK(yutu::is_timeout(res.error()));
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("work posted from another thread runs on the reactor thread") {
  reactor r;
  std::thread::id ran_on;
  auto t = [&]() -> task<void> {
    std::thread th([&] {});
    th.join();
    co_await r.schedule();
    ran_on = std::this_thread::get_id();
  };
  r.block_on(t());
  CHECK(ran_on == std::this_thread::get_id());
}
