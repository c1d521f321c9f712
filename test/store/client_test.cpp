// The store client against an in-process master: put/get in every form, typed errors, prefixes,
// replica failover when a replica's node is gone, revoked puts, eviction under pressure, same-key puts
// racing, re-mount after expiry, close, and the embedded mode.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <memory>
#include <set>
#include <stop_token>
#include <string>
#include <thread>
#include <vector>

#include "client_util.hpp"
#include "transfer/peer_util.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/store/client.hpp"
#include "yutu/store/embedded.hpp"
#include "yutu/store/master_state.hpp"
#include "yutu/store/rpc_client.hpp"

using namespace std::chrono_literals;
using yutu::errc;
using yutu::result;
using yutu::task;
using yutu::te_errc;
using yutu::store::client;
using yutu::store::client_config;
using yutu::store::master_config;
using yutu::store::master_state;
using yutu::store::replicate_config;
using yutu::test::buffer;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;
using yutu::test::kib;
using yutu::test::mib;
using yutu::test::quiet_master;

namespace {

std::unique_ptr<client> make_client(master_state& m, std::uint64_t memory, std::vector<std::string> transports = {},
                                    std::size_t replicas = 1) {
  client_config c;
  c.global_segment_size = memory;
  c.transports = std::move(transports);
  c.replica_defaults.replica_num = replicas;
  c.transfer_deadline = 5s;
  c.engine_threads = 1;
  auto r = client::create(c, m);
  REQUIRE(r);
  return std::move(*r);
}

std::vector<std::byte> pattern(std::size_t n, unsigned seed) {
  std::vector<std::byte> v(n);
  fill_pattern(v.data(), n, seed);
  return v;
}

replicate_config replicas(std::size_t n) {
  replicate_config c;
  c.replica_num = n;
  return c;
}

// A storage node that can vanish without unmounting: a bare engine whose memory is mounted by hand
// as client "node-x". Destroying the engine kills the node; the master still lists its replicas.
std::pair<std::unique_ptr<yutu::transfer::engine>, yutu::store::segment_info> mount_bare_node(master_state& m,
                                                                                               std::uint64_t size) {
  yutu::transfer::engine_config xc;
  xc.threads = 1;
  auto x = yutu::transfer::engine::create(xc);
  REQUIRE(x);
  auto xmem = (*x)->allocate_shared(size);
  REQUIRE(xmem);
  yutu::store::segment_info xs;
  xs.engine_segment = (*x)->segment_name();
  xs.name = xs.engine_segment + "/x";
  xs.host = "127.0.0.1";
  xs.base = reinterpret_cast<std::uint64_t>(*xmem);
  xs.size = size;
  REQUIRE(yutu::sync_wait(m.mount_segment("node-x", xs)));
  return {std::move(*x), xs};
}

}  // namespace

TEST_CASE("put, get, exist, get_size and remove, with typed errors") {
  master_state m(quiet_master());
  auto a = make_client(m, 32 * mib);
  yutu::io::reactor r;
  auto v = pattern(100 * kib + 3, 1);
  REQUIRE(r.block_on(a->put("k1", v)));

  auto got = r.block_on(a->get("k1"));
  REQUIRE(got);
  CHECK(*got == v);
  CHECK(r.block_on(a->get_size("k1")).value() == v.size());
  CHECK(r.block_on(a->exist("k1")).value());
  CHECK_FALSE(r.block_on(a->exist("nope")).value());

  // A miss is an error, never an empty value.
  auto miss = r.block_on(a->get("nope"));
  REQUIRE_FALSE(miss);
  CHECK(miss.error() == errc::object_not_found);
  // A second put of a key is refused, and the first value stays.
  auto again = r.block_on(a->put("k1", pattern(10, 2)));
  REQUIRE_FALSE(again);
  CHECK(again.error() == errc::object_already_exists);
  CHECK(r.block_on(a->get("k1")).value() == v);
  // upsert replaces it.
  auto w = pattern(5000, 3);
  REQUIRE(r.block_on(a->upsert("k1", w)));
  CHECK(r.block_on(a->get("k1")).value() == w);

  // A lease taken by the get above protects the object from a plain remove; force removes it.
  auto rm = r.block_on(a->remove("k1"));
  if (!rm) {
    CHECK(rm.error() == errc::object_has_lease);
    REQUIRE(r.block_on(a->remove("k1", true)));
  }
  CHECK(r.block_on(a->get("k1")).error() == errc::object_not_found);
  CHECK(r.block_on(a->remove("k1", true)).error() == errc::object_not_found);

  // An empty value is not an object.
  CHECK(r.block_on(a->put("empty", std::span<const std::byte>())).error() == errc::invalid_params);
}

TEST_CASE("put_from and get_into: registered memory only, buffer_overflow leaves the destination alone") {
  master_state m(quiet_master());
  auto node = make_client(m, 32 * mib);
  auto c = make_client(m, 0);
  yutu::io::reactor r;
  buffer src(1 * mib), dst(1 * mib), stray(4096);
  fill_pattern(src.p, src.n, 5);

  auto unreg = r.block_on(c->put_from("x", src.p, src.n));
  REQUIRE_FALSE(unreg);
  CHECK(unreg.error() == errc::invalid_params);

  REQUIRE(c->register_buffer(src.p, src.n));
  REQUIRE(c->register_buffer(dst.p, dst.n));
  REQUIRE(r.block_on(c->put_from("x", src.p + 7, 300 * kib)));
  CHECK(r.block_on(c->get_into("x", stray.p, stray.n)).error() == errc::invalid_params);

  std::memset(dst.p, 0xAB, dst.n);
  auto small = r.block_on(c->get_into("x", dst.p, 300 * kib - 1));
  REQUIRE_FALSE(small);
  CHECK(small.error() == errc::buffer_overflow);
  CHECK(dst.p[0] == std::byte{0xAB});

  auto n = r.block_on(c->get_into("x", dst.p + 1, dst.n - 1));
  REQUIRE(n);
  CHECK(*n == 300 * kib);
  CHECK(std::memcmp(dst.p + 1, src.p + 7, 300 * kib) == 0);
  CHECK(r.block_on(c->get_into("missing", dst.p, dst.n)).error() == errc::object_not_found);

  // A range that runs past the registered buffer is not registered.
  CHECK(r.block_on(c->put_from("y", src.p + 1, src.n)).error() == errc::invalid_params);
  REQUIRE(c->unregister_buffer(src.p));
  CHECK(r.block_on(c->put_from("y", src.p, 10)).error() == errc::invalid_params);

  // The local buffer is registered memory too.
  client_config lc;
  lc.local_buffer_size = 64 * kib;
  auto l = client::create(lc, m);
  REQUIRE(l);
  auto lb = (*l)->local_buffer();
  REQUIRE(lb.size() == 64 * kib);
  fill_pattern(lb.data(), 1000, 9);
  REQUIRE(r.block_on((*l)->put_from("z", lb.data(), 1000)));
  std::memset(lb.data(), 0, 1000);
  CHECK(r.block_on((*l)->get_into("z", lb.data() + 4096, 60 * kib)).value() == 1000);
  CHECK(fnv1a(lb.data() + 4096, 1000) == [] {
    std::vector<std::byte> v(1000);
    fill_pattern(v.data(), 1000, 9);
    return fnv1a(v.data(), 1000);
  }());
}

