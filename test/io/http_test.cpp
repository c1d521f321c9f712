// HTTP over the ring: the Beast-backed codec (decoding in pieces, pipelining, limits, malformed input,
// responses framed by EOF), URL helpers, and the client and server on loopback (keep-alive, 400 / 408 /
// 413 / 431 answers, deadlines, stop with a request in flight, stale kept-alive connections).
#include <doctest/doctest.h>

#include <chrono>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/http.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/socket.hpp"

using namespace std::chrono_literals;
using yutu::result;
using yutu::task;
using yutu::io::address;
using yutu::io::http_client;
using yutu::io::http_errc;
using yutu::io::http_field;
using yutu::io::http_request;
using yutu::io::http_request_decoder;
using yutu::io::http_response;
using yutu::io::http_response_decoder;
using yutu::io::http_server;
using yutu::io::http_status;
using yutu::io::http_verb;
using yutu::io::reactor;
using yutu::io::tcp_stream;
using yutu::test::spawn;

// --- codec ---

TEST_CASE("decoder: a request fed one byte at a time") {
  http_request_decoder d;
  const std::string wire = "PUT /metadata?key=a%2Fb HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
  for (std::size_t i = 0; i + 1 < wire.size(); ++i) {
    d.append(std::string_view(wire).substr(i, 1));
    auto m = d.next();
    REQUIRE(m.has_value());
    CHECK_FALSE(m->has_value());
    CHECK_FALSE(d.idle());
  }
  d.append(std::string_view(wire).substr(wire.size() - 1));
  auto m = d.next();
  REQUIRE(m.has_value());
  REQUIRE(m->has_value());
  const http_request& req = **m;
  CHECK(req.method() == http_verb::put);
  CHECK(req.target() == "/metadata?key=a%2Fb");
  CHECK(req[http_field::host] == "x");
  CHECK(req.body() == "hello");
  CHECK(d.idle());
}

TEST_CASE("decoder: a chunked request fed one byte at a time (Beast 1.81 final-chunk assert)") {
  // Found by fuzz/http_request_fuzz: "0\r\n" then one more byte tripped an assertion inside Beast.
  for (std::string wire : {"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
                           "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX-T: 1\r\n\r\n"}) {
    http_request_decoder d;
    std::optional<http_request> got;
    for (char c : wire) {
      REQUIRE_FALSE(got.has_value());
      d.append(std::string_view(&c, 1));
      auto m = d.next();
      REQUIRE(m.has_value());
      if (*m) got = std::move(**m);
    }
    REQUIRE(got.has_value());
    CHECK(got->body() == (wire.find("abc") != std::string::npos ? "abc" : ""));
    CHECK(d.idle());
  }
}

TEST_CASE("decoder: pipelined requests come out one by one, in order") {
  http_request_decoder d;
  d.append(
      "GET /a HTTP/1.1\r\nHost: x\r\n\r\n"
      "POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
      "GET /c HTTP/1.1\r\n");
  auto a = d.next();
  REQUIRE((a && *a));
  CHECK((*a)->target() == "/a");
  auto b = d.next();
  REQUIRE((b && *b));
  CHECK((*b)->target() == "/b");
  CHECK((*b)->body() == "abcde");
  auto c = d.next();
  REQUIRE(c.has_value());
  CHECK_FALSE(c->has_value());  // /c's header is not complete
  CHECK_FALSE(d.idle());
  d.append("Host: x\r\n\r\n");
  c = d.next();
  REQUIRE((c && *c));
  CHECK((*c)->target() == "/c");
}

TEST_CASE("decoder: malformed input fails and the decoder stays failed") {
  for (std::string bad : {"GARBAGE\r\n\r\n", "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
                          "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                          "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"}) {
    CAPTURE(bad);
    http_request_decoder d;
    d.append(bad);
    auto m = d.next();
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error() == http_errc::bad_message);
    d.append("GET / HTTP/1.1\r\n\r\n");
    CHECK_FALSE(d.next().has_value());
  }
}

