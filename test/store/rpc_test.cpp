// The store RPC server and client in one process on loopback, against a fake master: every
// operation, pipelining and out-of-order answers, deadlines and dead masters, cancellation, hostile
// connections, and a clean stop.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "fake_master.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/store/rpc.hpp"
#include "yutu/store/rpc_client.hpp"
#include "yutu/store/rpc_server.hpp"

using namespace std::chrono_literals;
using namespace yutu;
using namespace yutu::store;
namespace rpc = yutu::store::rpc;
using rpc::op;
using io::address;
using io::tcp_stream;

namespace {

// A server on two reactors of its own, serving a fake master; stopped and joined on destruction.
struct server_fixture {
  test::fake_master master;
  io::reactor_pool pool{2};
  rpc_server srv;

  explicit server_fixture(rpc_server_options o = {}) : srv(rpc_server::bind(address::ipv4_loopback(0), o).value()) {
    pool.spawn(0, srv.serve(master, pool));
  }
  ~server_fixture() {
    srv.stop();
    pool.stop_and_join();
  }
  std::string where() const { return srv.local_address().to_string(); }
};

std::unique_ptr<rpc_master_client> make_client(const std::string& where, rpc_client_options o = {}) {
  auto c = rpc_master_client::create(where, o);
  REQUIRE(c);
  return std::move(*c);
}

segment_info seg(int i, std::uint64_t size = 1 << 20) {
  return {"seg" + std::to_string(i), "host" + std::to_string(i) + ":1", "host" + std::to_string(i),
          0x10000000ull * (i + 1), size, "tcp"};
}

task<void> every_operation(master_service& m) {
  CHECK(co_await m.mount_segment("c1", seg(0)));
  CHECK(co_await m.mount_segment("c1", seg(1)));
  auto dup = co_await m.mount_segment("c1", seg(0));
  CHECK(dup.error() == errc::segment_already_exists);

  auto p = co_await m.ping("c1");
  REQUIRE(p);
  CHECK(p->view_version == 7);
  CHECK_FALSE(p->need_remount);
  CHECK((co_await m.ping("stranger"))->need_remount);

  // Arguments live in named variables: g++ 12 destroys braced temporaries inside a co_await
  // expression twice (or miscompiles them).
  const replicate_config one;
  replicate_config two;
  two.replica_num = 2;
  auto reps = co_await m.put_start("c1", "k1", 4096, two);
  REQUIRE(reps);
  REQUIRE(reps->size() == 2);
  CHECK((*reps)[0].segment != (*reps)[1].segment);
  CHECK((*reps)[0].status == replica_status::processing);
  CHECK((co_await m.get_replica_list("k1")).error() == errc::replica_is_not_ready);
  CHECK((co_await m.put_start("c1", "k1", 4096, one)).error() == errc::object_already_exists);
  CHECK(co_await m.put_end("c1", "k1"));
  auto list = co_await m.get_replica_list("k1");
  REQUIRE(list);
  CHECK(list->size == 4096);
  CHECK(list->lease_ttl == 10000ms);
  REQUIRE(list->replicas.size() == 2);
  CHECK(list->replicas[1].addr == (*reps)[1].addr);
  CHECK(list->replicas[1].status == replica_status::complete);

  CHECK(co_await m.put_start("c1", "k2", 100, one));
  CHECK(co_await m.put_revoke("c1", "k2"));
  CHECK((co_await m.put_end("c1", "k2")).error() == errc::object_not_found);
  CHECK((co_await m.upsert_start("c1", "k1", 200, one))->size() == 1);
  CHECK(co_await m.put_end("c1", "k1"));
  CHECK(*co_await m.get_size("k1") == 200);
  CHECK((co_await m.get_size("nope")).error() == errc::object_not_found);

  std::vector<std::string> four{"b1", "b2", "k1", ""};
  std::vector<std::uint64_t> sizes{10, 20, 30, 40};
  auto bs = co_await m.batch_put_start("c1", four, sizes, one);
  REQUIRE(bs.size() == 4);
  CHECK(bs[0]);
  CHECK(bs[1]);
  CHECK(bs[2].error() == errc::object_already_exists);
  CHECK(bs[3].error() == errc::invalid_key);
  std::vector<std::string> ends{"b1", "b2", "zz"};
  auto be = co_await m.batch_put_end("c1", ends);
  REQUIRE(be.size() == 3);
  CHECK(be[0]);
  CHECK(be[1]);
  CHECK(be[2].error() == errc::object_not_found);
  CHECK(co_await m.put_start("c1", "b3", 10, one));
  std::vector<std::string> revokes{"b3", "b1"};
  auto br = co_await m.batch_put_revoke("c1", revokes);
  CHECK(br[0]);
  CHECK(br[1].error() == errc::invalid_write);

  std::vector<std::string> three{"b1", "b3", "k1"};
  auto bl = co_await m.batch_get_replica_list(three);
  REQUIRE(bl.size() == 3);
  CHECK(bl[0]->size == 10);
  CHECK(bl[1].error() == errc::object_not_found);
  CHECK(bl[2]->size == 200);
  std::vector<std::string> prefix{"k1", "b1", "b3", "b2"};
  auto mp = co_await m.match_prefix(prefix);
  REQUIRE(mp);
  CHECK(mp->hits == 2);
  CHECK(mp->replicas.size() == 2);
  CHECK(*co_await m.exist("b2"));
  CHECK_FALSE(*co_await m.exist("b3"));
  auto bx = co_await m.batch_exist(three);
  REQUIRE(bx.size() == 3);
  CHECK(*bx[0]);
  CHECK_FALSE(*bx[1]);
  CHECK(*bx[2]);

  CHECK(co_await m.remove("b1"));
  CHECK((co_await m.remove("b1")).error() == errc::object_not_found);
  std::vector<std::string> removes{"b2", "b1"};
  auto brm = co_await m.batch_remove(removes, true);
  CHECK(brm[0]);
  CHECK(brm[1].error() == errc::object_not_found);
  CHECK(*co_await m.remove_all() == 1);  // k1
  CHECK(co_await m.unmount_segment("c1", "seg1"));
  CHECK((co_await m.unmount_segment("c2", "seg0")).error() == errc::illegal_client);
  // Empty batches are fine too.
  const std::vector<std::string> none;
  CHECK((co_await m.batch_exist(none)).empty());
}

}  // namespace

