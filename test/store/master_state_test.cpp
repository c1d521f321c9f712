// master_state: the put/get/remove semantics, leases and pins on a hand-moved clock, eviction, groups,
// segments and clients, metrics and the admin views, and same-key puts racing from two threads.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "yutu/coro/sync_wait.hpp"
#include "yutu/store/master_state.hpp"

using namespace std::chrono_literals;
using yutu::errc;
using yutu::store::manual_clock;
using yutu::store::master_config;
using yutu::store::master_op;
using yutu::store::master_state;
using yutu::store::replica_status;
using yutu::store::replicate_config;
using yutu::store::segment_info;

namespace {

constexpr std::uint64_t kib = 1024;
constexpr std::uint64_t mib = 1024 * 1024;

segment_info seg(const std::string& name, const std::string& host, std::uint64_t size, std::uint64_t base = 16 * mib) {
  segment_info s;
  s.name = name;
  s.engine_segment = host + ":1234";
  s.host = host;
  s.base = base;
  s.size = size;
  return s;
}

replicate_config replicas(std::size_t n) {
  replicate_config c;
  c.replica_num = n;
  return c;
}

// A master on a manual clock. Clients do not expire unless a test shortens client_ttl: most tests move
// the clock far without pinging.
struct fixture {
  manual_clock clock;
  std::unique_ptr<master_state> m;

  explicit fixture(master_config cfg = base_config()) : m(std::make_unique<master_state>(cfg, clock.fn())) {}

  static master_config base_config() {
    master_config c;
    c.client_ttl = 24h;
    c.seed = 1234;
    return c;
  }

  void put(const std::string& key, std::uint64_t size, replicate_config cfg = replicas(1),
           const std::string& client = "c1") {
    auto r = m->put_start_sync(client, key, size, cfg);
    REQUIRE(r.has_value());
    REQUIRE(m->put_end_sync(client, key).has_value());
  }
  bool has(const std::string& key) {
    auto r = m->exist_sync(key);
    REQUIRE(r.has_value());
    return *r;
  }
  std::uint64_t allocated() { return m->metrics().allocated; }
};

std::error_code code(errc e) { return make_error_code(e); }

}  // namespace

TEST_CASE("configuration errors are refused at construction") {
  master_config c;
  c.placement_strategy = "nearest";
  CHECK_THROWS_AS(master_state{c}, std::invalid_argument);
  c = {};
  c.allocator_alignment = 100;
  CHECK_THROWS_AS(master_state{c}, std::invalid_argument);
  c = {};
  c.eviction_ratio = 1.5;
  CHECK_THROWS_AS(master_state{c}, std::invalid_argument);
  master_state defaults;
  CHECK(defaults.config().default_kv_lease_ttl == 10s);
  CHECK(defaults.config().eviction_high_watermark_ratio == 0.90);
  CHECK(defaults.config().eviction_ratio == 0.05);
  CHECK(defaults.config().client_ttl == 10s);
  CHECK(defaults.config().default_kv_soft_pin_ttl == 30min);
  CHECK(defaults.config().put_start_timeout == 30s);
  CHECK(defaults.config().put_start_discard_timeout == 600s);
}

TEST_CASE("mount, re-mount and unmount rules") {
  fixture f;
  auto& m = *f.m;
  CHECK(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  // The owner re-mounting the same range (after NEED_REMOUNT) is fine.
  CHECK(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  CHECK(m.mount_segment_sync("c2", seg("s1", "h1", mib)).error() == code(errc::segment_already_exists));
  CHECK(m.mount_segment_sync("c1", seg("s1", "h1", 2 * mib)).error() == code(errc::segment_already_exists));
  CHECK(m.mount_segment_sync("c1", seg("s0", "h1", 0)).error() == code(errc::invalid_params));
  CHECK(m.mount_segment_sync("c1", seg("", "h1", mib)).error() == code(errc::invalid_params));
  CHECK(m.mount_segment_sync("c1", seg("s9", "h1", 32, 1)).error() == code(errc::invalid_params));  // < 1 unit
  CHECK(m.metrics().total_capacity == mib);
  CHECK(m.unmount_segment_sync("c2", "s1").error() == code(errc::illegal_client));
  CHECK(m.unmount_segment_sync("c1", "nope").error() == code(errc::segment_not_found));
  CHECK(m.unmount_segment_sync("c1", "s1").has_value());
  CHECK(m.metrics().total_capacity == 0);
  CHECK(m.metrics().segment_count == 0);
  // The name is free again, for anyone.
  CHECK(m.mount_segment_sync("c2", seg("s1", "h2", mib)).has_value());
  CHECK(m.metrics().failures_of(master_op::mount_segment) == 5);
  CHECK(m.metrics().requests_of(master_op::unmount_segment) == 3);
}

TEST_CASE("put: start, not readable while processing, end, readable with a lease") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  CHECK(m.put_start_sync("c1", "", 10, replicas(1)).error() == code(errc::invalid_key));
  CHECK(m.put_start_sync("c1", "k", 0, replicas(1)).error() == code(errc::invalid_params));
  CHECK(m.put_start_sync("c1", "k", 10, replicas(0)).error() == code(errc::invalid_params));

  auto r = m.put_start_sync("c1", "k", 1000, replicas(1));
  REQUIRE(r.has_value());
  REQUIRE(r->size() == 1);
  const auto d = (*r)[0];
  CHECK(d.segment == "s1");
  CHECK(d.engine_segment == "h1:1234");
  CHECK(d.status == replica_status::processing);
  CHECK(d.addr >= 16 * mib);
  CHECK(d.addr + d.size <= 17 * mib);
  CHECK(d.size == 1024);  // rounded to 64 B

  CHECK(m.get_replica_list_sync("k").error() == code(errc::replica_is_not_ready));
  CHECK(m.get_size_sync("k").error() == code(errc::replica_is_not_ready));
  CHECK_FALSE(*m.exist_sync("k"));
  CHECK(m.put_start_sync("c1", "k", 1000, replicas(1)).error() == code(errc::object_already_exists));
  CHECK(m.put_start_sync("c2", "k", 1000, replicas(1)).error() == code(errc::object_already_exists));

  CHECK(m.put_end_sync("c2", "k").error() == code(errc::illegal_client));
  REQUIRE(m.put_end_sync("c1", "k").has_value());
  CHECK(m.put_end_sync("c1", "k").error() == code(errc::invalid_write));
  CHECK(m.put_end_sync("c1", "missing").error() == code(errc::object_not_found));

  auto g = m.get_replica_list_sync("k");
  REQUIRE(g.has_value());
  CHECK(g->size == 1000);
  CHECK(g->lease_ttl == 10s);
  REQUIRE(g->replicas.size() == 1);
  CHECK(g->replicas[0].addr == d.addr);
  CHECK(g->replicas[0].status == replica_status::complete);
  CHECK(*m.exist_sync("k"));
  CHECK(*m.get_size_sync("k") == 1000);
  CHECK(m.get_replica_list_sync("missing").error() == code(errc::object_not_found));
  CHECK(m.get_size_sync("missing").error() == code(errc::object_not_found));
  // An existing complete key is an error, not a silent success.
  CHECK(m.put_start_sync("c1", "k", 1000, replicas(1)).error() == code(errc::object_already_exists));

  const auto mt = m.metrics();
  CHECK(mt.requests_of(master_op::put_start) == 7);
  CHECK(mt.failures_of(master_op::put_start) == 6);
  CHECK(mt.key_count == 1);
  CHECK(mt.allocated == 1024);
}

TEST_CASE("put_revoke frees the replicas and forgets the key") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  REQUIRE(m.put_start_sync("c1", "k", 5000, replicas(1)).has_value());
  CHECK(f.allocated() == 5056);
  CHECK(m.put_revoke_sync("c2", "k").error() == code(errc::illegal_client));
  REQUIRE(m.put_revoke_sync("c1", "k").has_value());
  CHECK(f.allocated() == 0);
  CHECK(m.get_replica_list_sync("k").error() == code(errc::object_not_found));
  CHECK(m.put_revoke_sync("c1", "k").error() == code(errc::object_not_found));
  f.put("k", 10);
  CHECK(m.put_revoke_sync("c1", "k").error() == code(errc::invalid_write));  // complete: nothing to revoke
}