TEST_CASE("batches over two nodes with two replicas; every key's result is its own") {
  master_state m(quiet_master());
  auto a = make_client(m, 16 * mib, {}, 2);
  auto b = make_client(m, 16 * mib, {}, 2);
  auto c = make_client(m, 0, {"tcp"}, 2);  // reads and writes both nodes over tcp
  yutu::io::reactor r;
  const std::size_t n = 32, each = 64 * kib + 1;
  buffer src(n * each), dst(n * each);
  REQUIRE(c->register_buffer(src.p, src.n));
  REQUIRE(c->register_buffer(dst.p, dst.n));
  fill_pattern(src.p, src.n, 11);
  std::vector<std::string> keys;
  std::vector<const void*> srcs;
  std::vector<void*> dsts;
  std::vector<std::uint64_t> sizes;
  for (std::size_t i = 0; i < n; ++i) {
    keys.push_back("blk-" + std::to_string(i));
    srcs.push_back(src.p + i * each);
    dsts.push_back(dst.p + i * each);
    sizes.push_back(each);
  }
  auto put = r.block_on(c->batch_put_from(keys, srcs, sizes));
  REQUIRE(put.size() == n);
  for (auto& p : put) CHECK(p);
  // A batch where some keys exist already and one source is not registered.
  std::vector<std::string> mixed{"blk-0", "fresh", "bad"};
  buffer stray(64);
  std::vector<const void*> msrc{src.p, src.p, stray.p};
  std::vector<std::uint64_t> msz{10, 10, 10};
  auto mres = r.block_on(c->batch_put_from(mixed, msrc, msz));
  CHECK(mres[0].error() == errc::object_already_exists);
  CHECK(mres[1]);
  CHECK(mres[2].error() == errc::invalid_params);

  auto got = r.block_on(c->batch_get_into(keys, dsts, sizes));
  for (std::size_t i = 0; i < n; ++i) {
    REQUIRE(got[i]);
    CHECK(*got[i] == each);
  }
  CHECK(std::memcmp(src.p, dst.p, n * each) == 0);

  // Both nodes hold a replica of every object: each contributed about half the bytes... at least some.
  auto info = m.metrics();
  CHECK(info.key_count == n + 1);
  CHECK(info.allocated >= 2 * n * each);

  auto ex = r.block_on(c->batch_exist(std::vector<std::string>{"blk-3", "nope", "fresh"}));
  CHECK(ex[0].value());
  CHECK_FALSE(ex[1].value());
  CHECK(ex[2].value());

  std::vector<std::string> mk{"blk-0", "nope", "blk-2"};
  std::vector<void*> md{dst.p, dst.p + each, dst.p + 2 * each};
  std::vector<std::uint64_t> ms{each, each, 10};
  auto mget = r.block_on(c->batch_get_into(mk, md, ms));
  CHECK(mget[0].value() == each);
  CHECK(mget[1].error() == errc::object_not_found);
  CHECK(mget[2].error() == errc::buffer_overflow);

  // Copying forms.
  std::vector<std::vector<std::byte>> vals{pattern(10, 1), pattern(70000, 2), {}};
  std::vector<std::span<const std::byte>> spans(vals.begin(), vals.end());
  std::vector<std::string> vk{"v0", "v1", "v2"};
  auto vp = r.block_on(c->batch_put(vk, spans));
  CHECK(vp[0]);
  CHECK(vp[1]);
  CHECK(vp[2].error() == errc::invalid_params);
  auto vg = r.block_on(a->batch_get(std::vector<std::string>{"v0", "v1", "v2"}));
  CHECK(vg[0].value() == vals[0]);
  CHECK(vg[1].value() == vals[1]);
  CHECK(vg[2].error() == errc::object_not_found);

  auto rm = r.block_on(c->batch_remove(std::vector<std::string>{"v0", "nope"}, true));
  CHECK(rm[0]);
  CHECK(rm[1].error() == errc::object_not_found);
  auto all = r.block_on(c->remove_all(true));
  REQUIRE(all);
  CHECK(*all == n + 1 + 1);
  CHECK(m.metrics().key_count == 0);
}

TEST_CASE("multi-buffer objects gather on put and scatter on get") {
  master_state m(quiet_master());
  auto a = make_client(m, 16 * mib);
  yutu::io::reactor r;
  buffer src(256 * kib), dst(256 * kib);
  REQUIRE(a->register_buffer(src.p, src.n));
  REQUIRE(a->register_buffer(dst.p, dst.n));
  fill_pattern(src.p, src.n, 21);
  // Object k0 = src[0, 1000) + src[5000, 5000+3000); k1 = src[10000, 10000+70000)
  std::vector<std::string> keys{"k0", "k1"};
  std::vector<std::vector<const void*>> srcs{{src.p, src.p + 5000}, {src.p + 10000}};
  std::vector<std::vector<std::uint64_t>> sizes{{1000, 3000}, {70000}};
  for (auto& p : r.block_on(a->batch_put_from_multi_buffers(keys, srcs, sizes, replicas(1)))) CHECK(p);
  CHECK(r.block_on(a->get_size("k0")).value() == 4000);
  // Scatter k0 into 3 pieces, k1 into 2.
  std::vector<std::vector<void*>> dsts{{dst.p, dst.p + 2000, dst.p + 9000}, {dst.p + 20000, dst.p + 100000}};
  std::vector<std::vector<std::uint64_t>> dsz{{500, 3000, 1000}, {35000, 40000}};
  auto got = r.block_on(a->batch_get_into_multi_buffers(keys, dsts, dsz));
  CHECK(got[0].value() == 4000);
  CHECK(got[1].value() == 70000);
  CHECK(std::memcmp(dst.p, src.p, 500) == 0);
  CHECK(std::memcmp(dst.p + 2000, src.p + 500, 500) == 0);
  CHECK(std::memcmp(dst.p + 2500, src.p + 5000, 2500) == 0);
  CHECK(std::memcmp(dst.p + 9000, src.p + 7500, 500) == 0);
  CHECK(std::memcmp(dst.p + 20000, src.p + 10000, 35000) == 0);
  CHECK(std::memcmp(dst.p + 100000, src.p + 45000, 35000) == 0);
  std::vector<std::vector<std::uint64_t>> tiny{{500, 3000, 499}, {35000, 40000}};
  CHECK(r.block_on(a->batch_get_into_multi_buffers(keys, dsts, tiny))[0].error() == errc::buffer_overflow);
}

TEST_CASE("match_prefix counts leading hits; load_prefix reads them in the same round trip") {
  master_state m(quiet_master());
  auto a = make_client(m, 16 * mib);
  yutu::io::reactor r;
  const std::size_t block = 32 * kib;
  buffer src(8 * block), dst(8 * block);
  REQUIRE(a->register_buffer(src.p, src.n));
  REQUIRE(a->register_buffer(dst.p, dst.n));
  fill_pattern(src.p, src.n, 31);
  std::vector<std::string> keys;
  for (int i = 0; i < 8; ++i) keys.push_back("model@tp0@" + std::to_string(1000 + i));
  // Blocks 0..4 and 6 exist: the prefix is 5 long.
  for (int i : {0, 1, 2, 3, 4, 6}) REQUIRE(r.block_on(a->put_from(keys[i], src.p + i * block, block)));
  CHECK(r.block_on(a->match_prefix(keys)).value() == 5);
  CHECK(r.block_on(a->match_prefix(std::span(keys).subspan(5))).value() == 0);
  CHECK(r.block_on(a->match_prefix(std::span<const std::string>())).value() == 0);

  std::vector<void*> dsts;
  std::vector<std::uint64_t> sizes(8, block);
  for (int i = 0; i < 8; ++i) dsts.push_back(dst.p + i * block);
  auto loaded = r.block_on(a->load_prefix(keys, dsts, sizes));
  REQUIRE(loaded);
  CHECK(*loaded == 5);
  CHECK(std::memcmp(dst.p, src.p, 5 * block) == 0);
  // The leases taken by the match protect the prefix from a plain remove.
  CHECK(r.block_on(a->remove(keys[0])).error() == errc::object_has_lease);
}

