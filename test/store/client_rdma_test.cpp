// The store client over RDMA, on the software verbs double (test/transfer/rdma/fake_verbs.hpp): a
// storage node and a requester that reach each other only through the rdma transport put and get
// through an in-process master, with the bytes checked; a NIC that goes down mid-run leaves every put
// readable through the other; protocol "rdma" derives its transports and, without a usable NIC,
// refuses to start instead of failing every transfer later. Real NICs: test/transfer/rdma/rdma_hw_test.
#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "client_util.hpp"
#include "transfer/peer_util.hpp"
#include "transfer/rdma/fake_verbs.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/store/client.hpp"
#include "yutu/store/master_state.hpp"

using namespace std::chrono_literals;
using yutu::errc;
using yutu::te_errc;
using yutu::store::client;
using yutu::store::client_config;
using yutu::store::master_config;
using yutu::store::master_state;
using yutu::test::fake_fabric;
using yutu::test::buffer;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;
using yutu::test::kib;
using yutu::test::mib;
using yutu::test::quiet_master;

namespace {

std::shared_ptr<fake_fabric> two_nics() {
  return std::make_shared<fake_fabric>(std::vector<fake_fabric::device_spec>{
      {"fake0", yutu::transfer::rdma::mtu::m4096, 1ull << 40, true},
      {"fake1", yutu::transfer::rdma::mtu::m4096, 1ull << 40, true}});
}

// A client whose engine speaks only rdma (in one process local and shm would carry everything).
client_config rdma_config(std::shared_ptr<fake_fabric> fab, std::uint64_t memory) {
  client_config c;
  c.protocol = "rdma";
  c.transports = {"rdma"};
  c.global_segment_size = memory;
  c.transfer_deadline = 10s;
  c.engine_threads = 2;
  c.engine.rdma.verbs = std::move(fab);
  c.engine.rdma.sysfs_root = "/nonexistent";  // no topology: every NIC serves every buffer
  c.engine.rdma.op_timeout = 300ms;
  c.engine.rdma.retry.max_retries = 4;
  c.engine.rdma.retry.error_threshold = 3;
  return c;
}

}  // namespace

TEST_CASE("store over rdma: puts and gets between a node and a requester move through the NICs, bytes intact") {
  auto fab = two_nics();
  master_state m(quiet_master());
  {
    auto node = client::create(rdma_config(fab, 64 * mib), m);
    REQUIRE(node);
    auto req = client::create(rdma_config(fab, 0), m);
    REQUIRE(req);
    REQUIRE((*node)->segments().size() == 1);
    CHECK((*node)->segments()[0].transport == "rdma");
    CHECK((*req)->engine().usable("rdma"));
    CHECK_FALSE((*req)->engine().usable("tcp"));  // not offered

    yutu::io::reactor r;
    // A copying put and get of more than one RDMA slice (64 KiB) and not a multiple of it.
    std::vector<std::byte> v(1 * mib + 4321);
    fill_pattern(v.data(), v.size(), 11);
    REQUIRE(r.block_on((*req)->put("one", v)));
    auto got = r.block_on((*req)->get("one"));
    REQUIRE(got);
    CHECK(fnv1a(got->data(), got->size()) == fnv1a(v.data(), v.size()));

    // Zero copy from and into registered memory, a batch of 8.
    constexpr std::size_t n = 8, each = 200 * kib;
    buffer src(n * each), dst(n * each);
    fill_pattern(src.p, src.n, 12);
    REQUIRE((*req)->register_buffer(src.p, src.n));
    REQUIRE((*req)->register_buffer(dst.p, dst.n));
    std::vector<std::string> keys;
    std::vector<const void*> srcs;
    std::vector<void*> dsts;
    for (std::size_t i = 0; i < n; ++i) {
      keys.push_back("b" + std::to_string(i));
      srcs.push_back(src.p + i * each);
      dsts.push_back(dst.p + i * each);
    }
    std::vector<std::uint64_t> sizes(n, each);
    for (auto& res : r.block_on((*req)->batch_put_from(keys, srcs, sizes))) CHECK(res);
    for (auto& res : r.block_on((*req)->batch_get_into(keys, dsts, sizes))) {
      REQUIRE(res);
      CHECK(*res == each);
    }
    CHECK(fnv1a(dst.p, dst.n) == fnv1a(src.p, src.n));

    const auto& rc = (*req)->engine().counters("rdma");
    CHECK(rc.requests >= 2 + 2 * n);
    CHECK(rc.bytes >= 2 * (v.size() + n * each));
    CHECK(fab->device_stats("fake0").bytes + fab->device_stats("fake1").bytes >= 2 * (v.size() + n * each));

    // One NIC goes down: the transport retries the slices on the other, and every put reads back.
    fab->set_down("fake0", true);
    for (int i = 0; i < 4; ++i) {
      std::vector<std::byte> w(300 * kib + static_cast<std::size_t>(i));
      fill_pattern(w.data(), w.size(), 20 + static_cast<unsigned>(i));
      const std::string k = "after-down-" + std::to_string(i);
      REQUIRE(r.block_on((*req)->put(k, w)));
      auto back = r.block_on((*req)->get(k));
      REQUIRE(back);
      CHECK(fnv1a(back->data(), back->size()) == fnv1a(w.data(), w.size()));
    }
    CHECK(fab->device_stats("fake1").completed_ok > 0);
    CHECK((*req)->unregister_buffer(src.p));
    CHECK((*req)->unregister_buffer(dst.p));
  }
  CHECK(fab->live_objects() == 0);  // both engines released every verbs object
}