TEST_CASE("a stale put is pre-empted after put_start_timeout; its memory waits for the discard timeout") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  auto a = m.put_start_sync("writer_a", "k", 300 * kib, replicas(1));
  REQUIRE(a.has_value());
  f.clock.advance(29s);
  CHECK(m.put_start_sync("writer_b", "k", 300 * kib, replicas(1)).error() == code(errc::object_already_exists));
  f.clock.advance(1s);
  auto b = m.put_start_sync("writer_b", "k", 300 * kib, replicas(1));
  REQUIRE(b.has_value());
  CHECK(m.metrics().preempted_puts == 1);
  // Writer A may still be writing into its old range: B got other memory, and A cannot end B's put.
  CHECK((*b)[0].addr != (*a)[0].addr);
  CHECK(f.allocated() == 2 * 300 * kib);
  CHECK(m.put_end_sync("writer_a", "k").error() == code(errc::illegal_client));
  REQUIRE(m.put_end_sync("writer_b", "k").has_value());
  // 600 s after A's start, its range is free again.
  f.clock.advance(569s);
  m.tick();
  CHECK(f.allocated() == 2 * 300 * kib);
  f.clock.advance(1s);
  m.tick();
  CHECK(f.allocated() == 300 * kib);
  CHECK(*m.get_size_sync("k") == 300 * kib);
}

TEST_CASE("a put never ended is reclaimed after put_start_discard_timeout") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  REQUIRE(m.put_start_sync("c1", "abandoned", 4 * kib, replicas(1)).has_value());
  f.clock.advance(300s);
  REQUIRE(m.put_start_sync("c1", "later", 4 * kib, replicas(1)).has_value());
  f.clock.advance(299s);
  m.tick();
  CHECK(f.allocated() == 8 * kib);
  f.clock.advance(1s);
  m.tick();
  CHECK(m.metrics().discarded_puts == 1);
  CHECK(f.allocated() == 4 * kib);
  CHECK(m.get_replica_list_sync("abandoned").error() == code(errc::object_not_found));
  CHECK(m.put_end_sync("c1", "abandoned").error() == code(errc::object_not_found));
  CHECK(m.get_replica_list_sync("later").error() == code(errc::replica_is_not_ready));
}

TEST_CASE("leases block remove until they end; force removes and frees when the lease ends") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  f.put("k", 64 * kib);
  REQUIRE(m.get_replica_list_sync("k").has_value());
  CHECK(m.remove_sync("k").error() == code(errc::object_has_lease));
  f.clock.advance(6s);
  REQUIRE(m.get_replica_list_sync("k").has_value());  // extends to t = 16 s
  f.clock.advance(5s);
  CHECK(m.remove_sync("k").error() == code(errc::object_has_lease));
  f.clock.advance(5s);
  CHECK(m.remove_sync("k").has_value());
  CHECK(m.remove_sync("k").error() == code(errc::object_not_found));
  CHECK(f.allocated() == 0);

  f.put("k2", 64 * kib);
  REQUIRE(m.get_replica_list_sync("k2").has_value());
  f.clock.advance(2s);
  REQUIRE(m.remove_sync("k2", true).has_value());
  CHECK_FALSE(f.has("k2"));
  // A reader holding the lease may still be reading: the bytes stay reserved until it ends.
  CHECK(f.allocated() == 64 * kib);
  f.clock.advance(8s);
  m.tick();
  CHECK(f.allocated() == 0);
}

TEST_CASE("remove of an object whose write is in flight needs force") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  REQUIRE(m.put_start_sync("c1", "k", 4 * kib, replicas(1)).has_value());
  CHECK(m.remove_sync("k").error() == code(errc::replica_is_not_ready));
  REQUIRE(m.remove_sync("k", true).has_value());
  CHECK(m.put_end_sync("c1", "k").error() == code(errc::object_not_found));
  // The writer may still be writing: the range is kept until the discard timeout.
  CHECK(f.allocated() == 4 * kib);
  f.clock.advance(600s);
  m.tick();
  CHECK(f.allocated() == 0);
}

TEST_CASE("match_prefix counts leading complete keys and leases them") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  f.put("a", 100);
  f.put("b", 200);
  f.put("d", 400);
  REQUIRE(m.put_start_sync("c1", "e", 10, replicas(1)).has_value());
  auto r = m.match_prefix_sync(std::vector<std::string>{"a", "b", "c", "d"});
  REQUIRE(r.has_value());
  CHECK(r->hits == 2);
  REQUIRE(r->replicas.size() == 2);
  CHECK(r->replicas[0].size == 100);
  CHECK(r->replicas[1].size == 200);
  CHECK(m.remove_sync("a").error() == code(errc::object_has_lease));
  CHECK(m.remove_sync("d").has_value());  // after the miss: not leased
  f.put("c", 300);
  auto r2 = m.match_prefix_sync(std::vector<std::string>{"a", "b", "c", "e", "a"});
  CHECK(r2->hits == 3);  // e is still processing
  auto r3 = m.match_prefix_sync(std::vector<std::string>{});
  CHECK(r3->hits == 0);
}