TEST_CASE("a replica whose node is gone: reads fail over to the other one; puts there are revoked") {
  master_state m(quiet_master());
  auto a = make_client(m, 16 * mib);
  // A node that will vanish without unmounting: a bare engine whose memory is mounted by hand.
  auto [x, xs] = mount_bare_node(m, 16 * mib);
  // The reader speaks tcp only: a dead process is then a refused connection, as from another host.
  auto c = make_client(m, 0, {"tcp"}, 2);
  yutu::io::reactor r;

  const int n = 20;
  std::vector<std::vector<std::byte>> vals;
  for (int i = 0; i < n; ++i) {
    vals.push_back(pattern(8 * kib + i, 40 + i));
    REQUIRE(r.block_on(c->put("f" + std::to_string(i), vals.back())));
  }
  for (int i = 0; i < n; ++i) CHECK(r.block_on(c->get("f" + std::to_string(i))).value() == vals[i]);
  CHECK(c->stats().failovers == 0);

  x.reset();  // the node dies; the master still lists its replicas
  for (int round = 0; round < 2; ++round)
    for (int i = 0; i < n; ++i) {
      auto g = r.block_on(c->get("f" + std::to_string(i)));
      REQUIRE(g);
      CHECK(*g == vals[i]);
    }
  CHECK(c->stats().failovers >= 1);

  // Puts that place a replica on the dead node fail typed and leave nothing behind.
  int failed = 0;
  for (int i = 0; i < 10; ++i) {
    std::string k = "p" + std::to_string(i);
    auto p = r.block_on(c->put(k, pattern(1000, 7)));
    if (!p) {
      ++failed;
      CHECK((p.error() == te_errc::peer_unreachable || p.error() == te_errc::stale_segment ||
             p.error() == te_errc::no_transport));
      CHECK_FALSE(r.block_on(c->exist(k)).value());
    }
  }
  CHECK(failed == 10);  // two replicas over two segments: the dead one is always chosen
  CHECK(c->stats().revokes == 10);
  // Once the node is unmounted, puts succeed again with the replicas there are.
  REQUIRE(yutu::sync_wait(m.unmount_segment("node-x", xs.name)));
  CHECK(r.block_on(c->put("after", pattern(1000, 8))));
  CHECK(r.block_on(c->get("f0")).value() == vals[0]);
}

TEST_CASE("a node's memory freed while the master still lists it: puts there fail typed and are revoked") {
  master_state m(quiet_master());
  auto [x, xs] = mount_bare_node(m, 16 * mib);
  // Same host: the writer maps the node's memory and copies into it (shm), through the descriptor it
  // fetched with its first put.
  auto c = make_client(m, 0, {"shm"}, 1);
  yutu::io::reactor r;
  const auto v = pattern(64 * kib, 3);
  REQUIRE(r.block_on(c->put("before", v)));
  CHECK(r.block_on(c->get("before")).value() == v);

  // The node frees the memory without unmounting it (a bug, or an unmount the master has not seen
  // yet): the writer's mapping would still take the bytes, and nobody would ever read them.
  REQUIRE(x->free_shared(reinterpret_cast<void*>(xs.base)));
  for (int i = 0; i < 5; ++i) {
    const std::string k = "after" + std::to_string(i);
    auto p = r.block_on(c->put(k, v));
    REQUIRE_FALSE(p);
    CHECK((p.error() == te_errc::address_not_registered || p.error() == te_errc::no_transport));
    CHECK_FALSE(r.block_on(c->exist(k)).value());
  }
  CHECK(c->stats().revokes == 5);
  auto g = r.block_on(c->get("before"));
  REQUIRE_FALSE(g);  // its only replica is gone: an error, never the freed memory's bytes
}

TEST_CASE("eviction under pressure: puts keep succeeding, the oldest objects go") {
  master_config mc = quiet_master();
  auto m = std::make_unique<master_state>(mc);
  auto a = make_client(*m, 4 * mib);
  yutu::io::reactor r;
  const std::size_t each = 256 * kib, count = 64;  // 16 MiB into 4 MiB
  auto v = pattern(each, 3);
  for (std::size_t i = 0; i < count; ++i) {
    auto p = r.block_on(a->put("e" + std::to_string(i), v));
    REQUIRE_MESSAGE(p, "put " << i << ": " << p.error().message());
  }
  CHECK_FALSE(r.block_on(a->exist("e0")).value());
  CHECK(r.block_on(a->get("e" + std::to_string(count - 1))).value() == v);
  CHECK(m->metrics().evicted_keys >= count - 16);
}

TEST_CASE("concurrent puts of one key: exactly one wins, the others are told it exists") {
  master_state m(quiet_master());
  auto a = make_client(m, 16 * mib);
  auto b = make_client(m, 0, {"tcp"});
  yutu::io::reactor r;
  std::vector<std::vector<std::byte>> vals;
  for (int i = 0; i < 8; ++i) vals.push_back(pattern(200 * kib, 60 + i));
  std::vector<task<result<void>>> puts;
  for (int i = 0; i < 8; ++i) puts.push_back((i % 2 ? a : b)->put("same", vals[i]));
  auto res = r.block_on(yutu::when_all(std::move(puts)));
  int won = -1, lost = 0;
  for (int i = 0; i < 8; ++i) {
    if (res[i]) {
      CHECK(won == -1);
      won = i;
    } else {
      CHECK(res[i].error() == errc::object_already_exists);
      ++lost;
    }
  }
  REQUIRE(won >= 0);
  CHECK(lost == 7);
  CHECK(r.block_on(b->get("same")).value() == vals[won]);
}

TEST_CASE("an expired client re-mounts its segments on its next heartbeat; close unmounts them") {
  master_config mc = quiet_master();
  mc.client_ttl = 200ms;
  mc.stall_threshold = std::chrono::milliseconds(0);
  yutu::store::manual_clock clock;
  master_state m(mc, clock.fn());
  client_config cc;
  cc.global_segment_size = 8 * mib;
  cc.max_segment_size = 4 * mib;  // two segments
  cc.heartbeat_interval = 10ms;
  auto a = client::create(cc, m);
  REQUIRE(a);
  CHECK((*a)->segments().size() == 2);
  CHECK(m.metrics().segment_count == 2);
  yutu::io::reactor r;
  REQUIRE(r.block_on((*a)->put("before", pattern(1000, 1))));

  clock.advance(1s);  // silent past its TTL: the master forgets it and its objects
  m.tick();
  CHECK(m.metrics().expired_clients == 1);
  CHECK_FALSE(r.block_on((*a)->exist("before")).value());
  // Heartbeats run every 10 ms on the client's own thread; wait for the re-mount (bounded).
  for (int i = 0; i < 500 && (*a)->stats().remounts < 2; ++i) std::this_thread::sleep_for(5ms);
  CHECK((*a)->stats().remounts >= 2);
  CHECK(m.metrics().segment_count == 2);
  REQUIRE(r.block_on((*a)->put("after", pattern(1000, 2))));

  REQUIRE(r.block_on((*a)->close()));
  CHECK(m.metrics().segment_count == 0);
  CHECK(r.block_on((*a)->get("after")).error() == errc::closed);
  CHECK(r.block_on((*a)->close()));  // idempotent
}

