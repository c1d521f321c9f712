// buffer_ring and multishot_receiver: streaming, -ENOBUFS backpressure, timeouts, cancellation,
// errors, and destruction while the kernel still owes completions.
#include <doctest/doctest.h>

#include <memory>
#include <thread>
#include <vector>

#include "io_test_util.hpp"
#include "yutu/io/buffer_ring.hpp"
#include "yutu/io/socket.hpp"

using namespace std::chrono_literals;
using yutu::task;
using yutu::io::address;
using yutu::io::buffer_ring;
using yutu::io::multishot_receiver;
using yutu::io::reactor;
using yutu::io::received;
using yutu::io::tcp_listener;
using yutu::io::tcp_stream;
using yutu::test::pattern;
using yutu::test::spawn;

namespace {

struct tcp_pair {
  tcp_stream client, server;
};

task<tcp_pair> make_pair(tcp_listener& l) {
  auto c = co_await tcp_stream::connect(l.local_address());
  REQUIRE(c.has_value());
  auto s = co_await l.accept();
  REQUIRE(s.has_value());
  co_return tcp_pair{std::move(*c), std::move(*s)};
}

task<void> send_then_close(tcp_stream& s, std::vector<std::byte> const& data) {
  auto w = co_await s.send_all(data);
  REQUIRE(w.has_value());
  REQUIRE(s.shutdown_write().has_value());
}

// Reads everything up to EOF through `rx`, holding up to `hold` chunks before releasing them.
task<std::vector<std::byte>> drain(multishot_receiver& rx, std::size_t hold) {
  std::vector<std::byte> out;
  std::vector<received> held;
  for (;;) {
    auto c = co_await rx.next();
    if (!c) {
      CHECK(c.error() == yutu::errc::closed);
      break;
    }
    REQUIRE(c->size() > 0);
    out.insert(out.end(), c->data().begin(), c->data().end());
    held.push_back(std::move(*c));
    if (held.size() >= hold) held.clear();
  }
  co_return out;
}

}  // namespace

TEST_CASE("buffer_ring validates its shape") {
  reactor r;
  CHECK_FALSE(buffer_ring::create(r, 1, 3, 4096).has_value());
  CHECK_FALSE(buffer_ring::create(r, 1, 0, 4096).has_value());
  CHECK_FALSE(buffer_ring::create(r, 1, 8, 0).has_value());
  auto b = buffer_ring::create(r, 1, 8, 4096);
  REQUIRE(b.has_value());
  CHECK(b->count() == 8);
  CHECK(b->available() == 8);
  // A group id is one ring's: registering it twice is refused by the kernel.
  CHECK_FALSE(buffer_ring::create(r, 1, 8, 4096).has_value());
}

TEST_CASE("a multishot receiver streams a socket through the ring") {
  reactor r;
  auto ring = buffer_ring::create(r, 7, 16, 4096);
  REQUIRE(ring.has_value());
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto data = pattern(4 << 20, 21);
  std::uint64_t arms = 0;
  auto body = [&]() -> task<std::vector<std::byte>> {
    auto p = co_await make_pair(*l);
    multishot_receiver rx(p.server, *ring);
    spawn(send_then_close(p.client, data));
    auto got = co_await drain(rx, 1);
    arms = rx.arms();
    // After the end, next() keeps reporting it.
    auto again = co_await rx.next();
    CHECK_FALSE(again.has_value());
    co_return got;
  };
  auto got = r.block_on(body());
  r.run_until_empty();
  CHECK(got == data);
  CHECK(arms >= 1);
  MESSAGE("4 MiB through 16 x 4 KiB buffers: ", arms, " arms");
  CHECK(r.in_flight() == 0);
  CHECK(ring->available() == 16);
  CHECK(ring->lent() == 0);
}

TEST_CASE("a tiny ring runs dry (-ENOBUFS) and the receiver recovers once buffers come back") {
  reactor r;
  auto ring = buffer_ring::create(r, 3, 2, 64);
  REQUIRE(ring.has_value());
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto data = pattern(64 * 1024, 5);
  std::uint64_t enobufs = 0, arms = 0;
  auto body = [&]() -> task<std::vector<std::byte>> {
    auto p = co_await make_pair(*l);
    // Everything is in the receiver's socket buffer before it arms: the kernel fills both buffers at
    // once and has nowhere to put the rest.
    co_await send_then_close(p.client, data);
    multishot_receiver rx(p.server, *ring);
    auto got = co_await drain(rx, 2);  // holds both buffers at times: the ring is empty then
    enobufs = rx.enobufs();
    arms = rx.arms();
    co_return got;
  };
  auto got = r.block_on(body());
  r.run_until_empty();
  CHECK(got == data);
  CHECK(enobufs > 0);
  CHECK(arms > 1);
  MESSAGE("64 KiB through 2 x 64 B buffers: ", enobufs, " -ENOBUFS, ", arms, " arms");
  CHECK(r.in_flight() == 0);
  CHECK(ring->available() == 2);
}