TEST_CASE("batch operations answer per key") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  const std::vector<std::string> keys{"x", "y", "z"};
  auto bad = m.batch_put_start_sync("c1", keys, std::vector<std::uint64_t>{1, 2}, replicas(1));
  REQUIRE(bad.size() == 3);
  for (const auto& r : bad) CHECK(r.error() == code(errc::invalid_params));

  f.put("y", 5);
  auto s = m.batch_put_start_sync("c1", keys, std::vector<std::uint64_t>{1, 2, 3}, replicas(1));
  REQUIRE(s.size() == 3);
  CHECK(s[0].has_value());
  CHECK(s[1].error() == code(errc::object_already_exists));
  CHECK(s[2].has_value());
  auto e = m.batch_put_end_sync("c1", std::vector<std::string>{"x", "z", "w"});
  CHECK(e[0].has_value());
  CHECK(e[1].has_value());
  CHECK(e[2].error() == code(errc::object_not_found));
  auto ex = m.batch_exist_sync(std::vector<std::string>{"x", "w", "y"});
  CHECK(*ex[0]);
  CHECK_FALSE(*ex[1]);
  CHECK(*ex[2]);
  auto g = m.batch_get_replica_list_sync(std::vector<std::string>{"z", "w"});
  CHECK(g[0]->size == 3);
  CHECK(g[1].error() == code(errc::object_not_found));
  REQUIRE(m.put_start_sync("c1", "p", 7, replicas(1)).has_value());
  auto rv = m.batch_put_revoke_sync("c1", std::vector<std::string>{"p", "x"});
  CHECK(rv[0].has_value());
  CHECK(rv[1].error() == code(errc::invalid_write));
  auto rm = m.batch_remove_sync(std::vector<std::string>{"x", "z", "w"});
  CHECK(rm[0].has_value());
  CHECK(rm[1].error() == code(errc::object_has_lease));  // leased by the batch get
  CHECK(rm[2].error() == code(errc::object_not_found));

  const auto mt = m.metrics();
  CHECK(mt.requests_of(master_op::batch_put_start) == 2);
  CHECK(mt.failures_of(master_op::batch_put_start) == 2);
  CHECK(mt.items[static_cast<std::size_t>(master_op::batch_put_start)] == 6);
  CHECK(mt.failed_items[static_cast<std::size_t>(master_op::batch_put_start)] == 4);
}

TEST_CASE("many keys: removals in any order leave every other key findable") {
  // The object table probes linearly and closes the gap a removal leaves; thousands of keys, removed
  // in a scattered order, cross its growths and wrap around its end.
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", 64 * mib)).has_value());
  constexpr std::size_t n = 5000;
  const auto key = [](std::size_t i) { return "key-" + std::to_string(i); };
  for (std::size_t i = 0; i < n; ++i) f.put(key(i), 64);
  CHECK(m.metrics().key_count == n);
  std::vector<bool> gone(n, false);
  for (std::size_t step = 0; step < n / 2; ++step) {
    const std::size_t i = (step * 2654435761u) % n;
    if (gone[i]) continue;
    REQUIRE(m.remove_sync(key(i), true).has_value());
    gone[i] = true;
  }
  std::size_t left = 0;
  for (std::size_t i = 0; i < n; ++i) {
    CHECK(f.has(key(i)) == !gone[i]);
    left += gone[i] ? 0 : 1;
  }
  CHECK(m.metrics().key_count == left);
  for (std::size_t i = 0; i < n; ++i)
    if (gone[i]) f.put(key(i), 64);
  CHECK(m.metrics().key_count == n);
  CHECK(*m.remove_all_sync(true) == n);
  CHECK(m.metrics().key_count == 0);
  CHECK_FALSE(f.has(key(0)));
}

TEST_CASE("a put_start that places no replica leaves no key behind") {
  fixture f;
  auto& m = *f.m;
  auto r = m.put_start_sync("c1", "k", 100, replicas(1));  // no segment mounted
  CHECK(r.error() == code(errc::no_available_handle));
  CHECK_FALSE(f.has("k"));
  CHECK(m.metrics().key_count == 0);
  CHECK(m.put_end_sync("c1", "k").error() == code(errc::object_not_found));
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  f.put("k", 100);
  CHECK(f.has("k"));
}

TEST_CASE("remove_all skips leased and in-flight objects unless forced") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  for (const char* k : {"a", "b", "c", "d"}) f.put(k, 1000);
  REQUIRE(m.get_replica_list_sync("a").has_value());
  REQUIRE(m.put_start_sync("c1", "p", 1000, replicas(1)).has_value());
  CHECK(*m.remove_all_sync() == 3);
  CHECK(f.has("a"));
  CHECK(m.metrics().key_count == 2);
  CHECK(*m.remove_all_sync(true) == 2);
  CHECK(m.metrics().key_count == 0);
  CHECK(*m.remove_all_sync() == 0);
}

TEST_CASE("upsert keeps the old object readable until put_end swaps it") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  // On a missing key it is a put.
  REQUIRE(m.upsert_start_sync("c1", "k", 100, replicas(1)).has_value());
  REQUIRE(m.put_end_sync("c1", "k").has_value());
  const auto old_addr = m.get_replica_list_sync("k")->replicas[0].addr;

  auto u = m.upsert_start_sync("c1", "k", 200, replicas(1));
  REQUIRE(u.has_value());
  CHECK((*u)[0].addr != old_addr);
  CHECK((*u)[0].status == replica_status::processing);
  auto during = m.get_replica_list_sync("k");
  CHECK(during->size == 100);
  CHECK(during->replicas[0].addr == old_addr);
  CHECK(m.upsert_start_sync("c2", "k", 300, replicas(1)).error() == code(errc::object_already_exists));
  CHECK(m.put_start_sync("c1", "k", 300, replicas(1)).error() == code(errc::object_already_exists));
  CHECK(m.remove_sync("k").error() == code(errc::replica_is_not_ready));
  CHECK(m.put_end_sync("c2", "k").error() == code(errc::illegal_client));
  REQUIRE(m.put_end_sync("c1", "k").has_value());
  auto after = m.get_replica_list_sync("k");
  CHECK(after->size == 200);
  CHECK(after->replicas[0].addr == (*u)[0].addr);
  // The old version was leased by the reads above: its bytes are freed when that lease ends.
  CHECK(f.allocated() == 128 + 256);
  f.clock.advance(10s);
  m.tick();
  CHECK(f.allocated() == 256);

  // A revoked upsert leaves the current version alone.
  REQUIRE(m.upsert_start_sync("c1", "k", 500, replicas(1)).has_value());
  REQUIRE(m.put_revoke_sync("c1", "k").has_value());
  CHECK(*m.get_size_sync("k") == 200);
  CHECK(f.allocated() == 256);
}

namespace {

master_config no_watermark() {
  master_config c = fixture::base_config();
  c.eviction_high_watermark_ratio = 1.0;  // eviction only when an allocation fails
  return c;
}

}  // namespace