TEST_CASE("from a plain thread through sync_wait, and an object larger than any staging buffer") {
  master_state m(quiet_master());
  auto a = make_client(m, 80 * mib);
  auto b = make_client(m, 0);
  const std::size_t big = 64 * mib + 5;
  buffer src(big), dst(big);
  REQUIRE(b->register_buffer(src.p, src.n));
  REQUIRE(b->register_buffer(dst.p, dst.n));
  fill_pattern(src.p, 1 * mib, 77);
  std::memcpy(src.p + big - 1 * mib, src.p, 1 * mib);
  REQUIRE(yutu::sync_wait(b->put_from("big", src.p, big)));
  CHECK(yutu::sync_wait(b->get_into("big", dst.p, big)).value() == big);
  CHECK(std::memcmp(dst.p, src.p, 1 * mib) == 0);
  CHECK(std::memcmp(dst.p + big - 1 * mib, src.p + big - 1 * mib, 1 * mib) == 0);
}

namespace {

// The master, with every lookup answered 50 ms late: the reads that follow it start after their lease
// (10 ms here) has ended. commit_delay holds each batch_put_commit back before it reaches the master,
// so that deferred commits are in flight for a known time even with the master in this process.
class late_master final : public yutu::store::master_service {
 public:
  explicit late_master(master_state& m) : m_(m) {}
  using replica_list = yutu::store::replica_list;
  using replica_desc = yutu::store::replica_desc;
  using client_id = yutu::store::client_id;

  // How long each lookup waits after the master answered; lookups counts the keys looked up.
  std::chrono::milliseconds delay = 50ms;
  std::atomic<int> lookups{0};
  std::atomic<std::uint64_t> link{0};
  std::uint64_t link_epoch() const noexcept override { return link.load(); }
  std::chrono::milliseconds commit_delay{0};
  std::atomic<int> commit_calls{0};

  task<result<replica_list>> get_replica_list(std::string key) override {
    ++lookups;
    auto r = co_await m_.get_replica_list(std::move(key));
    if (delay.count()) (void)co_await yutu::io::sleep_for(delay);
    co_return r;
  }
  task<std::vector<result<replica_list>>> batch_get_replica_list(std::vector<std::string> keys) override {
    lookups += static_cast<int>(keys.size());
    auto r = co_await m_.batch_get_replica_list(std::move(keys));
    if (delay.count()) (void)co_await yutu::io::sleep_for(delay);
    co_return r;
  }
  task<result<yutu::store::match_result>> match_prefix(std::vector<std::string> keys) override {
    lookups += static_cast<int>(keys.size());
    auto r = co_await m_.match_prefix(std::move(keys));
    if (delay.count()) (void)co_await yutu::io::sleep_for(delay);
    co_return r;
  }

  task<result<void>> mount_segment(client_id c, yutu::store::segment_info s) override {
    return m_.mount_segment(std::move(c), std::move(s));
  }
  task<result<void>> unmount_segment(client_id c, std::string s) override {
    return m_.unmount_segment(std::move(c), std::move(s));
  }
  task<result<yutu::store::ping_result>> ping(client_id c) override { return m_.ping(std::move(c)); }
  task<result<std::vector<replica_desc>>> put_start(client_id c, std::string k, std::uint64_t n,
                                                  replicate_config cfg) override {
    return m_.put_start(std::move(c), std::move(k), n, std::move(cfg));
  }
  task<result<void>> put_end(client_id c, std::string k) override { return m_.put_end(std::move(c), std::move(k)); }
  task<result<void>> put_revoke(client_id c, std::string k) override {
    return m_.put_revoke(std::move(c), std::move(k));
  }
  task<result<std::vector<replica_desc>>> upsert_start(client_id c, std::string k, std::uint64_t n,
                                                     replicate_config cfg) override {
    return m_.upsert_start(std::move(c), std::move(k), n, std::move(cfg));
  }
  task<std::vector<result<std::vector<replica_desc>>>> batch_put_start(client_id c, std::vector<std::string> k,
                                                                     std::vector<std::uint64_t> n,
                                                                     replicate_config cfg) override {
    return m_.batch_put_start(std::move(c), std::move(k), std::move(n), std::move(cfg));
  }
  task<std::vector<result<void>>> batch_put_end(client_id c, std::vector<std::string> k) override {
    return m_.batch_put_end(std::move(c), std::move(k));
  }
  task<std::vector<result<void>>> batch_put_revoke(client_id c, std::vector<std::string> k) override {
    return m_.batch_put_revoke(std::move(c), std::move(k));
  }
  task<std::vector<result<void>>> batch_put_commit(client_id c, std::vector<std::string> p,
                                                   std::vector<std::string> k) override {
    ++commit_calls;
    if (commit_delay.count()) (void)co_await yutu::io::sleep_for(commit_delay);
    co_return co_await m_.batch_put_commit(std::move(c), std::move(p), std::move(k));
  }
  task<result<bool>> exist(std::string k) override { return m_.exist(std::move(k)); }
  task<std::vector<result<bool>>> batch_exist(std::vector<std::string> k) override {
    return m_.batch_exist(std::move(k));
  }
  task<result<std::uint64_t>> get_size(std::string k) override { return m_.get_size(std::move(k)); }
  task<result<void>> remove(std::string k, bool force) override { return m_.remove(std::move(k), force); }
  task<std::vector<result<void>>> batch_remove(std::vector<std::string> k, bool force) override {
    return m_.batch_remove(std::move(k), force);
  }
  task<result<std::uint64_t>> remove_all(bool force) override { return m_.remove_all(force); }

 private:
  master_state& m_;
};

}  // namespace

TEST_CASE("a read that ends after its lease fails with lease_expired in every get form, never with bytes") {
  master_config cfg = quiet_master();
  cfg.default_kv_lease_ttl = 10ms;
  master_state m(cfg);
  late_master late(m);
  auto node = make_client(m, 8 * mib);
  client_config cc;
  cc.engine_threads = 1;
  auto cr = client::create(cc, late);
  REQUIRE(cr);
  auto& c = **cr;
  yutu::io::reactor r;
  auto v = pattern(100 * kib, 3);
  REQUIRE(r.block_on(c.put("k", v)));
  REQUIRE(r.block_on(c.put("k2", v)));

  auto g = r.block_on(c.get("k"));
  REQUIRE_FALSE(g);
  CHECK(g.error() == errc::lease_expired);

  buffer dst(200 * kib), dst2(200 * kib);
  REQUIRE(c.register_buffer(dst.p, dst.n));
  REQUIRE(c.register_buffer(dst2.p, dst2.n));
  auto gi = r.block_on(c.get_into("k", dst.p, dst.n));
  REQUIRE_FALSE(gi);
  CHECK(gi.error() == errc::lease_expired);

  std::vector<std::string> keys{"k", "k2"};
  std::vector<void*> dsts{dst.p, dst2.p};
  std::vector<std::uint64_t> sizes{dst.n, dst2.n};
  auto bg = r.block_on(c.batch_get_into(keys, dsts, sizes));
  REQUIRE(bg.size() == 2);
  for (auto& x : bg) {
    REQUIRE_FALSE(x);
    CHECK(x.error() == errc::lease_expired);
  }
  auto vals = r.block_on(c.batch_get(keys));
  REQUIRE(vals.size() == 2);
  for (auto& x : vals) {
    REQUIRE_FALSE(x);
    CHECK(x.error() == errc::lease_expired);
  }
  // load_prefix reports no block loaded: the hits it read are not trusted.
  auto lp = r.block_on(c.load_prefix(keys, dsts, sizes));
  REQUIRE(lp);
  CHECK(*lp == 0);
  CHECK(c.stats().get_failures >= 6);
}