TEST_CASE("every operation crosses the wire with its values and typed errors") {
  server_fixture s;
  auto c = make_client(s.where());
  c->pool().block_on(0, every_operation(*c));
  // The same calls against the fake directly give the same answers (the fixture's state differs, so
  // a fresh fake).
  test::fake_master direct;
  io::reactor r;
  r.block_on(every_operation(direct));
  auto st = s.srv.stats();
  CHECK(st.requests_by_op[static_cast<int>(op::put_start)] == 4);
  CHECK(st.failures_by_op[static_cast<int>(op::put_start)] == 1);
  CHECK(st.bad_requests == 0);
}

namespace {

task<result<std::uint64_t>> size_of(master_service& m, std::string key) { co_return co_await m.get_size(std::move(key)); }

task<void> pipelined(rpc_master_client& c, int n) {
  // Many puts in flight at once, then many lookups, each checked against its own key.
  std::vector<task<result<std::vector<replica_desc>>>> puts;
  for (int i = 0; i < n; ++i) puts.push_back(c.put_start("c1", "key" + std::to_string(i), 1 + i, {}));
  auto started = co_await when_all(std::move(puts));
  int ok = 0;
  for (auto& r : started) ok += r.has_value();
  CHECK(ok == n);
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back("key" + std::to_string(i));
  auto ended = co_await c.batch_put_end("c1", keys);
  REQUIRE(ended.size() == keys.size());
  int done = 0;
  for (auto& r : ended) done += r.has_value();
  CHECK(done == n);
  std::vector<task<result<std::uint64_t>>> gets;
  for (int i = 0; i < n; ++i) gets.push_back(size_of(c, keys[i]));
  auto sizes = co_await when_all(std::move(gets));
  int right = 0;
  for (int i = 0; i < n; ++i) right += sizes[i] && *sizes[i] == static_cast<std::uint64_t>(1 + i);
  CHECK(right == n);
}

}  // namespace

TEST_CASE("10k concurrent requests pipelined on two connections") {
  server_fixture s;
  REQUIRE(sync_wait(s.master.mount_segment("c1", seg(0, 1ull << 40))));
  auto c = make_client(s.where());
  c->pool().block_on(0, pipelined(*c, 10000));
  CHECK(c->open_connections() == 2);
  auto st = s.srv.stats();
  CHECK(st.connections_accepted == 2);
  CHECK(st.requests == 20001);
}