TEST_CASE("a failed allocation evicts in LRU order and retries once") {
  fixture f(no_watermark());
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  for (const char* k : {"k0", "k1", "k2", "k3"}) f.put(k, 256 * kib);
  // Reading k0 makes k1 the least recently used once k0's lease is over.
  REQUIRE(m.get_replica_list_sync("k0").has_value());
  f.clock.advance(11s);
  REQUIRE(m.put_start_sync("c1", "k4", 256 * kib, replicas(1)).has_value());
  CHECK(f.has("k0"));
  CHECK_FALSE(f.has("k1"));
  CHECK(f.has("k2"));
  const auto mt = m.metrics();
  CHECK(mt.evicted_keys == 1);
  CHECK(mt.evicted_bytes == 256 * kib);
  CHECK(mt.successful_evictions == 1);
  CHECK(m.metrics_text().find("master_evicted_keys_total 1\n") != std::string::npos);
  // Bigger than any segment: refused without evicting anything.
  CHECK(m.put_start_sync("c1", "huge", 2 * mib, replicas(1)).error() == code(errc::no_available_handle));
  CHECK(m.metrics().evicted_keys == 1);
  CHECK(m.metrics().attempted_evictions == 1);
}

// Sixteen 64 KiB objects fill a 1 MiB segment in address order; the odd ones are read afterwards,
// so LRU order is k0, k2, ..., k14, k1, k3, ..., k15.
void fill_alternating(fixture& f) {
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  for (int i = 0; i < 16; ++i) f.put("k" + std::to_string(i), 64 * kib);
  for (int i = 0; i < 16; ++i) {
    auto g = m.get_replica_list_sync("k" + std::to_string(i));
    REQUIRE(g.has_value());
    REQUIRE(g->replicas.size() == 1);
    REQUIRE(g->replicas[0].addr == 16 * mib + static_cast<std::uint64_t>(i) * 64 * kib);
  }
  f.clock.advance(11s);
  for (int i = 1; i < 16; i += 2) REQUIRE(m.get_replica_list_sync("k" + std::to_string(i)).has_value());
}

TEST_CASE("a put that LRU eviction leaves without a hole large enough evicts the cheapest run of blocks") {
  fixture f(no_watermark());
  auto& m = *f.m;
  fill_alternating(f);
  f.clock.advance(11s);
  // The LRU round frees k0, k2, k4 and k6: 256 KiB, in four holes of 64 KiB. The run [k0, k3] then
  // costs two more objects, k1 and k3, the fewest any 256 KiB run costs.
  auto r = m.put_start_sync("c1", "big", 256 * kib, replicas(1));
  REQUIRE(r.has_value());
  REQUIRE(r->size() == 1);
  CHECK((*r)[0].addr == 16 * mib);
  REQUIRE(m.put_end_sync("c1", "big").has_value());
  for (int i = 0; i < 16; ++i) CHECK(f.has("k" + std::to_string(i)) == (i > 3 && (i % 2 == 1 || i > 6)));
  const auto mt = m.metrics();
  CHECK(mt.evicted_keys == 6);
  CHECK(mt.evicted_bytes == 6 * 64 * kib);
  CHECK(mt.run_evictions == 1);
  CHECK(m.metrics_text().find("master_run_evictions_total 1\n") != std::string::npos);
  CHECK(f.allocated() == 14 * 64 * kib);  // ten objects left and big
}

TEST_CASE("a run never takes a leased object: with none free of them the put fails as before") {
  fixture f(no_watermark());
  auto& m = *f.m;
  fill_alternating(f);  // the odd keys are leased now
  // A forced remove of a leased key frees its memory only when the lease ends: until then its block
  // belongs to nobody, and no run may take it (under ASan, a mark left on it would be a read of
  // the freed entry).
  REQUIRE(m.remove_sync("k1", true).has_value());
  CHECK(m.put_start_sync("c1", "big", 256 * kib, replicas(1)).error() == code(errc::no_available_handle));
  for (int i = 3; i < 16; i += 2) CHECK(f.has("k" + std::to_string(i)));
  CHECK(m.metrics().run_evictions == 0);
  // Once the leases end, the same put finds its run.
  f.clock.advance(11s);
  CHECK(m.put_start_sync("c1", "big", 256 * kib, replicas(1)).has_value());
  CHECK(m.metrics().run_evictions == 1);
}

TEST_CASE("a search that found no run for a put does not stop a smaller put's search") {
  fixture f(no_watermark());
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  for (int i = 0; i < 16; ++i) f.put("k" + std::to_string(i), 64 * kib);
  // LRU order k0, k3, k6, k9, k12, k15, then the others; every third key (k2, k5, ...) leased.
  for (int i = 1; i < 16; i += 3) REQUIRE(m.get_replica_list_sync("k" + std::to_string(i)).has_value());
  f.clock.advance(11s);
  for (int i = 2; i < 16; i += 3) REQUIRE(m.get_replica_list_sync("k" + std::to_string(i)).has_value());
  // The LRU round frees k0, k3, k6 and k9; no 256 KiB run avoids the leased keys.
  CHECK(m.put_start_sync("c1", "big", 256 * kib, replicas(1)).error() == code(errc::no_available_handle));
  CHECK(m.metrics().run_evictions == 0);
  // Within eviction_min_interval, a 128 KiB put still searches: the LRU round frees k12 and k15,
  // holes too small again, and the run [k0, k1] costs one object.
  auto mid = m.put_start_sync("c1", "mid", 128 * kib, replicas(1));
  REQUIRE(mid.has_value());
  CHECK((*mid)[0].addr == 16 * mib);
  CHECK(m.metrics().run_evictions == 1);
  CHECK_FALSE(f.has("k1"));
  CHECK(f.has("k4"));
}

TEST_CASE("with nothing protected, every put that fits a segment is placed, whatever the size mix and however objects were made") {
  fixture f(no_watermark());
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", 4 * mib)).has_value());
  const std::uint64_t sizes[] = {4 * kib, 64 * kib, 100 * kib, 256 * kib, 1 * mib, 3 * mib + 123 * kib};
  std::mt19937_64 rng(7);
  int placed = 0;
  for (int i = 0; i < 3000; ++i) {
    // Mostly small objects, a large one now and then: the holes the small ones leave are too small.
    const std::uint64_t size = sizes[rng() % 100 < 85 ? rng() % 3 : 3 + rng() % 3];
    const std::string key = "k" + std::to_string(i);
    // Objects become readable three ways, and a run must see the owner of each: put_start and
    // put_end, a reservation committed under its key, an upsert's new version.
    switch (rng() % 3) {
      case 0: {
        auto r = m.put_start_sync("c1", key, size, replicas(1));
        REQUIRE_MESSAGE(r.has_value(), "put ", i, " of ", size, " bytes: ", r.error().message());
        REQUIRE(m.put_end_sync("c1", key).has_value());
        break;
      }
      case 1: {
        const std::string placeholder = "\x7fr/" + std::to_string(i);
        auto r = m.put_start_sync("c1", placeholder, size, replicas(1));
        REQUIRE_MESSAGE(r.has_value(), "reservation ", i, " of ", size, " bytes: ", r.error().message());
        auto c = m.batch_put_commit_sync("c1", std::vector<std::string>{placeholder}, std::vector<std::string>{key});
        REQUIRE(c.size() == 1);
        REQUIRE(c[0].has_value());
        break;
      }
      default: {
        f.put(key, 4 * kib);
        auto r = m.upsert_start_sync("c1", key, size, replicas(1));
        REQUIRE_MESSAGE(r.has_value(), "upsert ", i, " of ", size, " bytes: ", r.error().message());
        REQUIRE(m.put_end_sync("c1", key).has_value());
        break;
      }
    }
    ++placed;
    if (rng() % 4 == 0) (void)m.remove_sync("k" + std::to_string(rng() % (i + 1)), false);
  }
  CHECK(placed == 3000);
  CHECK(m.metrics().run_evictions > 0);
}