// A get_into from one of the client's engine threads, where its replica cache lives.
task<result<std::uint64_t>> get_on_engine(client& c, std::string key, void* dst, std::uint64_t size) {
  co_await c.engine().schedule();
  co_return co_await c.get_into(std::move(key), dst, size);
}

task<result<std::size_t>> load_on_engine(client& c, std::span<const std::string> keys, std::span<void* const> dsts,
                                         std::span<const std::uint64_t> sizes) {
  co_await c.engine().schedule();
  co_return co_await c.load_prefix(keys, dsts, sizes);
}

task<result<void>> put_from_on_engine(client& c, std::string key, const void* src, std::uint64_t size) {
  co_await c.engine().schedule();
  co_return co_await c.put_from(std::move(key), src, size);
}

TEST_CASE("on an engine thread, put_from and get_into see register_buffer and unregister_buffer at once") {
  // Engine threads check ranges against their own copy of the registered buffers: a copy left stale
  // would accept an unregistered buffer or refuse a newly registered one.
  master_state m(quiet_master());
  auto node = make_client(m, 16 * mib);
  auto c = make_client(m, 0);
  buffer a(256 * kib), b(256 * kib);
  fill_pattern(a.p, a.n, 11);
  CHECK(yutu::sync_wait(put_from_on_engine(*c, "a0", a.p, a.n)).error() == errc::invalid_params);
  REQUIRE(c->register_buffer(a.p, a.n));
  for (int i = 0; i < 4; ++i) REQUIRE(yutu::sync_wait(put_from_on_engine(*c, "a" + std::to_string(i + 1), a.p, a.n)));
  CHECK(yutu::sync_wait(get_on_engine(*c, "a1", b.p, b.n)).error() == errc::invalid_params);
  REQUIRE(c->register_buffer(b.p, b.n));
  for (int i = 0; i < 4; ++i) {
    std::memset(b.p, 0, b.n);
    REQUIRE(yutu::sync_wait(get_on_engine(*c, "a" + std::to_string(i + 1), b.p, b.n)).value() == a.n);
    CHECK(std::memcmp(a.p, b.p, a.n) == 0);
  }
  REQUIRE(c->unregister_buffer(a.p));
  for (int i = 0; i < 4; ++i)
    CHECK(yutu::sync_wait(put_from_on_engine(*c, "late" + std::to_string(i), a.p, a.n)).error() == errc::invalid_params);
  // Still registered: b, up to its end and not a byte past it.
  REQUIRE(yutu::sync_wait(put_from_on_engine(*c, "b0", b.p, b.n)));
  CHECK(yutu::sync_wait(put_from_on_engine(*c, "b1", b.p + 1, b.n)).error() == errc::invalid_params);
}

TEST_CASE("replica cache: hot keys are read without the master; removes, upserts, link breaks and age drop entries") {
  master_state m(quiet_master());  // leases of 10 s
  late_master look(m);
  look.delay = 0ms;
  auto node = make_client(m, 8 * mib);
  client_config cc;
  cc.engine_threads = 1;
  cc.replica_cache_max_age = 300ms;
  auto cr = client::create(cc, look);
  REQUIRE(cr);
  auto& c = **cr;
  buffer dst(64 * kib);
  REQUIRE(c.register_buffer(dst.p, dst.n));
  auto v1 = pattern(50 * kib, 11), v2 = pattern(40 * kib, 12), v3 = pattern(30 * kib, 13);
  auto get = [&](const std::string& k) { return yutu::sync_wait(get_on_engine(c, k, dst.p, dst.n)); };
  auto holds = [&](const std::vector<std::byte>& v) { return std::memcmp(dst.p, v.data(), v.size()) == 0; };

  REQUIRE(yutu::sync_wait(c.put("a", v1)));
  REQUIRE(get("a").value() == v1.size());
  CHECK(look.lookups == 1);
  std::memset(dst.p, 0, dst.n);
  REQUIRE(get("a").value() == v1.size());  // from the cache
  CHECK(holds(v1));
  CHECK(look.lookups == 1);
  CHECK(c.stats().replica_cache_hits == 1);

  // Off an engine thread there is no cache: every get asks the master.
  REQUIRE(yutu::sync_wait(c.get_into("a", dst.p, dst.n)).value() == v1.size());
  CHECK(look.lookups == 2);

  // Another client replaces the object: the lease keeps the old bytes where they were, so the
  // cached read still gets the whole old object (never the new one's bytes), until the entry ages out.
  REQUIRE(yutu::sync_wait(node->remove("a", true)));
  REQUIRE(yutu::sync_wait(node->put("a", v2)));
  std::memset(dst.p, 0, dst.n);
  REQUIRE(get("a").value() == v1.size());
  CHECK(holds(v1));
  CHECK(look.lookups == 2);
  std::this_thread::sleep_for(350ms);
  REQUIRE(get("a").value() == v2.size());
  CHECK(holds(v2));
  CHECK(look.lookups == 3);

  // This client's own upsert and remove drop what it cached.
  REQUIRE(get("a").value() == v2.size());
  CHECK(look.lookups == 3);
  REQUIRE(yutu::sync_wait(c.upsert("a", v3)));
  REQUIRE(get("a").value() == v3.size());
  CHECK(holds(v3));
  CHECK(look.lookups == 4);
  REQUIRE(yutu::sync_wait(c.remove("a", true)));
  CHECK(get("a").error() == errc::object_not_found);
  CHECK(look.lookups == 5);

  // A broken link to the master (it may have restarted and forgotten its leases) drops it too.
  REQUIRE(yutu::sync_wait(c.put("b", v1)));
  REQUIRE(get("b"));
  REQUIRE(get("b"));
  CHECK(look.lookups == 6);
  ++look.link;
  REQUIRE(get("b"));
  CHECK(look.lookups == 7);

  // load_prefix: the cached leading keys need no master; only the rest is matched there.
  auto w0 = pattern(10 * kib, 30), w1 = pattern(11 * kib, 31);
  REQUIRE(yutu::sync_wait(c.put("p0", w0)));
  REQUIRE(yutu::sync_wait(c.put("p1", w1)));
  buffer d0(16 * kib), d1(16 * kib), d2(16 * kib);
  for (auto* b : {&d0, &d1, &d2}) REQUIRE(c.register_buffer(b->p, b->n));
  std::vector<std::string> pk{"p0", "p1", "p2"};
  std::vector<void*> pd{d0.p, d1.p, d2.p};
  std::vector<std::uint64_t> ps{d0.n, d1.n, d2.n};
  const int before = look.lookups;
  CHECK(yutu::sync_wait(load_on_engine(c, pk, pd, ps)).value() == 2);
  CHECK(look.lookups == before + 3);
  std::memset(d0.p, 0, d0.n);
  std::memset(d1.p, 0, d1.n);
  CHECK(yutu::sync_wait(load_on_engine(c, pk, pd, ps)).value() == 2);
  CHECK(look.lookups == before + 4);  // only "p2" went to the master
  CHECK(std::memcmp(d0.p, w0.data(), w0.size()) == 0);
  CHECK(std::memcmp(d1.p, w1.data(), w1.size()) == 0);
  CHECK(yutu::sync_wait(load_on_engine(c, std::span(pk).first(2), std::span(pd).first(2), std::span(ps).first(2))).value() == 2);
  CHECK(look.lookups == before + 4);  // every key cached: no master call at all
}