namespace {
task<void> record(master_service& m, std::string key, std::vector<std::string>& order) {
  auto r = co_await m.exist(key);
  CHECK(r);
  order.push_back(std::move(key));
}
task<void> out_of_order(master_service& m, std::vector<std::string>& order) {
  co_await when_all(record(m, "slow:a", order), record(m, "fast", order));
}
}  // namespace

TEST_CASE("responses come back as requests finish, not in request order") {
  server_fixture s;
  rpc_client_options o;
  o.connections = 1;
  auto c = make_client(s.where(), o);
  std::vector<std::string> order;
  c->pool().block_on(0, out_of_order(*c, order));
  CHECK(order == std::vector<std::string>{"fast", "slow:a"});
}

namespace {
template <class T>
task<T> timed(task<T> t, std::chrono::milliseconds& took) {
  auto t0 = std::chrono::steady_clock::now();
  auto r = co_await std::move(t);
  took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  co_return r;
}
}  // namespace

TEST_CASE("a master that is not there: rpc_fail at once; one that does not answer: rpc_timeout at the deadline") {
  io::reactor r;
  std::chrono::milliseconds took{};
  rpc_client_options o;
  o.call_timeout = 300ms;
  o.connect_timeout = 300ms;
  {
    // Nothing listens on a port we just released.
    auto l = io::tcp_listener::bind(address::ipv4_loopback(0)).value();
    std::string where = l.local_address().to_string();
    l.close();
    auto c = make_client(where, o);
    auto res = r.block_on(timed(c->exist("k"), took));
    REQUIRE_FALSE(res);
    CHECK(res.error() == errc::rpc_fail);
    CHECK(took < 300ms);
    auto conn = r.block_on(c->connect());
    CHECK(conn.error() == errc::rpc_fail);
  }
  {
    // A listener that never accepts: the kernel completes the handshake, nobody answers.
    auto l = io::tcp_listener::bind(address::ipv4_loopback(0)).value();
    auto c = make_client(l.local_address().to_string(), o);
    auto res = r.block_on(timed(c->get_replica_list("k"), took));
    REQUIRE_FALSE(res);
    CHECK(res.error() == errc::rpc_timeout);
    CHECK(took >= 300ms);
    CHECK(took < 300ms + 250ms);
    // The silent connection was dropped; the next call tries a new one and times out the same way.
    CHECK(c->open_connections() == 0);
    auto batch = r.block_on(timed(c->batch_exist({"a", "b"}), took));
    REQUIRE(batch.size() == 2);
    CHECK(batch[0].error() == errc::rpc_timeout);
    CHECK(batch[1].error() == errc::rpc_timeout);
  }
}

TEST_CASE("a master that stops: calls fail with rpc_fail, and the client reconnects when it is back") {
  auto l = io::tcp_listener::bind(address::ipv4_loopback(0)).value();
  address at = l.local_address();
  l.close();
  rpc_client_options o;
  o.call_timeout = 2000ms;
  o.connections = 1;
  auto c = make_client(at.to_string(), o);
  io::reactor r;
  {
    test::fake_master master;
    io::reactor_pool pool(1);
    auto srv = rpc_server::bind(at).value();
    pool.spawn(0, srv.serve(master, pool));
    CHECK(r.block_on(c->connect()));
    CHECK(c->open_connections() == 1);
    CHECK_FALSE(*r.block_on(c->exist("k")));
    CHECK(c->link_epoch() == 0);
    srv.stop();
    pool.stop_and_join();
  }
  std::chrono::milliseconds took{};
  auto res = r.block_on(timed(c->exist("k"), took));
  REQUIRE_FALSE(res);
  CHECK(res.error() == errc::rpc_fail);
  CHECK(took < 1000ms);
  // The broken connection moved the link epoch (what a client's replica cache watches).
  CHECK(c->link_epoch() >= 1);
  {
    test::fake_master master;
    io::reactor_pool pool(1);
    auto srv = rpc_server::bind(at).value();
    pool.spawn(0, srv.serve(master, pool));
    CHECK_FALSE(*r.block_on(c->exist("k")));  // a new connection, without being asked
    srv.stop();
    pool.stop_and_join();
  }
}

namespace {
task<result<bool>> cancel_after(master_service& m, std::stop_source& src, std::chrono::milliseconds& took) {
  auto t0 = std::chrono::steady_clock::now();
  auto call = m.exist("slow:c");
  auto stopper = [](std::stop_source* s) -> task<void> {
    co_await io::sleep_for(10ms);
    s->request_stop();
  };
  auto [r, _] = co_await when_all(std::move(call).with_stop_token(src.get_token()), stopper(&src));
  took = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0);
  co_return r;
}
}  // namespace