TEST_CASE("passing the high watermark evicts eviction_ratio of the segment") {
  fixture f;  // watermark 0.90, ratio 0.05
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  for (int i = 0; i < 14; ++i) f.put("k" + std::to_string(i), 64 * kib);  // 87.5 %
  CHECK(m.metrics().evicted_keys == 0);
  CHECK(m.metrics().attempted_evictions == 0);
  f.put("k14", 64 * kib);  // 93.75 %: one round frees >= 52.4 KiB, that is the oldest 64 KiB object
  CHECK(m.metrics().evicted_keys == 1);
  CHECK_FALSE(f.has("k0"));
  CHECK(f.has("k1"));
  CHECK(f.has("k14"));
  CHECK(f.allocated() == 14 * 64 * kib);
}

TEST_CASE("a watermark round that finds nothing to evict does not walk the list again within eviction_min_interval") {
  fixture f;  // watermark 0.90, min interval 10 ms
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", 1 * mib)).has_value());
  for (int i = 0; i < 15; ++i) {
    f.put("k" + std::to_string(i), 64 * kib);
    REQUIRE(m.get_replica_list_sync("k" + std::to_string(i)).has_value());  // leased: not evictable
  }
  // The 15th put crossed the watermark (93.75 %): one futile attempt, nothing evicted.
  const auto attempts = m.metrics().attempted_evictions;
  CHECK(attempts == 1);
  CHECK(m.metrics().evicted_keys == 0);
  auto small = [&](const std::string& k) {
    f.put(k, 4 * kib);
    REQUIRE(m.get_replica_list_sync(k).has_value());
  };
  small("s0");  // still past the watermark, within the interval: no walk of the list
  small("s1");
  CHECK(m.metrics().attempted_evictions == attempts);
  f.clock.advance(11ms);
  small("s2");  // the interval is over: one more attempt, as futile
  CHECK(m.metrics().attempted_evictions == attempts + 1);
  CHECK(m.metrics().evicted_keys == 0);
}

TEST_CASE("eviction skips leased, in-flight and hard-pinned objects and takes soft-pinned ones last") {
  fixture f(no_watermark());
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib + 512 * kib)).has_value());
  replicate_config hard = replicas(1);
  hard.with_hard_pin = true;
  replicate_config soft = replicas(1);
  soft.with_soft_pin = true;
  soft.soft_pin_ttl = 60s;
  f.put("hard", 256 * kib, hard);
  f.put("soft", 256 * kib, soft);
  f.put("leased", 256 * kib);
  REQUIRE(m.put_start_sync("c1", "inflight", 256 * kib, replicas(1)).has_value());
  f.put("plain", 256 * kib);
  f.put("plain2", 256 * kib);  // full now
  REQUIRE(m.get_replica_list_sync("leased").has_value());

  // Oldest first among the unprotected, soft-pinned after the plain ones even though older.
  f.put("n1", 256 * kib);
  CHECK_FALSE(f.has("plain"));
  CHECK(f.has("soft"));
  f.put("n2", 256 * kib);
  CHECK_FALSE(f.has("plain2"));
  CHECK(f.has("soft"));
  // n1 and n2 are now leased (protect them); only the soft-pinned object is left to take.
  REQUIRE(m.get_replica_list_sync("n1").has_value());
  REQUIRE(m.get_replica_list_sync("n2").has_value());
  f.put("n3", 256 * kib);
  CHECK_FALSE(f.has("soft"));
  CHECK(f.has("hard"));
  CHECK(f.has("leased"));
  CHECK(m.get_replica_list_sync("inflight").error() == code(errc::replica_is_not_ready));
  // Nothing evictable is left: the put fails.
  REQUIRE(m.get_replica_list_sync("n3").has_value());
  CHECK(m.put_start_sync("c1", "n4", 256 * kib, replicas(1)).error() == code(errc::no_available_handle));
  CHECK(m.metrics().evicted_keys == 3);
}

TEST_CASE("soft pins expire after their TTL; reads do not refresh them") {
  fixture f(no_watermark());
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  replicate_config soft = replicas(1);
  soft.with_soft_pin = true;
  soft.soft_pin_ttl = 60s;
  f.put("soft", 256 * kib, soft);
  f.put("a", 256 * kib);
  f.put("b", 256 * kib);
  f.put("c", 256 * kib);
  f.clock.advance(30s);
  REQUIRE(m.get_replica_list_sync("soft").has_value());  // most recent access, still pinned to t = 60 s
  f.clock.advance(31s);  // the lease ended, the pin too
  f.put("d", 256 * kib);
  CHECK(f.has("soft"));  // the read made it the most recently used: a goes first
  CHECK_FALSE(f.has("a"));
  // LRU order now: soft, d, b, c. Had the read at t = 30 s refreshed the pin (to t = 90 s), soft would
  // still be pinned at t = 72 s and d would go; its pin ended at t = 60 s, so soft goes.
  REQUIRE(m.get_replica_list_sync("b").has_value());
  REQUIRE(m.get_replica_list_sync("c").has_value());
  f.clock.advance(11s);
  f.put("e", 256 * kib);
  CHECK_FALSE(f.has("soft"));
  CHECK(f.has("d"));
  CHECK(f.has("b"));
}