TEST_CASE("replica cache: a cached replica that fails is dropped and the key looked up again") {
  master_state m(quiet_master());
  late_master look(m);
  look.delay = 0ms;
  // The only node: a bare engine whose memory is mounted by hand, so it can vanish without unmounting.
  auto [x, xs] = mount_bare_node(m, 4 * mib);
  client_config cc;
  cc.engine_threads = 1;
  cc.transports = {"tcp"};  // a dead process is a refused connection
  cc.transfer_deadline = 5s;
  cc.replica_cache_max_age = 60s;
  auto cr = client::create(cc, look);
  REQUIRE(cr);
  auto& c = **cr;
  buffer dst(64 * kib);
  REQUIRE(c.register_buffer(dst.p, dst.n));
  auto v = pattern(20 * kib, 21);
  REQUIRE(yutu::sync_wait(c.put("k", v)));
  REQUIRE(yutu::sync_wait(get_on_engine(c, "k", dst.p, dst.n)));
  REQUIRE(yutu::sync_wait(get_on_engine(c, "k", dst.p, dst.n)));
  CHECK(look.lookups == 1);

  x.reset();
  auto g = yutu::sync_wait(get_on_engine(c, "k", dst.p, dst.n));
  REQUIRE_FALSE(g);
  CHECK((g.error() == te_errc::peer_unreachable || g.error() == te_errc::stale_segment ||
         g.error() == te_errc::no_transport));
  CHECK(look.lookups == 2);  // the cached try failed, the master was asked once more
  CHECK(c.stats().get_failures == 1);
  // The master forgets the node: the object is gone, and the cache does not claim otherwise.
  REQUIRE(yutu::sync_wait(m.unmount_segment("node-x", xs.name)));
  CHECK(yutu::sync_wait(get_on_engine(c, "k", dst.p, dst.n)).error() == errc::object_not_found);
  CHECK(look.lookups == 3);
}

task<result<void>> put_on_engine(client& c, std::string key, std::span<const std::byte> v) {
  co_await c.engine().schedule();
  co_return co_await c.put(std::move(key), v);
}

task<std::vector<result<void>>> batch_put_on_engine(client& c, std::span<const std::string> keys,
                                                    std::span<const std::span<const std::byte>> vals) {
  co_await c.engine().schedule();
  co_return co_await c.batch_put(keys, vals);
}

TEST_CASE("reserved puts: one master call a put; a refused commit keeps the bytes right; close gives them back") {
  using yutu::store::master_op;
  master_state m(quiet_master());
  auto node = make_client(m, 8 * mib);
  client_config cc;
  cc.engine_threads = 1;
  cc.put_reservation_bytes = 256 * kib;  // four 64 KiB reservations
  auto cr = client::create(cc, m);
  REQUIRE(cr);
  auto& c = **cr;
  auto v = pattern(64 * kib, 31), w = pattern(64 * kib, 32);
  auto put = [&](const std::string& k, const std::vector<std::byte>& val) {
    return yutu::sync_wait(put_on_engine(c, k, val));
  };
  auto holds = [&](const std::string& k, const std::vector<std::byte>& val) {
    auto g = yutu::sync_wait(node->get(k));  // another client, through the master
    return g && *g == val;
  };

  // The first put of a size finds no reservation: put_start and put_end, and a refill starts.
  REQUIRE(put("k0", v));
  CHECK(c.stats().reserved_puts == 0);
  const auto starts = m.metrics().requests_of(master_op::put_start);
  const auto ends = m.metrics().requests_of(master_op::put_end);
  for (int i = 1; i <= 3; ++i) REQUIRE(put("k" + std::to_string(i), v));
  CHECK(c.stats().reserved_puts == 3);
  CHECK(m.metrics().requests_of(master_op::put_start) == starts);
  CHECK(m.metrics().requests_of(master_op::put_end) == ends);
  CHECK(m.metrics().requests_of(master_op::batch_put_commit) == 3);
  for (int i = 0; i <= 3; ++i) CHECK(holds("k" + std::to_string(i), v));

  // A put of an existing key is told so; the reservation it wrote into is used again, and the
  // existing object keeps its bytes.
  auto e = put("k1", w);
  REQUIRE_FALSE(e);
  CHECK(e.error() == errc::object_already_exists);
  REQUIRE(put("k4", w));
  CHECK(c.stats().reserved_puts == 4);
  CHECK(holds("k1", v));
  CHECK(holds("k4", w));

  // Off an engine thread there are no reservations.
  REQUIRE(yutu::sync_wait(c.put("plain", v)));
  CHECK(c.stats().reserved_puts == 4);
  // Nor for another replication, or an object larger than put_reservation_max_object.
  REQUIRE(yutu::sync_wait([&]() -> task<result<void>> {
    co_await c.engine().schedule();
    co_return co_await c.put("pinned", v, [] {
      replicate_config rc;
      rc.with_soft_pin = true;
      return rc;
    }());
  }()));
  CHECK(c.stats().reserved_puts == 4);

  // Another client's forced remove_all takes every reservation with it: the next put is refused at
  // commit and put again the ordinary way, with its own bytes.
  REQUIRE(yutu::sync_wait(node->remove_all(true)));
  REQUIRE(put("k5", w));
  CHECK(c.stats().reservation_fallbacks == 1);
  CHECK(holds("k5", w));
  for (int i = 6; i <= 8; ++i) REQUIRE(put("k" + std::to_string(i), v));
  CHECK(c.stats().reserved_puts >= 6);
  for (int i = 6; i <= 8; ++i) CHECK(holds("k" + std::to_string(i), v));

  // A batch takes reservations for all its keys.
  const std::vector<std::string> keys{"b0", "b1"};
  const std::vector<std::span<const std::byte>> vals{v, w};
  const auto reserved = c.stats().reserved_puts;
  auto rs = yutu::sync_wait(batch_put_on_engine(c, keys, vals));
  REQUIRE(rs.size() == 2);
  CHECK(rs[0]);
  CHECK(rs[1]);
  CHECK(c.stats().reserved_puts == reserved + 2);
  CHECK(holds("b0", v));
  CHECK(holds("b1", w));

  // This client's own forced remove_all drops its reservations at once: no put is refused for it.
  REQUIRE(yutu::sync_wait(c.remove_all(true)));
  const auto fallbacks = c.stats().reservation_fallbacks;
  for (int i = 0; i < 3; ++i) REQUIRE(put("r" + std::to_string(i), w));
  CHECK(c.stats().reservation_fallbacks == fallbacks);
  for (int i = 0; i < 3; ++i) CHECK(holds("r" + std::to_string(i), w));

  // Closing gives back what it still holds: the master keeps only the objects.
  REQUIRE(yutu::sync_wait(c.close()));
  CHECK(m.metrics().key_count == 3);  // r0..r2
  CHECK(c.stats().put_failures == 1);  // k1's second put
}