TEST_CASE("a stop request cancels a waiting call; the connection stays usable") {
  server_fixture s;
  rpc_client_options o;
  o.connections = 1;
  auto c = make_client(s.where(), o);
  std::stop_source src;
  std::chrono::milliseconds took{};
  auto r = c->pool().block_on(0, cancel_after(*c, src, took));
  REQUIRE_FALSE(r);
  CHECK(r.error() == std::errc::operation_canceled);
  CHECK(took < 45ms);  // the server answers after 50 ms
  CHECK(c->pool().block_on(0, c->exist("k")));
  CHECK(c->open_connections() == 1);
}

namespace {
task<void> on_the_callers_reactor(master_service& m, io::reactor* expect, bool& same) {
  auto r = co_await m.exist("k");
  CHECK(r);
  same = io::reactor::current() == expect;
}
}  // namespace

TEST_CASE("a call from another reactor resumes there; from a plain thread it works through sync_wait") {
  server_fixture s;
  auto c = make_client(s.where());
  io::reactor r;
  bool same = false;
  r.block_on(on_the_callers_reactor(*c, &r, same));
  CHECK(same);
  auto v = sync_wait(c->exist("k"));
  CHECK(v);
}

// --- hostile and broken peers ---

namespace {

std::string frame_bytes(std::uint16_t version, std::uint16_t type, std::uint64_t id, std::string payload,
                        std::uint32_t flags = 0) {
  rpc::header h;
  h.version = version;
  h.type = type;
  h.id = id;
  h.flags = flags;
  h.length = static_cast<std::uint32_t>(payload.size());
  auto b = rpc::encode_header(h);
  std::string out(reinterpret_cast<const char*>(b.data()), b.size());
  return out + payload;
}

struct response {
  rpc::header h;
  std::string payload;
};

// Reads one frame; nullopt on EOF or when nothing came within `wait`.
task<std::optional<response>> read_frame(tcp_stream& s, rpc::frame_buffer& in, std::chrono::milliseconds wait) {
  for (;;) {
    auto f = in.next({});
    REQUIRE(f);
    if (*f) co_return response{(*f)->h, std::string(reinterpret_cast<const char*>((*f)->payload.data()), (*f)->payload.size())};
    auto n = co_await s.recv(in.prepare(4096)).with_timeout(wait);
    if (!n || *n == 0) co_return std::nullopt;
    in.commit(*n);
  }
}

// Whether the server closed `s` (EOF or reset) within `wait`.
task<bool> closed_by_peer(tcp_stream& s, std::chrono::milliseconds wait) {
  std::byte b[256];
  for (;;) {
    auto n = co_await s.recv(b).with_timeout(wait);
    if (!n) co_return n.error() == std::errc::connection_reset;
    if (*n == 0) co_return true;
  }
}

std::error_code status_of(const response& r) {
  rpc::reader rd(std::as_bytes(std::span(r.payload)), {});
  return rpc::get_status(rd);
}

std::string encode_payload(const auto& req) {
  std::string p;
  rpc::writer w(p);
  put(w, req);
  return p;
}

task<void> hostile(address at, master_service& good) {
  // Garbage: the server closes the connection; the good client is served meanwhile.
  auto bad = (co_await tcp_stream::connect(at)).value();
  CHECK(co_await bad.send_all(std::as_bytes(std::span(std::string_view("GET / HTTP/1.1\r\nHost: x\r\n\r\n")))));
  CHECK(co_await good.exist("k"));
  CHECK(co_await closed_by_peer(bad, 2000ms));
  CHECK(co_await good.exist("k"));

  // On one connection: a foreign version, an unknown type, a response sent as a request, nonzero
  // flags, an oversized key, a malformed payload: each gets its error, and the stream stays in sync,
  // so the valid request after them is answered.
  auto s = (co_await tcp_stream::connect(at)).value();
  std::string wire;
  wire += frame_bytes(2, rpc::request_type(op::ping), 1, "xyz");
  wire += frame_bytes(rpc::version, 0x50, 2, "");
  wire += frame_bytes(rpc::version, rpc::response_type(op::ping), 3, "");
  wire += frame_bytes(rpc::version, rpc::request_type(op::ping), 4, encode_payload(rpc::ping_request{"c"}), 1);
  wire += frame_bytes(rpc::version, rpc::request_type(op::exist), 5,
                      encode_payload(rpc::key_request{std::string(5000, 'k')}));
  wire += frame_bytes(rpc::version, rpc::request_type(op::get_size), 6, "\x01");
  wire += frame_bytes(rpc::version, rpc::request_type(op::ping), 7, encode_payload(rpc::ping_request{"c"}));
  CHECK(co_await s.send_all(std::as_bytes(std::span(wire))));
  rpc::frame_buffer in;
  std::vector<response> got;
  for (int i = 0; i < 7; ++i) {
    auto r = co_await read_frame(s, in, 2000ms);
    REQUIRE(r);
    got.push_back(std::move(*r));
  }
  for (int i = 0; i < 7; ++i) CHECK(got[i].h.id == static_cast<std::uint64_t>(i + 1));
  CHECK(got[0].h.type == rpc::error_type);
  CHECK(status_of(got[0]) == errc::invalid_version);
  CHECK(got[1].h.type == rpc::error_type);
  CHECK(status_of(got[1]) == errc::protocol_error);
  CHECK(got[2].h.type == rpc::error_type);
  CHECK(got[3].h.type == rpc::response_type(op::ping));
  CHECK(status_of(got[3]) == errc::protocol_error);
  CHECK(got[4].h.type == rpc::response_type(op::exist));
  CHECK(status_of(got[4]) == errc::invalid_key);
  CHECK(got[5].h.type == rpc::response_type(op::get_size));
  CHECK(status_of(got[5]) == errc::protocol_error);
  CHECK(got[6].h.type == rpc::response_type(op::ping));
  auto ping = rpc::decode_response<op::ping>(std::as_bytes(std::span(got[6].payload)), {});
  REQUIRE(ping);
  CHECK(ping->need_remount);

  // A frame larger than max_frame cannot be skipped safely: closed.
  auto big = (co_await tcp_stream::connect(at)).value();
  rpc::header h;
  h.type = rpc::request_type(op::exist);
  h.length = (64u << 20) + 1;
  auto hb = rpc::encode_header(h);
  CHECK(co_await big.send_all(hb));
  CHECK(co_await closed_by_peer(big, 2000ms));

  // Half a frame, then silence: closed after frame_timeout (100 ms in this fixture).
  auto stall = (co_await tcp_stream::connect(at)).value();
  std::string half = frame_bytes(rpc::version, rpc::request_type(op::ping), 9, encode_payload(rpc::ping_request{"c"}));
  half.resize(half.size() - 1);
  CHECK(co_await stall.send_all(std::as_bytes(std::span(half))));
  auto t0 = std::chrono::steady_clock::now();
  CHECK(co_await closed_by_peer(stall, 2000ms));
  auto waited = std::chrono::steady_clock::now() - t0;
  CHECK(waited >= 80ms);
  CHECK(waited < 1000ms);
  CHECK(co_await good.exist("k"));
}

}  // namespace