TEST_CASE("destroying an armed receiver leaves nothing the kernel still completes against") {
  reactor r;
  auto ring = buffer_ring::create(r, 4, 8, 256);
  REQUIRE(ring.has_value());
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto p = co_await make_pair(*l);
    for (int round = 0; round < 200; ++round) {
      auto rx = std::make_unique<multishot_receiver>(p.server, *ring);
      // Arm it: a wait that times out leaves the RECV armed in the kernel.
      auto first = co_await rx->next().with_timeout(100us);
      REQUIRE_FALSE(first.has_value());
      CHECK(yutu::is_timeout(first.error()));
      CHECK(rx->armed());
      // Data arriving now is either queued in the receiver or still on its way in a CQE.
      auto w = co_await p.client.send_all(pattern(1000, round));
      REQUIRE(w.has_value());
      if (round % 2) {
        auto c = co_await rx->next();
        REQUIRE(c.has_value());
        received keep = std::move(*c);
        rx.reset();  // a `received` may outlive its receiver (not its ring)
        CHECK(ring->lent() == 1);
      } else {
        rx.reset();
      }
      // The orphan absorbs the cancellation; leftover bytes are this round's, drop them.
      co_await yutu::io::nop();
      std::vector<std::byte> sink(4096);
      while (true) {
        auto n = co_await p.server.recv(sink).with_timeout(1ms);
        if (!n) break;
      }
    }
  };
  r.block_on(body());
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
  CHECK(ring->available() == 8);
  CHECK(ring->lent() == 0);
}

TEST_CASE("destroying a receiver under a pending next() ends that wait with closed") {
  reactor r;
  auto ring = buffer_ring::create(r, 5, 4, 256);
  REQUIRE(ring.has_value());
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto p = co_await make_pair(*l);
    auto rx = std::make_unique<multishot_receiver>(p.server, *ring);
    std::error_code seen;
    int done = 0;
    auto waiter = [](multishot_receiver& rx, std::error_code& seen) -> task<void> {
      auto c = co_await rx.next();
      REQUIRE_FALSE(c.has_value());
      seen = c.error();
    };
    spawn(waiter(*rx, seen), &done);
    co_await yutu::io::nop();
    CHECK(done == 0);
    rx.reset();
    while (!done) co_await yutu::io::nop();
    CHECK(seen == yutu::errc::closed);
  };
  r.block_on(body());
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
  CHECK(ring->available() == 4);
}

TEST_CASE("a timed-out or cancelled next() loses no data") {
  reactor r;
  auto ring = buffer_ring::create(r, 6, 8, 1024);
  REQUIRE(ring.has_value());
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto p = co_await make_pair(*l);
    multishot_receiver rx(p.server, *ring);
    auto t0 = std::chrono::steady_clock::now();
    auto a = co_await rx.next().with_timeout(10ms);
    REQUIRE_FALSE(a.has_value());
    CHECK(yutu::is_timeout(a.error()));
    CHECK(std::chrono::steady_clock::now() - t0 >= 10ms);

    std::stop_source src;
    std::thread th([&] {
      std::this_thread::sleep_for(10ms);
      src.request_stop();
    });
    t0 = std::chrono::steady_clock::now();
    auto b = co_await rx.next().with_stop_token(src.get_token());
    th.join();
    REQUIRE_FALSE(b.has_value());
    CHECK(yutu::is_canceled(b.error()));
    CHECK(std::chrono::steady_clock::now() - t0 < 5s);

    auto msg = pattern(100, 77);
    REQUIRE((co_await p.client.send_all(msg)).has_value());
    auto c = co_await rx.next().with_timeout(5s);
    REQUIRE(c.has_value());
    CHECK(std::vector<std::byte>(c->data().begin(), c->data().end()) == msg);
  };
  r.block_on(body());
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
}

TEST_CASE("a reset peer surfaces as an error from next()") {
  reactor r;
  auto ring = buffer_ring::create(r, 8, 4, 1024);
  REQUIRE(ring.has_value());
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto p = co_await make_pair(*l);
    multishot_receiver rx(p.server, *ring);
    REQUIRE(p.client.set_linger(true, 0).has_value());
    p.client.close();
    auto c = co_await rx.next().with_timeout(5s);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error() == std::errc::connection_reset);
  };
  r.block_on(body());
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
}
