// TCP sockets over loopback: echo, send_zc, errors, timeouts, cancellation, resets, half close.
#include <doctest/doctest.h>

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cstring>
#include <stop_token>
#include <string>
#include <thread>
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

// --- edge cases ---

namespace {

int open_fd_count() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

// A port nothing listens on: bind one, note it, close it.
std::uint16_t closed_port() {
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  return l->local_address().port();
}

}  // namespace

TEST_CASE("a peer reset surfaces as ECONNRESET, not a crash") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    REQUIRE(s.set_linger(true, 0).has_value());
    s.close();  // RST instead of FIN
    std::vector<std::byte> buf(100);
    auto n = co_await c.recv(buf);
    REQUIRE_FALSE(n.has_value());
    CHECK(n.error() == std::errc::connection_reset);
    // Writing to it afterwards is an error value too (MSG_NOSIGNAL: no SIGPIPE).
    auto w = co_await c.send_all(pattern(1 << 20));
    CHECK_FALSE(w.has_value());
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("half close: the peer reads EOF and can still answer") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    auto request = pattern(10000, 1);
    REQUIRE((co_await c.send_all(request)).has_value());
    REQUIRE(c.shutdown_write().has_value());
    // Server: read to EOF, then reply on the half that is still open.
    std::vector<std::byte> got(request.size());
    REQUIRE((co_await s.recv_exact(got)).has_value());
    CHECK(got == request);
    std::byte one{};
    auto eof = co_await s.recv(std::span<std::byte>(&one, 1));
    REQUIRE(eof.has_value());
    CHECK(*eof == 0);
    auto reply = pattern(20000, 2);
    REQUIRE((co_await s.send_all(reply)).has_value());
    s.close();
    std::vector<std::byte> back(reply.size());
    REQUIRE((co_await c.recv_exact(back)).has_value());
    CHECK(back == reply);
    // recv_exact past the end reports closed.
    auto more = co_await c.recv_exact(std::span<std::byte>(&one, 1));
    REQUIRE_FALSE(more.has_value());
    CHECK(more.error() == yutu::errc::closed);
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("send_all of 64 MiB against a slow reader with small buffers survives short writes") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  // Inherited by accepted sockets; set before the handshake so the window is small from the start.
  REQUIRE(yutu::io::detail::set_int_option(l->fd(), SOL_SOCKET, SO_RCVBUF, 4096).has_value());
  constexpr std::size_t n = 64 << 20;
  auto data = pattern(n, 64);
  std::uint64_t reads = 0;
  auto slow_reader = [&](tcp_stream& s) -> task<bool> {
    std::vector<std::byte> chunk(3000);  // odd size: no read lines up with a write
    std::size_t at = 0;
    bool same = true;
    while (at < n) {
      auto k = co_await s.recv(chunk);
      REQUIRE(k.has_value());
      REQUIRE(*k > 0);
      same = same && std::memcmp(chunk.data(), data.data() + at, *k) == 0;
      at += *k;
      ++reads;
      if (reads % 8 == 0) co_await yutu::io::nop();  // let the writer run into a full window
    }
    co_return same;
  };
  auto body = [&]() -> task<bool> {
    auto [c, s] = co_await connected_pair(*l);
    REQUIRE(c.set_send_buffer_size(4096).has_value());
    bool ok = false;
    int done = 0;
    auto reader = [&]() -> task<void> { ok = co_await slow_reader(s); };
    spawn(reader(), &done);
    auto w = co_await c.send_all(data);
    REQUIRE(w.has_value());
    while (!done) co_await yutu::io::nop();
    co_return ok;
  };
  CHECK(r.block_on(body()));
  MESSAGE("64 MiB in ", reads, " reads");
  CHECK(reads > 1000);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("send_all_within: every byte to a reader; timed_out at its deadline against one that stops reading") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  REQUIRE(yutu::io::detail::set_int_option(l->fd(), SOL_SOCKET, SO_RCVBUF, 4096).has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    REQUIRE(c.set_send_buffer_size(4096).has_value());
    // 1 MiB through small buffers: many short sends through the ring.
    constexpr std::size_t n = 1 << 20;
    auto data = pattern(n, 9);
    bool same = false;
    int done = 0;
    auto reader = [&]() -> task<void> {
      std::vector<std::byte> in(n);
      std::size_t at = 0;
      while (at < n) {
        auto k = co_await s.recv(std::span<std::byte>(in).subspan(at));
        REQUIRE(k.has_value());
        REQUIRE(*k > 0);
        at += *k;
      }
      same = in == data;
    };
    spawn(reader(), &done);
    auto w = co_await yutu::io::send_all_within(c.fd(), data, 5000ms);
    CHECK(w.has_value());
    while (!done) co_await yutu::io::nop();
    CHECK(same);
    // Nobody reads now: the send fills both buffers and ends at its deadline, as a value.
    auto t0 = std::chrono::steady_clock::now();
    auto stuck = co_await yutu::io::send_all_within(c.fd(), data, 100ms);
    auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(stuck.has_value());
    CHECK(stuck.error() == std::errc::timed_out);
    CHECK(took >= 90ms);
    CHECK(took < 2000ms);
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("connecting to a closed port is connection_refused") {
  reactor r;
  auto to = address::ipv4_loopback(closed_port());
  auto connect = [](address to) -> task<yutu::result<tcp_stream>> { co_return co_await tcp_stream::connect(to); };
  auto res = r.block_on(connect(to));
  REQUIRE_FALSE(res.has_value());
  CHECK(res.error() == std::errc::connection_refused);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("connect and recv with with_timeout fail with timed_out") {
  reactor r;
  // A listener with a full accept queue drops further SYNs: connect() then hangs until retransmits.
  auto l = tcp_listener::bind(address::ipv4_loopback(0), 0);
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    std::vector<tcp_stream> held;
    bool timed_out = false;
    for (int i = 0; i < 16 && !timed_out; ++i) {
      auto c = co_await tcp_stream::connect(l->local_address()).with_timeout(50ms);
      if (c) {
        held.push_back(std::move(*c));
      } else {
        CHECK(yutu::is_timeout(c.error()));
        timed_out = true;
      }
    }
    CHECK(timed_out);
    REQUIRE_FALSE(held.empty());
    // An established connection where nothing arrives.
    std::vector<std::byte> buf(10);
    auto t0 = std::chrono::steady_clock::now();
    auto n = co_await held.front().recv(buf).with_timeout(20ms);
    REQUIRE_FALSE(n.has_value());
    CHECK(yutu::is_timeout(n.error()));
    CHECK(std::chrono::steady_clock::now() - t0 >= 20ms);
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("a stop request cancels a pending recv and a pending accept promptly") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto stop_soon = [](std::stop_source& src) {
    return std::thread([&src] {
      std::this_thread::sleep_for(10ms);
      src.request_stop();
    });
  };
  auto body = [&]() -> task<void> {
    {
      std::stop_source src;
      auto th = stop_soon(src);
      auto t0 = std::chrono::steady_clock::now();
      auto a = co_await l->accept().with_stop_token(src.get_token());
      th.join();
      REQUIRE_FALSE(a.has_value());
      CHECK(yutu::is_canceled(a.error()));
      CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    }
    auto [c, s] = co_await connected_pair(*l);
    {
      std::stop_source src;
      auto th = stop_soon(src);
      std::vector<std::byte> buf(10);
      auto t0 = std::chrono::steady_clock::now();
      auto n = co_await c.recv(buf).with_stop_token(src.get_token());
      th.join();
      REQUIRE_FALSE(n.has_value());
      CHECK(yutu::is_canceled(n.error()));
      CHECK(std::chrono::steady_clock::now() - t0 < 2s);
    }
    // The connection still works after a cancelled recv.
    REQUIRE((co_await s.send_all(pattern(10))).has_value());
    std::vector<std::byte> buf(10);
    REQUIRE((co_await c.recv_exact(buf)).has_value());
    CHECK(buf == pattern(10));
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("100k sequential short connections neither exhaust ports nor leak fds") {
  // The server closes first, so TIME_WAIT lands on the server's side of each connection, keyed by the
  // listener's port: the client's ephemeral port is free again as soon as its socket closes, and the
  // ~28k-port ephemeral range is reused ~4 times over without EADDRNOTAVAIL. (Had the client closed
  // first, each client port would sit in TIME_WAIT for 60 s and the range would run out after 28k
  // connections.) Beyond net.ipv4.tcp_max_tw_buckets the kernel simply skips TIME_WAIT.
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  const int fds_before = open_fd_count();
  constexpr int n = 100000;
  auto body = [&]() -> task<int> {
    int good = 0;
    std::byte b{};
    for (int i = 0; i < n; ++i) {
      auto c = co_await tcp_stream::connect(l->local_address());
      if (!c) {
        FAIL("connect #", i, " failed: ", c.error().message());
        co_return good;
      }
      auto s = co_await l->accept();
      REQUIRE(s.has_value());
      s->close();
      auto eof = co_await c->recv(std::span<std::byte>(&b, 1));
      if (eof && *eof == 0) ++good;
    }
    co_return good;
  };
  auto t0 = std::chrono::steady_clock::now();
  int good = r.block_on(body());
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  MESSAGE(n, " connections in ", secs, " s");
  CHECK(good == n);
  CHECK(open_fd_count() == fds_before);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("set_keepalive sets the probe timing on the socket; bad values are invalid_argument") {
  reactor r;
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  auto body = [&]() -> task<void> {
    auto [c, s] = co_await connected_pair(*l);
    REQUIRE(c.set_keepalive(7, 3, 4).has_value());
    auto get = [&](int level, int name) {
      int v = -1;
      socklen_t n = sizeof v;
      REQUIRE(::getsockopt(c.fd(), level, name, &v, &n) == 0);
      return v;
    };
    CHECK(get(SOL_SOCKET, SO_KEEPALIVE) == 1);
    CHECK(get(IPPROTO_TCP, TCP_KEEPIDLE) == 7);
    CHECK(get(IPPROTO_TCP, TCP_KEEPINTVL) == 3);
    CHECK(get(IPPROTO_TCP, TCP_KEEPCNT) == 4);
    CHECK(get(SOL_SOCKET, SO_KEEPALIVE) == 1);
    auto bad = c.set_keepalive(0, 3, 4);
    REQUIRE_FALSE(bad.has_value());
    CHECK(bad.error() == std::errc::invalid_argument);
    CHECK(get(IPPROTO_TCP, TCP_KEEPIDLE) == 7);  // unchanged by the rejected call
  };
  r.block_on(body());
}