TEST_CASE("hostile connections cost themselves only") {
  rpc_server_options o;
  o.frame_timeout = 100ms;
  server_fixture s(o);
  auto c = make_client(s.where());
  io::reactor r;
  r.block_on(hostile(s.srv.local_address(), *c));
  auto st = s.srv.stats();
  CHECK(st.protocol_closes == 3);
  CHECK(st.bad_requests == 6);
  CHECK(st.connections_accepted == 6);  // the good client's two, and four raw ones
}

namespace {
task<void> stop_mid_request(master_service& m, rpc_server& srv) {
  auto slow = [](master_service& mm) -> task<result<bool>> { co_return co_await mm.exist("slow:s"); };
  auto stopper = [](rpc_server& s) -> task<void> {
    co_await io::sleep_for(10ms);
    s.stop();
  };
  auto [r, _] = co_await when_all(slow(m), stopper(srv));
  CHECK(r);  // the request in progress was answered before the connection closed
  auto after = co_await m.exist("k");
  CHECK(after.error() == errc::rpc_fail);
}
}  // namespace

TEST_CASE("stop() lets requests in progress finish and answer, then closes every connection") {
  test::fake_master master;
  io::reactor_pool pool(2);
  auto srv = rpc_server::bind(address::ipv4_loopback(0)).value();
  pool.spawn(1, srv.serve(master, pool));
  rpc_client_options o;
  o.connections = 1;
  auto c = make_client(srv.local_address().to_string(), o);
  c->pool().block_on(0, stop_mid_request(*c, srv));
  pool.stop_and_join();  // returns: serve() ended
  CHECK(srv.stats().connections_open == 0);
}