TEST_CASE("deferred commits: a put returns before its commit; flush waits for it and names the ones refused") {
  master_state m(quiet_master());
  late_master late(m);
  late.delay = 0ms;
  late.commit_delay = 300ms;
  auto node = make_client(m, 8 * mib);
  client_config cc;
  cc.engine_threads = 1;
  cc.put_reservation_bytes = 1 * mib;  // 16 reservations of 64 KiB
  cc.defer_put_commit = true;
  cc.deferred_commit_gather = 0us;  // each commit leaves at once: the batches below are exact
  auto cr = client::create(cc, late);
  REQUIRE(cr);
  auto& c = **cr;
  auto v = pattern(64 * kib, 71), w = pattern(64 * kib, 72);
  auto put = [&](const std::string& k, const std::vector<std::byte>& val) {
    return yutu::sync_wait(put_on_engine(c, k, val));
  };
  auto holds = [&](const std::string& k, const std::vector<std::byte>& val) {
    auto g = yutu::sync_wait(node->get(k));  // another client, through the master
    return g && *g == val;
  };
  auto exists = [&](const std::string& k) { return yutu::sync_wait(node->exist(k)).value(); };

  // Ten puts return while the first commit is still held back: none waited for the master.
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 10; ++i) REQUIRE(put("k" + std::to_string(i), v));
  CHECK(std::chrono::steady_clock::now() - t0 < late.commit_delay);
  CHECK_FALSE(exists("k9"));
  CHECK(c.stats().puts == 0);  // counted when their commits land
  // flush() waits for all of them: k0's commit alone, then k1..k9 in one batch behind it.
  CHECK(yutu::sync_wait(c.flush()).value().empty());
  CHECK(late.commit_calls == 2);
  for (int i = 0; i < 10; ++i) CHECK(holds("k" + std::to_string(i), v));
  CHECK(c.stats().puts == 10);
  CHECK(c.stats().reserved_puts == 10);
  CHECK(yutu::sync_wait(c.flush()).value().empty());  // nothing pending: at once

  // A flush whose caller stops waiting says so, and a later one still waits for that commit.
  REQUIRE(put("x", v));
  std::stop_source stop;
  stop.request_stop();
  auto cancelled = yutu::sync_wait(c.flush().with_stop_token(stop.get_token()));
  REQUIRE_FALSE(cancelled);
  CHECK(yutu::is_canceled(cancelled.error()));
  CHECK_FALSE(exists("x"));
  CHECK(yutu::sync_wait(c.flush()).value().empty());
  CHECK(holds("x", v));

  // A put of an existing key returns ok; flush() names it, and the object keeps its bytes.
  REQUIRE(put("k3", w));
  auto failed = yutu::sync_wait(c.flush()).value();
  REQUIRE(failed.size() == 1);
  CHECK(failed[0].key == "k3");
  CHECK(failed[0].error == errc::object_already_exists);
  CHECK(holds("k3", v));
  CHECK(c.stats().deferred_commit_failures == 1);
  CHECK(c.stats().put_failures == 1);
  CHECK(yutu::sync_wait(c.flush()).value().empty());  // reported once

  // This client's own calls keep their order: a remove right after a put removes the object, and
  // no late commit brings it back.
  REQUIRE(put("r", v));
  CHECK(yutu::sync_wait(c.remove("r")));
  CHECK_FALSE(exists("r"));
  // An upsert right after a put replaces what the put stored.
  REQUIRE(put("u", v));
  REQUIRE(yutu::sync_wait(c.upsert("u", w)));
  CHECK(holds("u", w));

  // Another client's forced remove_all takes the reservations: the put that wrote into one is lost,
  // and flush() says so; the next puts find fresh ones.
  REQUIRE(yutu::sync_wait(node->remove_all(true)));
  REQUIRE(put("z", v));
  failed = yutu::sync_wait(c.flush()).value();
  REQUIRE(failed.size() == 1);
  CHECK(failed[0].key == "z");
  CHECK(failed[0].error == errc::object_not_found);
  CHECK_FALSE(exists("z"));
  REQUIRE(put("z", v));
  REQUIRE(put("z2", w));
  CHECK(yutu::sync_wait(c.flush()).value().empty());
  CHECK(holds("z", v));
  CHECK(holds("z2", w));

  // close() commits what was put before it gives the reservations back.
  REQUIRE(put("last", w));
  REQUIRE(yutu::sync_wait(c.close()));
  CHECK(holds("last", w));
  CHECK(m.metrics().key_count == 3);  // z, z2, last

  // Gathering: with commits answered at once, the first put's commit waits for the others.
  late.commit_delay = 0ms;
  cc.deferred_commit_gather = 200ms;
  auto gr = client::create(cc, late);
  REQUIRE(gr);
  const int calls = late.commit_calls;
  for (int i = 0; i < 10; ++i) REQUIRE(yutu::sync_wait(put_on_engine(**gr, "g" + std::to_string(i), v)));
  CHECK_FALSE(exists("g0"));
  CHECK(yutu::sync_wait((*gr)->flush()).value().empty());
  CHECK(late.commit_calls == calls + 1);
  for (int i = 0; i < 10; ++i) CHECK(holds("g" + std::to_string(i), v));
  REQUIRE(yutu::sync_wait((*gr)->close()));
}

TEST_CASE("deferred commits need reservations") {
  master_state m(quiet_master());
  client_config cc;
  cc.engine_threads = 1;
  cc.defer_put_commit = true;
  auto cr = client::create(cc, m);
  REQUIRE_FALSE(cr);
  CHECK(cr.error() == errc::invalid_params);
}

// A client of the embedded store's master over RPC, with one engine thread.
client_config remote_config(yutu::store::embedded& s) {
  client_config rc;
  rc.master = s.master_address();
  rc.metadata = s.metadata();
  rc.engine_threads = 1;
  return rc;
}

TEST_CASE("reserved puts through a remote master: the placeholder and the commit travel over RPC") {
  yutu::store::embedded_config ec;
  ec.memory = 32 * mib;  // the leases the reads take keep 4 MiB after the forced remove_all below
  auto s = yutu::store::embedded::create(ec);
  REQUIRE(s);
  client_config rc = remote_config(**s);
  rc.put_reservation_bytes = 1 * mib;
  auto c = client::create(rc);
  REQUIRE(c);
  std::vector<std::vector<std::byte>> vals;
  for (unsigned i = 0; i < 40; ++i) vals.push_back(pattern(100 * kib, 50 + i));
  for (unsigned i = 0; i < 40; ++i) REQUIRE(yutu::sync_wait(put_on_engine(**c, "o" + std::to_string(i), vals[i])));
  // The refills ran in the background: most puts after the first found one ready.
  CHECK((*c)->stats().reserved_puts >= 20);
  for (unsigned i = 0; i < 40; ++i) CHECK(yutu::sync_wait((*c)->get("o" + std::to_string(i))).value() == vals[i]);
  REQUIRE(yutu::sync_wait((*c)->close()));
  CHECK((*s)->master().metrics().key_count == 40);
  c->reset();

  // Deferred commits over RPC: every put is reserved, the first one too, since a put that finds the
  // pool empty waits for the refill in flight instead of making two round trips of its own.
  REQUIRE(yutu::sync_wait((*s)->master().remove_all(true)));
  rc.defer_put_commit = true;
  auto d = client::create(rc);
  REQUIRE(d);
  for (unsigned i = 0; i < 40; ++i) REQUIRE(yutu::sync_wait(put_on_engine(**d, "d" + std::to_string(i), vals[i])));
  CHECK(yutu::sync_wait((*d)->flush()).value().empty());
  CHECK((*d)->stats().reserved_puts == 40);
  CHECK((*d)->stats().reservation_fallbacks == 0);
  for (unsigned i = 0; i < 40; ++i) CHECK(yutu::sync_wait((*d)->get("d" + std::to_string(i))).value() == vals[i]);
  REQUIRE(yutu::sync_wait((*d)->close()));
  CHECK((*s)->master().metrics().key_count == 40);
}

