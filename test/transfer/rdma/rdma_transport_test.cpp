// The RDMA transport end to end over the software verbs double: two engines in one process, WRITE
// and READ verified by checksum, striping over NICs, split registrations, MTU negotiation, failover
// after injected completion errors, a stalled NIC, a request that fails typed after its retries, and
// no verbs object left behind. Also the double's own key and state checks.
#include <doctest/doctest.h>

#include <poll.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <thread>

#include "../peer_util.hpp"
#include "fake_verbs.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/transfer/engine.hpp"

using namespace yutu::transfer;
using namespace yutu::transfer::rdma;
using yutu::te_errc;
using yutu::test::fake_fabric;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;

namespace {

struct aligned_buf {
  std::byte* p;
  std::size_t n;
  explicit aligned_buf(std::size_t size)
      : p(static_cast<std::byte*>(std::aligned_alloc(4096, (size + 4095) / 4096 * 4096))), n(size) {}
  ~aligned_buf() { std::free(p); }
  std::uint64_t addr(std::size_t off = 0) const { return reinterpret_cast<std::uint64_t>(p + off); }
};

std::shared_ptr<fake_fabric> two_nics() {
  return std::make_shared<fake_fabric>(std::vector<fake_fabric::device_spec>{
      {"fake0", mtu::m4096, 1ull << 40, true}, {"fake1", mtu::m1024, 1ull << 40, true}});
}

std::unique_ptr<engine> make_engine(std::shared_ptr<fake_fabric> fab, std::string name,
                                    std::vector<std::string> devices = {}, std::uint64_t max_mr = 0,
                                    std::function<void(engine_config&)> tweak = {}) {
  engine_config c;
  c.transports = {"rdma"};
  c.local_segment_name = std::move(name);
  c.threads = 2;
  c.batch_deadline = std::chrono::milliseconds(10'000);
  c.rdma.verbs = std::move(fab);
  c.rdma.devices = std::move(devices);
  c.rdma.max_mr_size = max_mr;
  c.rdma.op_timeout = std::chrono::milliseconds(300);
  c.rdma.retry.max_retries = 4;
  c.rdma.retry.error_threshold = 3;
  c.rdma.sysfs_root = "/nonexistent";
  if (tweak) tweak(c);
  auto e = engine::create(c);
  REQUIRE(e.has_value());
  return std::move(*e);
}

}  // namespace

TEST_CASE("fake verbs: keys, access flags, bounds and the RC state machine are enforced") {
  fake_fabric f({{"d0", mtu::m4096, 1ull << 40, true}});
  auto ctx = *f.open_device("d0");
  auto pd = *f.alloc_pd(ctx);
  auto ch = *f.create_comp_channel(ctx);
  auto cq = *f.create_cq(ctx, 64, ch);
  std::vector<std::byte> a(4096), b(4096);
  auto ma = *f.reg_mr(pd, a.data(), a.size(), access_local_write);
  auto mb = *f.reg_mr(pd, b.data(), b.size(), access_local_write | access_remote_read);  // no remote write
  auto q1 = *f.create_rc_qp(pd, cq, cq, {});
  auto q2 = *f.create_rc_qp(pd, cq, cq, {});
  qp_local l;
  qp_remote r1{f.qp_num(q2), 0, 0, {}, mtu::m1024, true}, r2{f.qp_num(q1), 0, 0, {}, mtu::m1024, true};
  CHECK(!f.modify_to_rtr(q1, l, r1));  // RESET -> RTR is not a transition
  CHECK(!f.post_send(q1, std::vector<send_wr>{send_wr{}}));  // not RTS
  REQUIRE(f.modify_to_init(q1, l));
  REQUIRE(f.modify_to_init(q2, l));
  REQUIRE(f.modify_to_rtr(q1, l, r1));
  REQUIRE(f.modify_to_rtr(q2, l, r2));
  REQUIRE(f.modify_to_rts(q1, l));
  REQUIRE(f.modify_to_rts(q2, l));
  REQUIRE(f.req_notify_cq(cq));
  fill_pattern(b.data(), b.size(), 5);
  // READ b -> a: allowed.
  send_wr rd{1, wr_opcode::rdma_read, reinterpret_cast<std::uint64_t>(a.data()), 4096, ma.lkey,
             reinterpret_cast<std::uint64_t>(b.data()), mb.rkey, true};
  REQUIRE(f.post_send(q1, std::vector<send_wr>{rd}));
  pollfd pf{f.channel_fd(ch), POLLIN, 0};
  CHECK(::poll(&pf, 1, 0) == 1);  // the armed CQ raised an event on the real fd
  auto ev = f.get_cq_event(ch);
  REQUIRE(ev);
  f.ack_cq_events(*ev, 1);
  std::array<work_completion, 4> wc;
  REQUIRE(f.poll_cq(cq, wc) == 1);
  CHECK(wc[0].status == wc_status::success);
  CHECK(fnv1a(a.data(), 4096) == fnv1a(b.data(), 4096));
  // Unsignalled success: no completion.
  rd.signaled = false;
  REQUIRE(f.post_send(q1, std::vector<send_wr>{rd}));
  CHECK(f.poll_cq(cq, wc) == 0);
  // WRITE into b: b has no remote write access.
  send_wr wr{2, wr_opcode::rdma_write, reinterpret_cast<std::uint64_t>(a.data()), 16, ma.lkey,
             reinterpret_cast<std::uint64_t>(b.data()), mb.rkey, false};
  REQUIRE(f.post_send(q1, std::vector<send_wr>{wr}));
  REQUIRE(f.poll_cq(cq, wc) == 1);
  CHECK(wc[0].status == wc_status::rem_access_err);
  CHECK(f.query_qp_state(q1).value() == qp_state::error);
  // The QP is in error now: everything posted is flushed, signalled or not.
  REQUIRE(f.post_send(q1, std::vector<send_wr>{rd, rd}));
  CHECK(f.poll_cq(cq, wc) == 2);
  CHECK(wc[0].status == wc_status::wr_flush_err);
  // Out of bounds and a wrong rkey, on a fresh pair.
  f.destroy_qp(q1);
  f.destroy_qp(q2);
  CHECK(f.live_qps() == 0);
  f.dereg_mr(ma.mr);
  f.dereg_mr(mb.mr);
  f.destroy_cq(cq);
  f.destroy_comp_channel(ch);
  f.dealloc_pd(pd);
  f.close_device(ctx);
  CHECK(f.live_objects() == 0);
}

TEST_CASE("rdma over the double: WRITE and READ verified, striped over both NICs, split registrations") {
  auto fab = two_nics();
  {
    // 1 MiB memory regions: an 8 MiB buffer is 8 regions, and no slice may cross one.
    auto target = make_engine(fab, "rdma-target-1", {}, 1 << 20);
    auto init = make_engine(fab, "rdma-init-1", {}, 1 << 20);
    const std::size_t n = 8 << 20;
    aligned_buf tb(n), src(n), dst(n);
    REQUIRE(target->register_memory(tb.p, tb.n));
    REQUIRE(init->register_memory(src.p, src.n));
    REQUIRE(init->register_memory(dst.p, dst.n));
    auto seg = yutu::sync_wait(init->open_segment("rdma-target-1"));
    REQUIRE(seg);
    auto d = init->segment_descriptor(*seg);
    REQUIRE(d);
    REQUIRE(d->extensions.count("rdma"));
    for (std::size_t len : {std::size_t(1), std::size_t(4099), std::size_t(65537), std::size_t(1 << 20) + 5,
                            std::size_t(5 << 20) + 3}) {
      CAPTURE(len);
      const std::size_t off = 13, soff = 5;
      fill_pattern(src.p + soff, len, static_cast<unsigned>(len));
      auto w = yutu::sync_wait(init->write(*seg, src.p + soff, tb.addr(off), len));
      REQUIRE_MESSAGE(w, (w ? std::string() : w.error().message()));
      CHECK(fnv1a(tb.p + off, len) == fnv1a(src.p + soff, len));
      std::memset(dst.p, 0, len + 16);
      auto r = yutu::sync_wait(init->read(*seg, dst.p + 3, tb.addr(off), len));
      REQUIRE(r);
      CHECK(fnv1a(dst.p + 3, len) == fnv1a(src.p + soff, len));
    }
    CHECK(init->counters("rdma").requests == 10);
    CHECK(init->counters("rdma").failures == 0);
    // Both NICs carried work requests (striping), and batching put several on one doorbell.
    auto s0 = fab->device_stats("fake0"), s1 = fab->device_stats("fake1");
    CHECK(s0.bytes > 0);
    CHECK(s1.bytes > 0);
    CHECK(s0.posted > s0.post_calls);
    CHECK(!fab->cq_overflowed());
    // A source outside registered memory: rdma cannot serve it and no other transport is offered.
    std::vector<std::byte> unreg(64);
    auto u = yutu::sync_wait(init->write(*seg, unreg.data(), tb.addr(0), 64));
    CHECK(!u);
  }
  // Both engines gone: every context, PD, MR, CQ, channel and QP was released.
  CHECK(fab->live_objects() == 0);
}

TEST_CASE("rdma: GPU-located buffers fall back to ordinary registration where dma-buf is unavailable") {
  // The double has no dma-buf (and this machine no CUDA driver): cuda:0 memory is registered with
  // reg_mr and moves like any other.
  auto fab = two_nics();
  auto target = make_engine(fab, "rdma-target-gpu");
  auto init = make_engine(fab, "rdma-init-gpu");
  aligned_buf tb(1 << 20), src(1 << 20);
  REQUIRE(target->register_memory(tb.p, tb.n, "cuda:0"));
  REQUIRE(init->register_memory(src.p, src.n, "cuda:0"));
  auto seg = yutu::sync_wait(init->open_segment("rdma-target-gpu"));
  REQUIRE(seg);
  fill_pattern(src.p, src.n, 11);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), src.n)));
  CHECK(fnv1a(tb.p, tb.n) == fnv1a(src.p, src.n));
}

