// channel<T>: FIFO, back-pressure, close semantics, rendezvous (capacity 0), cancellation of both
// waits, value lifetimes (moved, never copied; nothing leaks), and MPMC across two reactor threads.
#include <doctest/doctest.h>

#include <atomic>
#include <stop_token>
#include <thread>
#include <vector>

#include "counted.hpp"
#include "fixtures.hpp"
#include "yutu/coro/async_scope.hpp"
#include "yutu/coro/channel.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using yutu::async_scope;
using yutu::channel;
using yutu::errc;
using yutu::result;
using yutu::task;
using yutu::test::counted;

namespace {
template <class T>
task<result<void>> send(channel<T>& ch, T v) {
  co_return co_await ch.send(std::move(v));
}
template <class T>
task<result<T>> recv(channel<T>& ch) {
  co_return co_await ch.recv();
}
bool is_closed(const std::error_code& ec) { return ec == yutu::make_error_code(errc::closed); }
bool would_block(const std::error_code& ec) { return ec == std::errc::operation_would_block; }
}  // namespace

TEST_CASE("buffered values come out in order; try_ variants never wait") {
  channel<int> ch(3);
  CHECK(ch.capacity() == 3);
  for (int i = 0; i < 3; ++i) CHECK(yutu::sync_wait(send(ch, i)).has_value());
  CHECK(ch.size() == 3);
  auto full = ch.try_send(9);
  REQUIRE_FALSE(full);
  CHECK(would_block(full.error()));
  for (int i = 0; i < 3; ++i) CHECK(*yutu::sync_wait(recv(ch)) == i);
  auto empty = ch.try_recv();
  REQUIRE_FALSE(empty);
  CHECK(would_block(empty.error()));
  CHECK(ch.try_send(5).has_value());
  CHECK(*ch.try_recv() == 5);
}

namespace {
task<void> producer(channel<int>& ch, int n, int& sent) {
  for (int i = 0; i < n; ++i) {
    auto r = co_await ch.send(i);
    REQUIRE(r);
    ++sent;
  }
}
task<std::vector<int>> back_pressure(yutu::io::reactor& r) {
  channel<int> ch(2);
  int sent = 0;
  async_scope scope;
  scope.spawn(producer(ch, 10, sent));
  // The producer filled the buffer and waits on its third send.
  CHECK(sent == 2);
  CHECK(ch.size() == 2);
  std::vector<int> got;
  auto first = co_await ch.recv();
  got.push_back(*first);
  // The waiting sender's value moved into the freed slot; the sender resumes on the next turn.
  CHECK(ch.size() == 2);
  co_await r.schedule();
  CHECK(sent == 3);
  CHECK(ch.size() == 2);  // and it waits again on the fourth
  while (got.size() < 10) {
    auto v = co_await ch.recv();
    REQUIRE(v);
    got.push_back(*v);
  }
  co_await scope.join();
  CHECK(sent == 10);
  co_return got;
}
}  // namespace

TEST_CASE("a full channel makes senders wait (back-pressure) and keeps FIFO order") {
  yutu::io::reactor r;
  auto got = r.block_on(back_pressure(r));
  std::vector<int> expected;
  for (int i = 0; i < 10; ++i) expected.push_back(i);
  CHECK(got == expected);
}

TEST_CASE("close: later sends fail, buffered values drain, then receivers see closed") {
  channel<int> ch(4);
  CHECK(ch.try_send(1).has_value());
  CHECK(ch.try_send(2).has_value());
  ch.close();
  CHECK(ch.is_closed());
  auto s = yutu::sync_wait(send(ch, 3));
  REQUIRE_FALSE(s);
  CHECK(is_closed(s.error()));
  CHECK(is_closed(ch.try_send(4).error()));
  CHECK(*yutu::sync_wait(recv(ch)) == 1);
  CHECK(*ch.try_recv() == 2);
  auto end = yutu::sync_wait(recv(ch));
  REQUIRE_FALSE(end);
  CHECK(is_closed(end.error()));
  CHECK(is_closed(ch.try_recv().error()));
  ch.close();  // idempotent
}

namespace {
task<void> record_send(channel<counted>& ch, int v, std::error_code& ec) {
  auto r = co_await ch.send(counted(v));
  if (!r) ec = r.error();
}
task<void> record_recv(channel<counted>& ch, std::error_code& ec) {
  auto r = co_await ch.recv();
  if (!r) ec = r.error();
}
task<void> close_with_waiters() {
  channel<counted> full(1), empty(1);
  REQUIRE(full.try_send(counted(0)));
  std::error_code send_ec, recv_ec;
  async_scope scope;
  scope.spawn(record_send(full, 1, send_ec));
  scope.spawn(record_recv(empty, recv_ec));
  full.close();
  empty.close();
  co_await scope.join();
  CHECK(is_closed(send_ec));
  CHECK(is_closed(recv_ec));
  // The value buffered before close is still delivered; the waiting sender's was dropped.
  auto v = full.try_recv();
  REQUIRE(v);
  CHECK(v->value == 0);
  CHECK(is_closed(full.try_recv().error()));
}
}  // namespace

TEST_CASE("close fails waiting senders and receivers, dropping undelivered values") {
  counted::reset();
  yutu::io::reactor r;
  r.block_on(close_with_waiters());
  CHECK(counted::copies == 0);
  CHECK(counted::alive() == 0);
}