TEST_CASE("reserved puts: a reservation on a node that died is put again where the master places it") {
  master_state m(quiet_master());
  auto node = make_client(m, 8 * mib, {"tcp"});
  auto [x, xs] = mount_bare_node(m, 8 * mib);
  client_config cc;
  cc.engine_threads = 1;
  cc.transports = {"tcp"};  // a dead process is a refused connection
  cc.transfer_deadline = 5s;
  cc.put_reservation_bytes = 16 * 64 * kib;
  auto cr = client::create(cc, m);
  REQUIRE(cr);
  auto& c = **cr;
  auto v = pattern(64 * kib, 61);
  REQUIRE(yutu::sync_wait(put_on_engine(c, "w0", v)));  // and 16 reservations over both nodes
  // Node x dies; the master forgets it (as its expiry would) and with it the placeholders there.
  x.reset();
  REQUIRE(yutu::sync_wait(m.unmount_segment("node-x", xs.name)));
  for (int i = 1; i <= 16; ++i) {
    const std::string k = "p" + std::to_string(i);
    REQUIRE(yutu::sync_wait(put_on_engine(c, k, v)));
    CHECK(yutu::sync_wait(node->get(k)).value() == v);
  }
  CHECK(c.stats().reservation_fallbacks >= 1);
  CHECK(c.stats().reserved_puts >= 1);  // the ones on the live node, or those refilled after
  CHECK(c.stats().put_failures == 0);
}

TEST_CASE("reserved puts: reservations past their age are given back, not written") {
  master_state m(quiet_master());
  auto node = make_client(m, 8 * mib);
  client_config cc;
  cc.engine_threads = 1;
  cc.put_reservation_bytes = 128 * kib;
  cc.put_reservation_max_age = 100ms;
  auto cr = client::create(cc, m);
  REQUIRE(cr);
  auto& c = **cr;
  auto v = pattern(32 * kib, 41);
  REQUIRE(yutu::sync_wait(put_on_engine(c, "a", v)));
  REQUIRE(yutu::sync_wait(put_on_engine(c, "b", v)));
  CHECK(c.stats().reserved_puts == 1);
  const auto held = m.metrics().key_count;  // a, b and the reservations
  CHECK(held > 2);
  // No put of that size comes: the thread's sweep gives them back once they are 100 ms old.
  const auto t0 = std::chrono::steady_clock::now();
  while (m.metrics().key_count != 2 && std::chrono::steady_clock::now() - t0 < 5s) std::this_thread::sleep_for(10ms);
  CHECK(m.metrics().key_count == 2);
  CHECK(std::chrono::steady_clock::now() - t0 >= 50ms);
  REQUIRE(yutu::sync_wait(put_on_engine(c, "c", v)));
  CHECK(c.stats().reserved_puts == 1);  // the old ones were given back; c took the two calls
  CHECK(yutu::sync_wait(node->get("c")).value() == v);
  REQUIRE(yutu::sync_wait(put_on_engine(c, "d", v)));  // from the refill c started
  CHECK(c.stats().reserved_puts == 2);
  REQUIRE(yutu::sync_wait(c.close()));
  CHECK(m.metrics().key_count == 4);
}

TEST_CASE("embedded mode: master, metadata and RPC servers, a storage node; clients in and out of process") {
  yutu::store::embedded_config ec;
  ec.memory = 16 * mib;
  auto s = yutu::store::embedded::create(ec);
  REQUIRE(s);
  REQUIRE((*s)->node() != nullptr);
  CHECK((*s)->metadata().starts_with("http://"));
  CHECK_FALSE((*s)->master_address().empty());
  auto in = (*s)->connect({});
  REQUIRE(in);
  yutu::io::reactor r;
  auto v = pattern(100 * kib, 5);
  REQUIRE(r.block_on((*in)->put("emb", v)));

  // A client that reaches the master over RPC and the node through the HTTP metadata server, as a
  // client of another process would.
  client_config rc;
  rc.master = (*s)->master_address();
  rc.metadata = (*s)->metadata();
  rc.transports = {"tcp"};
  auto out = client::create(rc);
  REQUIRE(out);
  CHECK(r.block_on((*out)->get("emb")).value() == v);
  REQUIRE(r.block_on((*out)->put("from-rpc", v)));
  CHECK(r.block_on((*in)->get("from-rpc")).value() == v);
  CHECK(r.block_on((*out)->get("nope")).error() == errc::object_not_found);
  out->reset();
  in->reset();
}

namespace {
// On an engine thread: `n` master calls, and how many wake-ups other threads posted to this reactor
// meanwhile (a call that hopped to another thread's connection comes back through one).
task<std::pair<int, std::uint64_t>> exists_on_engine(client& c, int n) {
  co_await c.engine().schedule();
  auto& here = *yutu::io::reactor::current();
  const auto before = here.statistics().wakeups_posted;
  int found = 0;
  for (int i = 0; i < n; ++i) found += (co_await c.exist("emb")).value_or(false) ? 1 : 0;
  co_return std::pair{found, here.statistics().wakeups_posted - before};
}
}  // namespace

TEST_CASE("a caller on an engine thread reaches a remote master without a thread hop") {
  yutu::store::embedded_config ec;
  ec.memory = 4 * mib;
  auto s = yutu::store::embedded::create(ec);
  REQUIRE(s);
  client_config rc = remote_config(**s);
  rc.heartbeat_interval = std::chrono::hours(1);  // nothing else posts to the engine thread
  auto c = client::create(rc);
  REQUIRE(c);
  REQUIRE(yutu::sync_wait((*c)->put("emb", pattern(1000, 1))));
  auto [found, posted] = yutu::sync_wait(exists_on_engine(**c, 200));
  CHECK(found == 200);
  // The connection lives on this reactor: responses arrive through its own ring. When it lived on a
  // reactor of the client's own, each of the 200 calls came back through a posted wake-up.
  CHECK(posted < 20);
  c->reset();
}

TEST_CASE("sizes parse in binary and decimal units") {
  using yutu::store::parse_size;
  CHECK(parse_size("4096").value() == 4096);
  CHECK(parse_size("64MiB").value() == 64 * mib);
  CHECK(parse_size("1GiB").value() == 1024 * mib);
  CHECK(parse_size("1G").value() == 1024 * mib);
  CHECK(parse_size("1.5 KiB").value() == 1536);
  CHECK(parse_size("2GB").value() == 2'000'000'000);
  CHECK_FALSE(parse_size("lots"));
  CHECK_FALSE(parse_size("12 parsecs"));
  CHECK_FALSE(parse_size(""));
  CHECK_FALSE(parse_size("-1"));
}