TEST_CASE("rdma: the path MTU is the smaller of both NICs'") {
  auto fab = two_nics();
  auto target = make_engine(fab, "rdma-target-mtu", {"fake1"});  // 1024
  auto init = make_engine(fab, "rdma-init-mtu", {"fake0"});      // 4096
  aligned_buf tb(1 << 16), src(1 << 16);
  REQUIRE(target->register_memory(tb.p, tb.n));
  REQUIRE(init->register_memory(src.p, src.n));
  auto seg = yutu::sync_wait(init->open_segment("rdma-target-mtu"));
  REQUIRE(seg);
  fill_pattern(src.p, src.n, 3);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), src.n)));
  CHECK(fnv1a(tb.p, tb.n) == fnv1a(src.p, src.n));
  CHECK(fab->last_rtr_mtu() == mtu::m1024);
}

TEST_CASE("rdma failover: injected completion errors, a NIC down, a stalled NIC; then a typed failure") {
  auto fab = two_nics();
  {
    auto target = make_engine(fab, "rdma-target-2");
    auto init = make_engine(fab, "rdma-init-2");
    const std::size_t n = 4 << 20;
    aligned_buf tb(n), src(n), dst(n);
    REQUIRE(target->register_memory(tb.p, tb.n));
    REQUIRE(init->register_memory(src.p, src.n));
    REQUIRE(init->register_memory(dst.p, dst.n));
    auto seg = yutu::sync_wait(init->open_segment("rdma-target-2"));
    REQUIRE(seg);
    auto round = [&](unsigned seed) {
      fill_pattern(src.p, n, seed);
      auto w = yutu::sync_wait(init->write(*seg, src.p, tb.addr(), n));
      REQUIRE(w);
      REQUIRE(fnv1a(tb.p, n) == fnv1a(src.p, n));
      std::memset(dst.p, 0, n);
      auto r = yutu::sync_wait(init->read(*seg, dst.p, tb.addr(), n));
      REQUIRE(r);
      REQUIRE(fnv1a(dst.p, n) == fnv1a(src.p, n));
    };
    round(1);
    const auto qps_before = fab->qps_created();

    SUBCASE("completion errors on one NIC are retried elsewhere and the endpoint is recreated") {
      fab->fail_next("fake0", 3, wc_status::retry_exc_err);
      round(2);
      CHECK(fab->device_stats("fake0").completed_err >= 1);
      round(3);  // the failed endpoints reconnect: new queue pairs
      CHECK(fab->qps_created() > qps_before);
    }
    SUBCASE("a NIC down: everything moves to the other one") {
      fab->set_down("fake1", true);
      const auto ok0 = fab->device_stats("fake0").completed_ok;
      round(4);
      round(5);
      CHECK(fab->device_stats("fake0").completed_ok > ok0);
      fab->set_down("fake1", false);
      round(6);
    }
    SUBCASE("a stalled NIC: the work-request deadline flushes it and the slices go elsewhere") {
      fab->set_stalled("fake1", true);
      const auto t0 = std::chrono::steady_clock::now();
      round(7);
      CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(8));
      fab->set_stalled("fake1", false);
      round(8);
    }
    SUBCASE("every NIC down: the request fails with retries_exhausted, well within its deadline") {
      fab->set_down("fake0", true);
      fab->set_down("fake1", true);
      const auto t0 = std::chrono::steady_clock::now();
      auto w = yutu::sync_wait(init->write(*seg, src.p, tb.addr(), n));
      REQUIRE(!w);
      CHECK(w.error() == te_errc::retries_exhausted);
      CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
      CHECK(init->counters("rdma").failures >= 1);
    }
    CHECK(!fab->cq_overflowed());
  }
  CHECK(fab->live_objects() == 0);
}