TEST_CASE("groups are evicted whole, and not at all while a member is protected") {
  fixture f(no_watermark());
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  replicate_config g = replicas(1);
  g.group_id = "req-42";
  f.put("g1", 256 * kib, g);
  f.put("solo", 256 * kib);
  f.put("g2", 256 * kib, g);
  f.put("last", 256 * kib);
  // g1 is the oldest: taking it takes g2 as well, although solo is older than g2.
  f.put("new", 256 * kib);
  CHECK_FALSE(f.has("g1"));
  CHECK_FALSE(f.has("g2"));
  CHECK(f.has("solo"));
  CHECK(m.metrics().evicted_keys == 2);

  // A leased member protects its group: solo goes instead.
  fixture h(no_watermark());
  auto& n = *h.m;
  REQUIRE(n.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  h.put("g1", 256 * kib, g);
  h.put("solo", 256 * kib);
  h.put("g2", 256 * kib, g);
  h.put("last", 256 * kib);
  REQUIRE(n.get_replica_list_sync("g2").has_value());
  h.put("new", 256 * kib);
  CHECK(h.has("g1"));
  CHECK(h.has("g2"));
  CHECK_FALSE(h.has("solo"));
}

TEST_CASE("replica placement through the master: distinct segments, fewer when fewer exist") {
  fixture f;
  auto& m = *f.m;
  CHECK(m.put_start_sync("c1", "k", 10, replicas(1)).error() == code(errc::no_available_handle));
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  REQUIRE(m.mount_segment_sync("c2", seg("s2", "h2", mib, 64 * mib)).has_value());
  auto r = m.put_start_sync("c1", "k", 10, replicas(3));
  REQUIRE(r.has_value());
  REQUIRE(r->size() == 2);
  CHECK((*r)[0].segment != (*r)[1].segment);

  // Preferred by segment name and by engine segment name.
  replicate_config p = replicas(1);
  p.preferred_segments = {"s2"};
  for (int i = 0; i < 10; ++i) CHECK((*m.put_start_sync("c1", "p" + std::to_string(i), 10, p))[0].segment == "s2");
  p.preferred_segments = {"h1:1234"};
  for (int i = 0; i < 10; ++i) CHECK((*m.put_start_sync("c1", "q" + std::to_string(i), 10, p))[0].segment == "s1");
  // prefer_local with the writer's host, and with the host of the writer's own segments.
  replicate_config l = replicas(1);
  l.prefer_local = true;
  l.local_host = "h2";
  for (int i = 0; i < 10; ++i) CHECK((*m.put_start_sync("c1", "l" + std::to_string(i), 10, l))[0].segment == "s2");
  l.local_host.clear();
  for (int i = 0; i < 10; ++i) CHECK((*m.put_start_sync("c1", "m" + std::to_string(i), 10, l))[0].segment == "s1");
}

TEST_CASE("unmount drops the segment's replicas; objects left without one disappear") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  REQUIRE(m.mount_segment_sync("c2", seg("s2", "h2", mib, 64 * mib)).has_value());
  f.put("both", 1000, replicas(2));
  replicate_config only1 = replicas(1);
  only1.preferred_segments = {"s1"};
  f.put("only1", 1000, only1);
  REQUIRE(m.put_start_sync("c1", "writing", 1000, only1).has_value());
  REQUIRE(m.get_replica_list_sync("both")->replicas.size() == 2);

  REQUIRE(m.unmount_segment_sync("c1", "s1").has_value());
  auto b = m.get_replica_list_sync("both");
  REQUIRE(b.has_value());
  REQUIRE(b->replicas.size() == 1);
  CHECK(b->replicas[0].segment == "s2");
  CHECK(m.get_replica_list_sync("only1").error() == code(errc::object_not_found));
  CHECK(m.put_end_sync("c1", "writing").error() == code(errc::object_not_found));
  CHECK(m.metrics().key_count == 1);
  CHECK(m.metrics().allocated == 1024);
}

TEST_CASE("silent clients expire and lose their segments; an unknown client is told to re-mount") {
  master_config cfg = fixture::base_config();
  cfg.client_ttl = 10s;
  fixture f(cfg);
  auto& m = *f.m;
  auto p0 = m.ping_sync("c1");
  REQUIRE(p0.has_value());
  CHECK(p0->need_remount);  // never seen
  CHECK_FALSE(m.ping_sync("c1")->need_remount);
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  REQUIRE(m.mount_segment_sync("c2", seg("s2", "h2", mib, 64 * mib)).has_value());
  replicate_config on1 = replicas(1);
  on1.preferred_segments = {"s1"};
  f.put("k", 1000, on1);
  // c2 keeps pinging every second; c1 falls silent.
  for (int i = 0; i < 10; ++i) {
    f.clock.advance(1s);
    REQUIRE(m.ping_sync("c2").has_value());
  }
  CHECK(f.has("k"));  // 10 s of silence: not yet
  f.clock.advance(1s);
  REQUIRE(m.ping_sync("c2").has_value());
  CHECK(m.metrics().expired_clients == 1);
  CHECK(m.metrics().segment_count == 1);
  CHECK_FALSE(f.has("k"));
  auto p = m.ping_sync("c1");
  CHECK(p->need_remount);
  CHECK_FALSE(m.ping_sync("c1")->need_remount);
  CHECK(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  CHECK(m.metrics().segment_count == 2);
  CHECK(m.metrics().active_clients == 2);
}

// `seconds` pass, a second at a time, in which only c2's heartbeats arrive (c1 expires past its TTL).
void only_c2_heard(fixture& f, int seconds) {
  for (int i = 0; i < seconds; ++i) {
    f.clock.advance(1s);
    REQUIRE(f.m->ping_sync("c2").has_value());
  }
}

// Whether [a, a + n) and [b, b + m) share a byte.
bool overlaps(std::uint64_t a, std::uint64_t n, std::uint64_t b, std::uint64_t m) { return a < b + m && b < a + n; }

TEST_CASE("a segment re-mounted while readers may still read its old replicas takes new ones, but not where they read") {
  master_config cfg = fixture::base_config();
  cfg.client_ttl = 2s;
  cfg.default_kv_lease_ttl = 10s;
  cfg.put_start_timeout = 5s;
  fixture f(cfg);
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  REQUIRE(m.mount_segment_sync("c2", seg("s2", "h2", mib, 64 * mib)).has_value());
  replicate_config both = replicas(2);
  f.put("read", 4000, both, "c2");
  f.put("idle", 4000, both, "c2");
  auto rl = m.get_replica_list_sync("read");  // a reader now holds a lease for 10 s
  REQUIRE(rl.has_value());
  std::uint64_t leased_addr = 0;
  for (auto& r : rl->replicas)
    if (r.segment == "s1") leased_addr = r.addr;
  REQUIRE(leased_addr != 0);
  // c1 falls silent and is expired; its next heartbeat re-mounts the same memory.
  only_c2_heard(f, 3);
  CHECK(m.metrics().expired_clients == 1);
  CHECK(m.ping_sync("c1")->need_remount);
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  // s1 takes new replicas at once, but none where the reader may still be reading: only that
  // object's range is held back ("idle" had no lease, so its range is free again).
  CHECK(m.metrics().quarantined_segments == 0);
  CHECK(m.metrics().fenced_bytes == 4032);
  std::size_t in_s1 = 0;
  for (int i = 0; i < 600; ++i) {  // s1 holds about 260: it fills up, and eviction runs
    auto p = m.put_start_sync("c2", "new" + std::to_string(i), 4000, both);
    REQUIRE(p.has_value());
    for (auto& r : *p) {
      if (r.segment != "s1") continue;
      ++in_s1;
      CHECK_FALSE(overlaps(r.addr, r.size, leased_addr, 4000));
    }
    REQUIRE(m.put_end_sync("c2", "new" + std::to_string(i)).has_value());
  }
  CHECK(in_s1 == 600);
  CHECK(m.metrics().fenced_bytes == 4032);
  // Expired and re-mounted again inside the lease: the range is still held back.
  only_c2_heard(f, 3);
  CHECK(m.metrics().expired_clients == 2);
  CHECK(m.ping_sync("c1")->need_remount);
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  CHECK(m.metrics().fenced_bytes == 4032);
  for (int i = 0; i < 300; ++i) {
    const std::string k = "newer" + std::to_string(i);
    auto p = m.put_start_sync("c2", k, 4000, both);
    REQUIRE(p.has_value());
    for (auto& r : *p)
      if (r.segment == "s1") CHECK_FALSE(overlaps(r.addr, r.size, leased_addr, 4000));
    REQUIRE(m.put_end_sync("c2", k).has_value());
  }
  // After the lease (taken at 0 s, now 6 s), the range is the segment's again.
  for (int i = 0; i < 3; ++i) {
    f.clock.advance(1s);
    REQUIRE(m.ping_sync("c1").has_value());
    REQUIRE(m.ping_sync("c2").has_value());
  }
  CHECK(m.metrics().fenced_bytes == 4032);  // 9 s
  f.clock.advance(1100ms);
  REQUIRE(m.ping_sync("c1").has_value());
  REQUIRE(m.ping_sync("c2").has_value());
  CHECK(m.metrics().fenced_bytes == 0);
  bool reused = false;
  for (int i = 0; i < 600 && !reused; ++i) {
    const std::string k = "after" + std::to_string(i);
    auto p = m.put_start_sync("c2", k, 4000, both);
    REQUIRE(p.has_value());
    for (auto& r : *p) reused = reused || (r.segment == "s1" && overlaps(r.addr, r.size, leased_addr, 4000));
    REQUIRE(m.put_end_sync("c2", k).has_value());
  }
  CHECK(reused);

  // Without a lease or a write in flight there, nothing is held back.
  fixture g(cfg);
  REQUIRE(g.m->mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  REQUIRE(g.m->mount_segment_sync("c2", seg("s2", "h2", mib, 64 * mib)).has_value());
  g.put("idle", 4000, both, "c2");
  only_c2_heard(g, 3);
  REQUIRE(g.m->mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  CHECK(g.m->metrics().quarantined_segments == 0);
  CHECK(g.m->metrics().fenced_bytes == 0);
  CHECK(g.m->metrics().segment_count == 2);
}

TEST_CASE("a segment re-mounted while writes into its old replicas may be in flight holds their ranges back for put_start_timeout") {
  master_config cfg = fixture::base_config();
  cfg.client_ttl = 2s;
  cfg.put_start_timeout = 5s;
  fixture f(cfg);
  auto& m = *f.m;
  // A single node: before the fences, every put failed until the quarantine ended.
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  std::vector<std::pair<std::uint64_t, std::uint64_t>> writing;  // what c2 may still be writing
  for (int i = 0; i < 8; ++i) {
    auto p = m.put_start_sync("c2", "writing" + std::to_string(i), 64 * 1024, replicas(1));  // never ended
    REQUIRE(p.has_value());
    REQUIRE(p->size() == 1);
    writing.emplace_back((*p)[0].addr, (*p)[0].size);
  }
  only_c2_heard(f, 3);
  CHECK(m.metrics().expired_clients == 1);
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib, 16 * mib)).has_value());
  CHECK(m.metrics().quarantined_segments == 0);
  CHECK(m.metrics().segment_count == 1);
  CHECK(m.metrics().fenced_bytes == 8 * 64 * 1024);
  const auto check_puts = [&](const std::string& prefix, int n) {
    for (int i = 0; i < n; ++i) {
      const std::string k = prefix + std::to_string(i);
      auto p = m.put_start_sync("c2", k, 4000, replicas(1));
      REQUIRE(p.has_value());
      for (auto& r : *p)
        for (auto& [a, sz] : writing) CHECK_FALSE(overlaps(r.addr, r.size, a, sz));
      REQUIRE(m.put_end_sync("c2", k).has_value());
    }
  };
  check_puts("now", 400);  // more than fit: eviction runs, and the fences stay
  f.clock.advance(1s);
  REQUIRE(m.ping_sync("c1").has_value());
  REQUIRE(m.ping_sync("c2").has_value());
  CHECK(m.metrics().fenced_bytes == 8 * 64 * 1024);  // 4 s after the puts started
  check_puts("later", 100);
  f.clock.advance(1100ms);  // 5.1 s
  REQUIRE(m.ping_sync("c1").has_value());
  REQUIRE(m.ping_sync("c2").has_value());
  CHECK(m.metrics().fenced_bytes == 0);
  CHECK(m.metrics().segment_count == 1);
}