TEST_CASE("store over rdma: protocol rdma derives local, shm and rdma, and refuses to start without a usable NIC") {
  master_state m(quiet_master());
  SUBCASE("with a NIC") {
    auto c = rdma_config(two_nics(), 0);
    c.transports.clear();
    auto cl = client::create(c, m);
    REQUIRE(cl);
    CHECK((*cl)->engine().config().transports == std::vector<std::string>{"local", "shm", "rdma"});
    CHECK((*cl)->engine().usable("rdma"));
  }
  SUBCASE("no device, or none of the NICs asked for") {
    auto c = rdma_config(std::make_shared<fake_fabric>(std::vector<fake_fabric::device_spec>{}), 16 * mib);
    c.transports.clear();
    auto cl = client::create(c, m);
    REQUIRE_FALSE(cl);
    CHECK(cl.error() == te_errc::device_not_found);

    auto named = rdma_config(two_nics(), 16 * mib);
    named.engine.rdma.devices = {"mlx5_9"};
    auto cn = client::create(named, m);
    REQUIRE_FALSE(cn);
    CHECK(cn.error() == te_errc::device_not_found);
    CHECK(m.metrics().segment_count == 0);  // nothing was mounted
  }
  SUBCASE("with tcp listed too, tcp carries what rdma cannot") {
    auto c = rdma_config(std::make_shared<fake_fabric>(std::vector<fake_fabric::device_spec>{}), 0);
    c.transports = {"local", "shm", "rdma", "tcp"};
    auto cl = client::create(c, m);
    REQUIRE(cl);
    CHECK_FALSE((*cl)->engine().usable("rdma"));
    CHECK((*cl)->engine().usable("tcp"));
  }
  SUBCASE("an unknown protocol") {
    client_config c;
    c.protocol = "udp";
    auto cl = client::create(c, m);
    REQUIRE_FALSE(cl);
    CHECK(cl.error() == errc::invalid_params);
  }
}

TEST_CASE("store over rdma: the copying forms share a small staging area, waiting for it, and say when a value cannot fit") {
  auto fab = two_nics();
  master_state m(quiet_master());
  auto node = client::create(rdma_config(fab, 64 * mib), m);
  REQUIRE(node);
  auto rc = rdma_config(fab, 0);
  rc.staging_buffer_size = 256 * kib;
  auto req = client::create(rc, m);
  REQUIRE(req);

  // Eight puts of 100 KiB at once, two fitting in the area at a time: all complete, each its own bytes.
  constexpr int n = 8;
  std::vector<std::vector<std::byte>> vals(n);
  std::vector<yutu::task<yutu::result<void>>> puts;
  for (int i = 0; i < n; ++i) {
    vals[static_cast<std::size_t>(i)].resize(100 * kib + static_cast<std::size_t>(i));
    fill_pattern(vals[static_cast<std::size_t>(i)].data(), vals[static_cast<std::size_t>(i)].size(), 40 + static_cast<unsigned>(i));
    puts.push_back((*req)->put("s" + std::to_string(i), vals[static_cast<std::size_t>(i)]));
  }
  for (auto& r : yutu::sync_wait(yutu::when_all(std::move(puts)))) CHECK(r);
  std::vector<std::string> keys;
  for (int i = 0; i < n; ++i) keys.push_back("s" + std::to_string(i));
  // batch_get of all eight needs 800 KiB of staging at once: more than the area.
  for (auto& r : yutu::sync_wait((*req)->batch_get(keys))) CHECK(r.error() == errc::buffer_overflow);
  for (int i = 0; i < n; ++i) {
    auto got = yutu::sync_wait((*req)->get(keys[static_cast<std::size_t>(i)]));
    REQUIRE(got);
    CHECK(*got == vals[static_cast<std::size_t>(i)]);
  }
  auto two = yutu::sync_wait((*req)->batch_get(std::span(keys).first(2)));
  REQUIRE(two.size() == 2);
  CHECK(two[1].value() == vals[1]);

  // A value larger than the area: a typed error, nothing stored; put_from with registered memory works.
  std::vector<std::byte> big(1 * mib);
  fill_pattern(big.data(), big.size(), 60);
  auto r = yutu::sync_wait((*req)->put("big", big));
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::buffer_overflow);
  CHECK_FALSE(yutu::sync_wait((*req)->exist("big")).value());
  REQUIRE((*req)->register_buffer(big.data(), big.size()));
  REQUIRE(yutu::sync_wait((*req)->put_from("big", big.data(), big.size())));
  CHECK(yutu::sync_wait((*req)->get_size("big")).value() == big.size());
  REQUIRE((*req)->unregister_buffer(big.data()));

  // Without staging, the copying forms cannot reach the node over rdma: typed, and nothing is left.
  auto nc = rdma_config(fab, 0);
  nc.staging_buffer_size = 0;
  auto bare = client::create(nc, m);
  REQUIRE(bare);
  auto nr = yutu::sync_wait((*bare)->put("bare", vals[0]));
  REQUIRE_FALSE(nr);
  CHECK(nr.error() == te_errc::no_transport);
  CHECK_FALSE(yutu::sync_wait((*bare)->exist("bare")).value());
}