TEST_CASE("rdma falls back to tcp when every rail fails") {
  auto fab = two_nics();
  engine_config c;
  c.transports = {"rdma", "tcp"};
  c.threads = 2;
  c.rdma.verbs = fab;
  c.rdma.retry.max_retries = 2;
  c.rdma.sysfs_root = "/nonexistent";
  c.local_segment_name = "rdma-fb-target";
  auto target = engine::create(c);
  REQUIRE(target);
  c.local_segment_name = "rdma-fb-init";
  auto init = engine::create(c);
  REQUIRE(init);
  aligned_buf tb(1 << 20), src(1 << 20);
  REQUIRE((*target)->register_memory(tb.p, tb.n));
  REQUIRE((*init)->register_memory(src.p, src.n));
  auto seg = yutu::sync_wait((*init)->open_segment("rdma-fb-target"));
  REQUIRE(seg);
  fab->set_down("fake0", true);
  fab->set_down("fake1", true);
  fill_pattern(src.p, src.n, 9);
  REQUIRE(yutu::sync_wait((*init)->write(*seg, src.p, tb.addr(), src.n)));
  CHECK(fnv1a(tb.p, tb.n) == fnv1a(src.p, src.n));
  CHECK((*init)->counters("rdma").fallbacks_from == 1);
  CHECK((*init)->counters("tcp").requests == 1);
}