TEST_CASE("decoder: header and body limits") {
  yutu::io::http_limits lim{.header_limit = 1024, .body_limit = 100};
  SUBCASE("header") {
    http_request_decoder d(lim);
    d.append("GET / HTTP/1.1\r\nX-Big: " + std::string(2000, 'a'));
    auto m = d.next();
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error() == http_errc::header_too_large);
  }
  SUBCASE("declared body") {
    http_request_decoder d(lim);
    d.append("PUT / HTTP/1.1\r\nContent-Length: 101\r\n\r\n");
    auto m = d.next();
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error() == http_errc::body_too_large);
  }
  SUBCASE("chunked body") {
    http_request_decoder d(lim);
    d.append("PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n50\r\n" + std::string(80, 'a') + "\r\n50\r\n" +
             std::string(80, 'b') + "\r\n0\r\n\r\n");
    auto m = d.next();
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error() == http_errc::body_too_large);
  }
  SUBCASE("at the limit") {
    http_request_decoder d(lim);
    d.append("PUT / HTTP/1.1\r\nContent-Length: 100\r\n\r\n" + std::string(100, 'z'));
    auto m = d.next();
    REQUIRE((m && *m));
    CHECK((*m)->body().size() == 100);
  }
}

TEST_CASE("decoder: end of stream") {
  SUBCASE("a response framed by EOF") {
    http_response_decoder d;
    d.append("HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil the end");
    auto m = d.next();
    REQUIRE(m.has_value());
    CHECK_FALSE(m->has_value());
    auto f = d.finish();
    REQUIRE((f && *f));
    CHECK((*f)->body() == "until the end");
  }
  SUBCASE("nothing begun") {
    http_request_decoder d;
    auto f = d.finish();
    REQUIRE(f.has_value());
    CHECK_FALSE(f->has_value());
  }
  SUBCASE("a request cut short") {
    http_request_decoder d;
    d.append("PUT / HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
    REQUIRE(d.next().has_value());
    auto f = d.finish();
    REQUIRE_FALSE(f.has_value());
    CHECK(f.error() == http_errc::partial_message);
  }
  SUBCASE("a header cut short") {
    http_request_decoder d;
    d.append("GET / HTT");
    REQUIRE(d.next().has_value());
    auto f = d.finish();
    REQUIRE_FALSE(f.has_value());
    CHECK(f.error() == http_errc::partial_message);
  }
}

TEST_CASE("decoder: a response to HEAD has no body whatever its Content-Length") {
  http_response_decoder d;
  d.expect_head_response();
  d.append("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
  auto a = d.next();
  REQUIRE((a && *a));
  CHECK((*a)->body().empty());
  auto b = d.next();
  REQUIRE((b && *b));
  CHECK((*b)->result() == http_status::no_content);
}

TEST_CASE("decoder: 100-continue is signalled once") {
  http_request_decoder d;
  d.append("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n");
  REQUIRE(d.next().has_value());
  CHECK(d.take_continue());
  CHECK_FALSE(d.take_continue());
  d.append("abc");
  auto m = d.next();
  REQUIRE((m && *m));
  CHECK((*m)->body() == "abc");
}

TEST_CASE("serialize then decode gives the message back") {
  http_request req{http_verb::put, "/x?key=1", 11};
  req.set(http_field::host, "h");
  req.body() = std::string(100000, 'q');
  std::string wire = yutu::io::serialize(req);
  CHECK(wire.find("Content-Length: 100000") != std::string::npos);
  http_request_decoder d;
  d.append(wire);
  auto m = d.next();
  REQUIRE((m && *m));
  CHECK((*m)->method() == http_verb::put);
  CHECK((*m)->target() == "/x?key=1");
  CHECK((*m)->body() == req.body());

  http_response resp = yutu::io::make_response(http_status::not_found, "nope\n");
  http_response_decoder rd;
  rd.append(yutu::io::serialize(resp));
  auto rm = rd.next();
  REQUIRE((rm && *rm));
  CHECK((*rm)->result() == http_status::not_found);
  CHECK((*rm)->body() == "nope\n");
}

TEST_CASE("url helpers") {
  const std::string key = "mooncake/ram/a b&c=d+e%f?g#h\xff";
  std::string enc = yutu::io::url_encode(key);
  CHECK(enc.find_first_of("/ &=+%?#") == enc.find('%'));  // only escapes use '%'
  for (char c : std::string("/ &=+?#")) CHECK(enc.find(c) == std::string::npos);
  auto dec = yutu::io::url_decode(enc);
  REQUIRE(dec.has_value());
  CHECK(*dec == key);
  CHECK(yutu::io::url_decode("a+b%20c").value() == "a b c");
  CHECK_FALSE(yutu::io::url_decode("%zz").has_value());
  CHECK_FALSE(yutu::io::url_decode("abc%4").has_value());
  CHECK_FALSE(yutu::io::url_decode("%").has_value());

  CHECK(yutu::io::query_param("/m?key=" + enc, "key") == key);
  CHECK(yutu::io::query_param("/m?a=1&key=v&b=2", "key") == "v");
  CHECK(yutu::io::query_param("/m?a=1&b=2", "key") == std::nullopt);
  CHECK(yutu::io::query_param("/m", "key") == std::nullopt);
  CHECK(yutu::io::query_param("/m?key", "key") == "");
  CHECK(yutu::io::query_param("/m?key=%zz", "key") == std::nullopt);
  CHECK(yutu::io::target_path("/m?key=1") == "/m");
  CHECK(yutu::io::target_path("/m") == "/m");
}

// --- client and server on loopback ---

namespace {

// Echoes method, target and body; "/slow" waits 150 ms first, "/throw" throws.
task<http_response> echo_handler(const http_request& req) {
  std::string_view target(req.target().data(), req.target().size());
  if (target == "/slow") (void)co_await yutu::io::sleep_for(150ms);
  if (target == "/throw") throw std::runtime_error("handler failure");
  http_response r = yutu::io::make_response(http_status::ok,
                                            std::string(req.method_string()) + " " + std::string(target) + " " +
                                                req.body());
  co_return r;
}

http_request make_req(http_verb v, std::string target, std::string body = {}) {
  http_request r{v, target, 11};
  r.body() = std::move(body);
  return r;
}

// Sends raw bytes and reads until EOF (or 5 s); returns what arrived.
task<std::string> raw_exchange(address to, std::string bytes, bool close_write = false) {
  auto s = co_await tcp_stream::connect(to);
  REQUIRE(s.has_value());
  if (!bytes.empty()) REQUIRE((co_await s->send_all(std::as_bytes(std::span(bytes.data(), bytes.size())))).has_value());
  if (close_write) (void)s->shutdown_write();
  std::string got;
  std::vector<std::byte> buf(64 * 1024);
  for (;;) {
    auto n = co_await s->recv(buf).with_timeout(5s);
    if (!n || *n == 0) break;
    got.append(reinterpret_cast<const char*>(buf.data()), *n);
  }
  co_return got;
}

task<void> spawn_server(http_server& s, int* served) {
  spawn(s.serve(echo_handler), served);
  co_return;
}

// Starts serve() in the background: I/O can only start while the reactor is being driven.
void start_serving(reactor& r, http_server& s, int* served) { r.block_on(spawn_server(s, served)); }

struct server_fixture {
  reactor r;
  std::optional<http_server> srv;
  int served = 0;
  explicit server_fixture(yutu::io::http_server_options o = {}) {
    auto s = http_server::bind(address::ipv4_loopback(0), o);
    REQUIRE(s.has_value());
    srv.emplace(std::move(*s));
    start_serving(r, *srv, &served);
  }
  address at() const { return srv->local_address(); }
  ~server_fixture() {
    srv->stop();
    r.run_until_empty();
    CHECK(served == 1);
    CHECK(srv->connections() == 0);
  }
};

}  // namespace

TEST_CASE("client and server: requests on one kept-alive connection") {
  server_fixture f;
  http_client c(f.at());
  auto body = [&]() -> task<void> {
    for (int i = 0; i < 3; ++i) {
      auto r = co_await c.request(make_req(http_verb::put, "/k" + std::to_string(i), "v" + std::to_string(i)));
      REQUIRE(r.has_value());
      CHECK(r->result() == http_status::ok);
      CHECK(r->body() == "PUT /k" + std::to_string(i) + " v" + std::to_string(i));
      CHECK(c.idle_connections() == 1);
      CHECK(f.srv->connections() == 1);
    }
    // A large body both ways.
    auto big = co_await c.request(make_req(http_verb::post, "/big", std::string(900 * 1024, 'x')));
    REQUIRE(big.has_value());
    CHECK(big->body().size() == 900 * 1024 + 10);
    auto head = co_await c.request(make_req(http_verb::head, "/h"));
    REQUIRE(head.has_value());
    CHECK(head->body().empty());
    CHECK(f.srv->connections() == 1);
  };
  auto t = body();
  f.r.block_on(std::move(t));
}

TEST_CASE("server: malformed requests get 400, oversized ones 413 / 431, then the connection closes") {
  yutu::io::http_server_options o;
  o.limits.body_limit = 1024 * 1024;
  o.limits.header_limit = 8 * 1024;
  server_fixture f(o);
  auto body = [&]() -> task<void> {
    std::string a = co_await raw_exchange(f.at(), "NOT HTTP AT ALL\r\n\r\n");
    CHECK(a.starts_with("HTTP/1.1 400 Bad Request\r\n"));
    std::string b = co_await raw_exchange(f.at(), "GET / HTTP/1.1\r\nX: " + std::string(10000, 'h') + "\r\n\r\n");
    CHECK(b.starts_with("HTTP/1.1 431 "));
    std::string c = co_await raw_exchange(f.at(), "PUT / HTTP/1.1\r\nContent-Length: 2000000\r\n\r\nabc");
    CHECK(c.starts_with("HTTP/1.1 413 "));
    // The client sends all of a 2 MiB body before reading: the answer must still reach it.
    http_client cl(f.at());
    auto r = co_await cl.request(make_req(http_verb::put, "/big", std::string(2 << 20, 'b')));
    REQUIRE(r.has_value());
    CHECK(r->result() == http_status::payload_too_large);
    CHECK_FALSE(r->keep_alive());
    CHECK(cl.idle_connections() == 0);
    // A good request after the bad ones: the server still serves.
    auto ok = co_await cl.request(make_req(http_verb::get, "/fine"));
    REQUIRE(ok.has_value());
    CHECK(ok->body() == "GET /fine ");
  };
  auto t = body();
  f.r.block_on(std::move(t));
}

TEST_CASE("server: a stalled client is answered 408 and dropped while another is served") {
  yutu::io::http_server_options o;
  o.request_timeout = 300ms;
  o.idle_timeout = 400ms;
  server_fixture f(o);
  int stalled_done = 0, idle_done = 0;
  std::string stalled_got, idle_got;
  yutu::io::clock::duration stalled_took{}, idle_took{};
  auto stalled = [&]() -> task<void> {
    auto t0 = yutu::io::clock::now();
    stalled_got = co_await raw_exchange(f.at(), "GET /stalled HTTP/1.1\r\nHost: x\r\n");
    stalled_took = yutu::io::clock::now() - t0;
  };
  auto idle = [&]() -> task<void> {
    auto t0 = yutu::io::clock::now();
    idle_got = co_await raw_exchange(f.at(), "");
    idle_took = yutu::io::clock::now() - t0;
  };
  auto other = [&]() -> task<void> {
    spawn(stalled(), &stalled_done);
    spawn(idle(), &idle_done);
    (void)co_await yutu::io::sleep_for(20ms);  // both connected and the stalled one sent its bytes
    http_client c(f.at());
    for (int i = 0; i < 5; ++i) {
      auto r = co_await c.request(make_req(http_verb::get, "/other"), 1s);
      REQUIRE(r.has_value());
      CHECK(r->body() == "GET /other ");
    }
    CHECK(stalled_done == 0);  // served while the stalled ones still hold their connections
    CHECK(f.srv->connections() == 3);
  };
  auto t3 = other();
  f.r.block_on(std::move(t3));
  while (stalled_done + idle_done < 2) f.r.run_once();
  CHECK(stalled_got.starts_with("HTTP/1.1 408 "));
  CHECK(stalled_took >= 250ms);
  CHECK(stalled_took < 3s);
  CHECK(idle_got.empty());  // an idle connection is closed without a word
  CHECK(idle_took >= 350ms);
  CHECK(idle_took < 3s);
}

TEST_CASE("server: a handler that throws answers 500 and the connection lives on") {
  server_fixture f;
  http_client c(f.at());
  auto body = [&]() -> task<void> {
    auto r = co_await c.request(make_req(http_verb::get, "/throw"));
    REQUIRE(r.has_value());
    CHECK(r->result() == http_status::internal_server_error);
    auto r2 = co_await c.request(make_req(http_verb::get, "/after"));
    REQUIRE(r2.has_value());
    CHECK(r2->result() == http_status::ok);
    CHECK(c.idle_connections() == 1);
  };
  auto t = body();
  f.r.block_on(std::move(t));
}

TEST_CASE("server: stop() answers the request in flight, then serve() returns") {
  reactor r;
  auto s = http_server::bind(address::ipv4_loopback(0));
  REQUIRE(s.has_value());
  int served = 0;
  start_serving(r, *s, &served);
  const address at = s->local_address();
  auto body = [&]() -> task<void> {
    int stopped = 0;
    auto stopper = [&]() -> task<void> {
      (void)co_await yutu::io::sleep_for(50ms);  // the /slow handler is running by then
      s->stop();
    };
    auto st = stopper();
    spawn(std::move(st), &stopped);
    http_client c(at);
    auto resp = co_await c.request(make_req(http_verb::get, "/slow"));
    REQUIRE(resp.has_value());
    CHECK(resp->body() == "GET /slow ");
    CHECK_FALSE(resp->keep_alive());  // the server is stopping
    CHECK(stopped == 1);
  };
  auto t = body();
  r.block_on(std::move(t));
  r.run_until_empty();
  CHECK(served == 1);
  CHECK(s->connections() == 0);
  // The listener is closed.
  auto probe = [&]() -> task<void> {
    auto c = co_await tcp_stream::connect(at);
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error() == std::errc::connection_refused);
  };
  auto p = probe();
  r.block_on(std::move(p));
}

TEST_CASE("client: deadline, refused connection, stale kept-alive connection") {
  yutu::io::http_server_options o;
  o.idle_timeout = 100ms;  // kept-alive connections are closed by the server quickly
  server_fixture f(o);
  auto body = [&]() -> task<void> {
    http_client c(f.at());
    // Deadline shorter than the handler.
    auto t0 = yutu::io::clock::now();
    auto slow = co_await c.request(make_req(http_verb::get, "/slow"), 50ms);
    REQUIRE_FALSE(slow.has_value());
    CHECK(slow.error() == std::errc::timed_out);
    CHECK(yutu::io::clock::now() - t0 < 1s);
    CHECK(c.idle_connections() == 0);  // a timed-out connection is not reused
    // The server closes the parked connection after 100 ms; the client retries on a new one.
    auto a = co_await c.request(make_req(http_verb::get, "/a"));
    REQUIRE(a.has_value());
    CHECK(c.idle_connections() == 1);
    (void)co_await yutu::io::sleep_for(250ms);
    auto b = co_await c.request(make_req(http_verb::get, "/b"));
    REQUIRE(b.has_value());
    CHECK(b->body() == "GET /b ");
    // Nothing listens on a closed port.
    auto l = yutu::io::tcp_listener::bind(address::ipv4_loopback(0));
    REQUIRE(l.has_value());
    const address dead = l->local_address();
    l->close();
    auto r = co_await yutu::io::http_fetch(dead, make_req(http_verb::get, "/"), 1s);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == std::errc::connection_refused);
  };
  auto t = body();
  f.r.block_on(std::move(t));
}

TEST_CASE("server: HTTP/1.0 without keep-alive gets its answer, then EOF") {
  server_fixture f;
  auto body = [&]() -> task<void> {
    std::string got = co_await raw_exchange(f.at(), "GET /old HTTP/1.0\r\n\r\n");
    CHECK(got.starts_with("HTTP/1.0 200 OK\r\n"));
    CHECK(got.ends_with("GET /old "));
  };
  auto t = body();
  f.r.block_on(std::move(t));
}