TEST_CASE("a master stall is not charged to the clients") {
  for (const bool rule : {true, false}) {
    master_config cfg = fixture::base_config();
    cfg.client_ttl = 10s;
    cfg.stall_threshold = rule ? 5000ms : 0ms;
    fixture f(cfg);
    auto& m = *f.m;
    REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
    f.clock.advance(30s);  // the master did nothing for 30 s
    auto p = m.ping_sync("c1");
    REQUIRE(p.has_value());
    CHECK(p->need_remount == !rule);
    CHECK(m.metrics().forgiven_stalls == (rule ? 1u : 0u));
    CHECK(m.metrics().segment_count == (rule ? 1u : 0u));
  }
}

TEST_CASE("same-key puts racing from two threads: exactly one wins each key") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", 64 * mib)).has_value());
  constexpr int keys = 2000;
  std::vector<std::atomic<int>> wins(keys);
  std::atomic<int> other_errors{0};
  std::atomic<bool> go{false};
  const auto racer = [&](const std::string& client) {
    while (!go.load()) std::this_thread::yield();
    for (int i = 0; i < keys; ++i) {
      const std::string key = "key" + std::to_string(i);
      auto r = m.put_start_sync(client, key, 4096, replicas(1));
      if (r) {
        ++wins[i];
        if (!m.put_end_sync(client, key)) ++other_errors;
      } else if (r.error() != code(errc::object_already_exists)) {
        ++other_errors;
      }
      (void)m.get_replica_list_sync(key);
    }
  };
  std::thread a(racer, "ca"), b(racer, "cb");
  go = true;
  a.join();
  b.join();
  for (int i = 0; i < keys; ++i) REQUIRE(wins[i].load() == 1);
  CHECK(other_errors.load() == 0);
  CHECK(m.metrics().key_count == keys);
  CHECK(m.metrics().allocated == keys * 4096u);
}