TEST_CASE("rdma: busy-poll mode and an endpoint cap of one (endpoints evicted and reconnected)") {
  auto fab = two_nics();
  {
    auto target = make_engine(fab, "rdma-target-cap");
    auto init = make_engine(fab, "rdma-init-cap", {}, 0, [](engine_config& c) {
      c.rdma.busy_poll = true;
      c.rdma.max_endpoints = 1;
    });
    const std::size_t n = 4 << 20;
    aligned_buf tb(n), src(n), dst(n);
    REQUIRE(target->register_memory(tb.p, tb.n));
    REQUIRE(init->register_memory(src.p, src.n));
    REQUIRE(init->register_memory(dst.p, dst.n));
    auto seg = yutu::sync_wait(init->open_segment("rdma-target-cap"));
    REQUIRE(seg);
    for (unsigned round = 0; round < 6; ++round) {
      CAPTURE(round);
      fill_pattern(src.p, n, round);
      REQUIRE(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), n)));
      REQUIRE(fnv1a(tb.p, n) == fnv1a(src.p, n));
      REQUIRE(yutu::sync_wait(init->read(*seg, dst.p, tb.addr(), n)));
      REQUIRE(fnv1a(dst.p, n) == fnv1a(src.p, n));
    }
    // Two rails share a cap of one endpoint: they kept replacing each other.
    CHECK(fab->qps_created() > 8);
    // Bounded: the initiator's live endpoint and those still draining, and the target's answering
    // sets (one per initiator NIC pair, replaced on reconnect).
    CHECK(fab->live_qps() <= 12);
    CHECK(init->counters("rdma").failures == 0);
  }
  CHECK(fab->live_objects() == 0);
}

TEST_CASE("rdma: a failing rail is paused (no more attempts on it), then probed and used again") {
  auto fab = two_nics();
  {
    auto target = make_engine(fab, "rdma-target-pause");
    auto init = make_engine(fab, "rdma-init-pause", {}, 0, [](engine_config& c) {
      c.rdma.retry.error_threshold = 2;
      c.rdma.retry.pause = std::chrono::milliseconds(400);
      c.rdma.retry.error_window = std::chrono::milliseconds(60'000);
    });
    const std::size_t n = 2 << 20;
    aligned_buf tb(n), src(n);
    REQUIRE(target->register_memory(tb.p, tb.n));
    REQUIRE(init->register_memory(src.p, src.n));
    auto seg = yutu::sync_wait(init->open_segment("rdma-target-pause"));
    REQUIRE(seg);
    auto round = [&](unsigned seed) {
      fill_pattern(src.p, n, seed);
      REQUIRE(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), n)));
      REQUIRE(fnv1a(tb.p, n) == fnv1a(src.p, n));
    };
    auto errors = [&] { return fab->device_stats("fake0").completed_err + fab->device_stats("fake1").completed_err; };
    fab->set_down("fake0", true);
    for (unsigned i = 0; i < 4; ++i) round(i);  // enough failures to pause every rail through fake0
    const auto errs = errors();
    CHECK(errs > 0);
    const auto ok0 = fab->device_stats("fake0").completed_ok;
    for (unsigned i = 4; i < 10; ++i) round(i);
    // Paused rails are not tried: no new failures although fake0 is still down.
    CHECK(errors() == errs);
    fab->set_down("fake0", false);
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    for (unsigned i = 10; i < 16; ++i) round(i);
    // The pause ended, the probe succeeded: fake0 carries work requests again.
    CHECK(fab->device_stats("fake0").completed_ok > ok0);
    CHECK(errors() == errs);
  }
  CHECK(fab->live_objects() == 0);
}
