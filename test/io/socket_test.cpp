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

namespace {

// A connected pair on one reactor: {client, server}.
task<std::pair<tcp_stream, tcp_stream>> connected_pair(tcp_listener& l) {
  auto c = co_await tcp_stream::connect(l.local_address());
  REQUIRE(c.has_value());
  auto s = co_await l.accept();
  REQUIRE(s.has_value());
  co_return std::pair<tcp_stream, tcp_stream>(std::move(*c), std::move(*s));
}

task<void> read_all_into(tcp_stream& s, std::vector<std::byte>& into, std::size_t n) {
  into.resize(n);
  auto r = co_await s.recv_exact(into);
  REQUIRE(r.has_value());
}

}  // namespace

TEST_CASE("send_zc resumes only after the kernel released the buffer") {
  reactor r;
  if (!r.features().send_zc) {
    MESSAGE("kernel lacks IORING_OP_SEND_ZC: send_zc is a plain send here");
  }
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    constexpr std::size_t n = 256 * 1024;
    auto expect = pattern(n, 3);
    auto buf = expect;
    std::vector<std::byte> got;
    int done = 0;
    spawn(read_all_into(s, got, n), &done);
    std::size_t sent = 0;
    while (sent < n) {
      auto op = c.send_zc(std::span<const std::byte>(buf).subspan(sent));
      auto w = co_await op;
      REQUIRE(w.has_value());
      CHECK(op.used_zero_copy() == r.features().send_zc);
      // The kernel is done with these bytes: scribbling over them must not change what the peer reads.
      std::memset(buf.data() + sent, 0xee, *w);
      sent += *w;
    }
    while (!done) co_await yutu::io::nop();
    CHECK(got == expect);
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("send_all with zero copy forced on delivers every byte") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    c.set_zero_copy(tcp_stream::zc_policy::always);
    constexpr std::size_t n = 8 << 20;
    auto data = pattern(n, 11);
    std::vector<std::byte> got;
    int done = 0;
    spawn(read_all_into(s, got, n), &done);
    auto w = co_await c.send_all(data);
    REQUIRE(w.has_value());
    while (!done) co_await yutu::io::nop();
    CHECK(got == data);
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("send_all falls back to send where the socket refuses zero copy") {
  reactor r;
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  tcp_stream a(sv[0]), b(sv[1]);  // any stream socket works with the ops
  a.set_zero_copy(tcp_stream::zc_policy::always);
  auto body = [&]() -> task<void> {
    constexpr std::size_t n = 1 << 20;
    auto data = pattern(n, 5);
    std::vector<std::byte> got;
    int done = 0;
    spawn(read_all_into(b, got, n), &done);
    auto w = co_await a.send_all(data);
    REQUIRE(w.has_value());
    while (!done) co_await yutu::io::nop();
    CHECK(got == data);
    // The op itself reports the refusal as a value, after every CQE it was owed.
    if (r.features().send_zc) {
      auto z = co_await a.send_zc(std::span<const std::byte>(data).first(1024));
      REQUIRE_FALSE(z.has_value());
      CHECK(z.error() == std::errc::operation_not_supported);
    }
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("send_zc to a reset peer fails as a value and owes nothing") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    REQUIRE(s.set_linger(true, 0).has_value());
    s.close();  // RST
    auto data = pattern(1 << 20, 9);
    yutu::result<std::size_t> w;
    // The first send may still be accepted into the buffer before the RST is seen.
    for (int i = 0; i < 100 && (w = co_await c.send_zc(data)); ++i) {
    }
    REQUIRE_FALSE(w.has_value());
    CHECK((w.error() == std::errc::connection_reset || w.error() == std::errc::broken_pipe));
    CHECK(r.in_flight() == 0);
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}
