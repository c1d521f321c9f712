// TCP sockets over loopback: echo, send_zc, errors, timeouts, cancellation, resets, half close.
#include <doctest/doctest.h>

#include <cstring>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/socket.hpp"

using namespace std::chrono_literals;
using yutu::result;
using yutu::task;
using yutu::io::address;
using yutu::io::reactor;
using yutu::io::tcp_listener;
using yutu::io::tcp_stream;
using yutu::test::pattern;
using yutu::test::spawn;

namespace {

// Accepts one connection and echoes until EOF.
task<void> echo_server(tcp_listener& l, int* served) {
  auto s = co_await l.accept();
  REQUIRE(s.has_value());
  std::vector<std::byte> buf(64 * 1024);
  for (;;) {
    auto n = co_await s->recv(buf);
    REQUIRE(n.has_value());
    if (*n == 0) break;
    auto w = co_await s->send_all(std::span<const std::byte>(buf.data(), *n));
    REQUIRE(w.has_value());
  }
  ++*served;
}

task<bool> echo_client(address to, std::size_t bytes) {
  auto s = co_await tcp_stream::connect(to);
  REQUIRE(s.has_value());
  auto out = pattern(bytes, 7);
  std::vector<std::byte> in(bytes);
  // Send in pieces and read back in between, so neither side's buffers have to hold everything.
  std::size_t sent = 0, got = 0;
  while (got < bytes) {
    std::size_t piece = std::min<std::size_t>(bytes - sent, 16 * 1024);
    if (piece) {
      auto w = co_await s->send_all(std::span<const std::byte>(out).subspan(sent, piece));
      REQUIRE(w.has_value());
      sent += piece;
    }
    auto n = co_await s->recv(std::span<std::byte>(in).subspan(got, sent - got));
    REQUIRE(n.has_value());
    REQUIRE(*n > 0);
    got += *n;
  }
  REQUIRE(s->shutdown_write().has_value());
  std::byte b{};
  auto eof = co_await s->recv(std::span<std::byte>(&b, 1));
  REQUIRE(eof.has_value());
  CHECK(*eof == 0);
  co_return in == out;
}

}  // namespace

TEST_CASE("address parses and formats") {
  auto a = address::parse("127.0.0.1:8080");
  REQUIRE(a.has_value());
  CHECK(a->port() == 8080);
  CHECK(a->family() == AF_INET);
  CHECK(a->to_string() == "127.0.0.1:8080");
  auto b = address::parse("[::1]:443");
  REQUIRE(b.has_value());
  CHECK(b->family() == AF_INET6);
  CHECK(b->to_string() == "[::1]:443");
  auto c = address::parse("localhost:99");
  REQUIRE(c.has_value());
  CHECK(c->port() == 99);
  CHECK_FALSE(address::parse("127.0.0.1").has_value());
  CHECK_FALSE(address::parse("127.0.0.1:99999").has_value());
  CHECK_FALSE(address::parse("::1:80").has_value());
  CHECK_FALSE(address::parse("[::1]80").has_value());
  CHECK(address::ipv4_loopback(5) == *address::parse("127.0.0.1:5"));
}

TEST_CASE("echo over loopback") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  CHECK(l->local_address().port() != 0);
  int served = 0;
  auto body = [&]() -> task<bool> {
    spawn(echo_server(*l, &served));
    co_return co_await echo_client(l->local_address(), 1 << 20);
  };
  CHECK(r.block_on(body()));
  r.run_until_empty();
  CHECK(served == 1);
  CHECK(r.in_flight() == 0);
}