namespace {
task<void> rendezvous(yutu::io::reactor& r) {
  channel<int> ch(0);
  // Nobody receiving: no room at all.
  CHECK(would_block(ch.try_send(1).error()));
  int sent = 0;
  async_scope scope;
  scope.spawn(producer(ch, 3, sent));
  CHECK(sent == 0);  // waits for a receiver even for the first value
  CHECK(ch.size() == 0);
  CHECK(*ch.try_recv() == 0);  // takes it from the waiting sender
  co_await r.schedule();
  CHECK(sent == 1);
  auto one = co_await ch.recv();
  CHECK(*one == 1);
  co_await r.schedule();
  CHECK(sent == 2);
  auto two = co_await ch.recv();
  CHECK(*two == 2);
  co_await scope.join();
  CHECK(sent == 3);
}
task<void> receive_one(channel<int>& ch, int& got) {
  auto v = co_await ch.recv();
  got = v ? *v : -1;
}
task<void> try_send_to_waiting_receiver() {
  channel<int> ch(0);
  int got = 0;
  async_scope scope;
  scope.spawn(receive_one(ch, got));
  CHECK(ch.try_send(7).has_value());
  co_await scope.join();
  CHECK(got == 7);
}
}  // namespace

TEST_CASE("capacity 0 is a rendezvous") {
  yutu::io::reactor r;
  r.block_on(rendezvous(r));
  r.block_on(try_send_to_waiting_receiver());
}

namespace {
task<void> cancel_both() {
  channel<counted> full(1), empty(1);
  REQUIRE(full.try_send(counted(0)));
  std::stop_source src;
  std::error_code send_ec, recv_ec;
  async_scope scope;
  scope.spawn(record_send(full, 1, send_ec).with_stop_token(src.get_token()));
  scope.spawn(record_recv(empty, recv_ec).with_stop_token(src.get_token()));
  src.request_stop();
  co_await scope.join();
  CHECK(yutu::is_canceled(send_ec));
  CHECK(yutu::is_canceled(recv_ec));
  // The cancelled send delivered nothing; the channel still works.
  CHECK(full.size() == 1);
  CHECK(full.try_recv()->value == 0);
  CHECK(full.try_send(counted(2)).has_value());
  CHECK(empty.try_send(counted(3)).has_value());
}
}  // namespace

TEST_CASE("both waits are cancellable") {
  counted::reset();
  yutu::io::reactor r;
  r.block_on(cancel_both());
  CHECK(counted::copies == 0);
  CHECK(counted::alive() == 0);
}

namespace {
task<void> send_counted(channel<counted>& ch, int n) {
  for (int i = 0; i < n; ++i) {
    auto r = co_await ch.send(counted(i));
    REQUIRE(r);
  }
  ch.close();
}
task<long> recv_counted(channel<counted>& ch) {
  long sum = 0;
  for (;;) {
    auto v = co_await ch.recv();
    if (!v) break;
    sum += v->value;
  }
  co_return sum;
}
task<long> pipe_counted() {
  channel<counted> ch(4);
  auto [none, sum] = co_await yutu::when_all(send_counted(ch, 100), recv_counted(ch));
  (void)none;
  co_return sum;
}
}  // namespace

TEST_CASE("values are moved through the channel, never copied, and nothing leaks") {
  counted::reset();
  {
    yutu::io::reactor r;
    CHECK(r.block_on(pipe_counted()) == 99 * 100 / 2);
    channel<counted> left_over(3);
    REQUIRE(left_over.try_send(counted(1)));
    REQUIRE(left_over.try_send(counted(2)));
  }
  CHECK(counted::copies == 0);
  CHECK(counted::alive() == 0);
}

namespace {
task<void> produce_range(channel<int>& ch, int from, int n) {
  for (int i = from; i < from + n; ++i) {
    auto r = co_await ch.send(i);
    REQUIRE(r);
    if (i % 16 == 0) (void)co_await yutu::io::nop();
  }
}
task<long> consume_all(channel<int>& ch, std::atomic<long>& count) {
  long sum = 0;
  for (;;) {
    auto v = co_await ch.recv();
    if (!v) {
      REQUIRE(v.error() == yutu::make_error_code(errc::closed));
      break;
    }
    sum += *v;
    count.fetch_add(1);
  }
  co_return sum;
}
}  // namespace

TEST_CASE("two producers and two consumers on two reactor threads") {
  channel<int> ch(8);
  std::atomic<long> count{0};
  std::atomic<int> producers_left{2};
  constexpr int n = 20'000;
  long sums[2] = {0, 0};
  auto run = [&](int i) {
    yutu::io::reactor r;
    auto body = [&]() -> task<long> {
      auto p = produce_range(ch, i * n, n);
      auto c = consume_all(ch, count);
      auto closer = [&]() -> task<void> {
        co_await std::move(p);
        if (producers_left.fetch_sub(1) == 1) ch.close();
      };
      auto cl = closer();
      auto [none, sum] = co_await yutu::when_all(std::move(cl), std::move(c));
      (void)none;
      co_return sum;
    };
    sums[i] = r.block_on(body());
  };
  std::thread t0(run, 0), t1(run, 1);
  t0.join();
  t1.join();
  long expected = static_cast<long>(2 * n - 1) * (2 * n) / 2;
  CHECK(count.load() == 2 * n);
  CHECK(sums[0] + sums[1] == expected);
}