TEST_CASE("metrics text and the admin JSON views") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  f.put("k", 1000);
  (void)m.get_replica_list_sync("nope");
  const std::string t = m.metrics_text();
  for (const char* line : {"master_total_capacity_bytes 1048576\n", "master_allocated_bytes 1024\n",
                           "master_key_count 1\n", "master_put_start_requests_total 1\n",
                           "master_put_end_requests_total 1\n", "master_get_replica_list_failures_total 1\n",
                           "master_mount_segment_requests_total 1\n", "master_evicted_keys_total 0\n",
                           "# TYPE master_put_start_requests_total counter\n",
                           "# TYPE master_allocated_bytes gauge\n", "master_batch_put_start_items_total 0\n"}) {
    CHECK_MESSAGE(t.find(line) != std::string::npos, line);
  }

  const auto segs = nlohmann::json::parse(m.segments_json());
  REQUIRE(segs["segments"].size() == 1);
  CHECK(segs["segments"][0]["name"] == "s1");
  CHECK(segs["segments"][0]["used"] == 1024);
  CHECK(segs["segments"][0]["client"] == "c1");
  CHECK(segs["total_capacity"] == mib);

  auto q = nlohmann::json::parse(m.query_key_json("k"));
  CHECK(q["found"] == true);
  CHECK(q["status"] == "complete");
  CHECK(q["size"] == 1000);
  CHECK(q["replicas"].size() == 1);
  CHECK(q["lease_ms_left"] == 0);
  CHECK(q["writer"] == "c1");
  (void)m.get_replica_list_sync("k");
  f.clock.advance(4s);
  q = nlohmann::json::parse(m.query_key_json("k"));
  CHECK(q["lease_ms_left"] == 6000);
  q = nlohmann::json::parse(m.query_key_json("nope"));
  CHECK(q["found"] == false);
}

TEST_CASE("the coroutine interface completes synchronously through master_service") {
  fixture f;
  yutu::store::master_service& s = *f.m;
  CHECK(yutu::sync_wait(s.mount_segment("c1", seg("s1", "h1", mib))).has_value());
  CHECK(yutu::sync_wait(s.ping("c1"))->need_remount == false);
  auto r = yutu::sync_wait(s.put_start("c1", "k", 100, replicas(1)));
  REQUIRE(r.has_value());
  CHECK(yutu::sync_wait(s.put_end("c1", "k")).has_value());
  CHECK(*yutu::sync_wait(s.exist("k")));
  CHECK(yutu::sync_wait(s.get_replica_list("k"))->size == 100);
  CHECK(*yutu::sync_wait(s.get_size("k")) == 100);
  CHECK(yutu::sync_wait(s.match_prefix({"k", "x"}))->hits == 1);
  CHECK(yutu::sync_wait(s.batch_exist({"k", "x"})).size() == 2);
  CHECK(yutu::sync_wait(s.upsert_start("c1", "k", 50, replicas(1))).has_value());
  CHECK(yutu::sync_wait(s.put_revoke("c1", "k")).has_value());
  CHECK(yutu::sync_wait(s.remove("k", true)).has_value());
  CHECK(*yutu::sync_wait(s.remove_all(false)) == 0);
  CHECK(yutu::sync_wait(s.unmount_segment("c1", "s1")).has_value());
}

TEST_CASE("batch_put_commit: a reservation becomes its key with its replicas; refusals leave it usable") {
  fixture f;
  auto& m = *f.m;
  REQUIRE(m.mount_segment_sync("c1", seg("s1", "h1", mib)).has_value());
  auto r1 = m.put_start_sync("c1", "\x7fr/1", 4 * kib, replicas(1));
  auto r2 = m.put_start_sync("c1", "\x7fr/2", 4 * kib, replicas(1));
  REQUIRE(r1.has_value());
  REQUIRE(r2.has_value());
  f.put("taken", 4 * kib);
  const auto used = f.allocated();

  // Mismatched lists: nothing happens.
  auto bad = m.batch_put_commit_sync("c1", std::vector<std::string>{"\x7fr/1"}, std::vector<std::string>{"a", "b"});
  REQUIRE(bad.size() == 2);
  for (const auto& r : bad) CHECK(r.error() == code(errc::invalid_params));

  auto c = m.batch_put_commit_sync("c1", std::vector<std::string>{"\x7fr/1", "\x7fr/2", "nope", "taken"},
                                   std::vector<std::string>{"a", "taken", "b", "c"});
  REQUIRE(c.size() == 4);
  CHECK(c[0].has_value());
  CHECK(c[1].error() == code(errc::object_already_exists));  // "taken" exists: r/2 stays reserved
  CHECK(c[2].error() == code(errc::object_not_found));
  CHECK(c[3].error() == code(errc::invalid_write));  // a complete object is no reservation
  // "a" is readable where r/1 was allocated, and r/1 is gone; nothing was allocated or freed.
  auto g = m.get_replica_list_sync("a");
  REQUIRE(g.has_value());
  CHECK(g->size == 4 * kib);
  REQUIRE(g->replicas.size() == 1);
  CHECK(g->replicas[0].addr == (*r1)[0].addr);
  CHECK_FALSE(f.has("\x7fr/1"));
  CHECK(f.allocated() == used);
  // Another client cannot commit this client's reservation; this client still can.
  CHECK(m.batch_put_commit_sync("c2", std::vector<std::string>{"\x7fr/2"}, std::vector<std::string>{"d"})[0].error() ==
        code(errc::illegal_client));
  CHECK(m.batch_put_commit_sync("c1", std::vector<std::string>{"\x7fr/2"}, std::vector<std::string>{"d"})[0].has_value());
  CHECK(m.get_replica_list_sync("d")->replicas[0].addr == (*r2)[0].addr);
  // A committed object is an object like any other: it can be removed (once its lease ends) and its
  // memory is freed.
  f.clock.advance(m.config().default_kv_lease_ttl + 1s);
  REQUIRE(m.remove_sync("a").has_value());
  CHECK(f.allocated() < used);

  // Past put_start_timeout a reservation's memory may have been handed out again: refused.
  auto r3 = m.put_start_sync("c1", "\x7fr/3", 4 * kib, replicas(1));
  REQUIRE(r3.has_value());
  f.clock.advance(m.config().put_start_timeout);
  CHECK(m.batch_put_commit_sync("c1", std::vector<std::string>{"\x7fr/3"}, std::vector<std::string>{"e"})[0].error() ==
        code(errc::invalid_write));
  CHECK_FALSE(f.has("e"));
  // A stale put in flight of the key itself is pre-empted, as put_start does.
  REQUIRE(m.put_start_sync("c2", "f", 4 * kib, replicas(1)).has_value());
  auto r4 = m.put_start_sync("c1", "\x7fr/4", 4 * kib, replicas(1));
  REQUIRE(r4.has_value());
  CHECK(m.batch_put_commit_sync("c1", std::vector<std::string>{"\x7fr/4"}, std::vector<std::string>{"f"})[0].error() ==
        code(errc::object_already_exists));
  f.clock.advance(m.config().put_start_timeout / 2 + 1s);
  auto r5 = m.put_start_sync("c1", "\x7fr/5", 4 * kib, replicas(1));
  REQUIRE(r5.has_value());
  f.clock.advance(m.config().put_start_timeout / 2);
  CHECK(m.batch_put_commit_sync("c1", std::vector<std::string>{"\x7fr/5"}, std::vector<std::string>{"f"})[0].has_value());
  CHECK(m.get_replica_list_sync("f")->replicas[0].addr == (*r5)[0].addr);

  const auto mt = m.metrics();
  CHECK(mt.requests_of(master_op::batch_put_commit) == 7);
  CHECK(mt.items[static_cast<std::size_t>(master_op::batch_put_commit)] == 11);
  CHECK(mt.preempted_puts == 1);
}
