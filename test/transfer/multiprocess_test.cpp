// Two engines in two processes on loopback: tcp and shm, both opcodes, 1 B to 1 GiB, fallback from
// shm to tcp, a target killed mid-batch, a target restarted on the same address, and the background
// mapping of a peer's shm memory.
#include <doctest/doctest.h>

#include <nlohmann/json.hpp>

#include <sys/mman.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "peer_util.hpp"
#include "smaps.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/transfer/engine.hpp"

using namespace yutu::transfer;
using yutu::te_errc;
using yutu::test::child_peer;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;

namespace {

std::string peer_exe() {
  const char* p = std::getenv("YUTU_TEST_PEER");
  return p ? p : "";
}

struct hello {
  std::string segment;
  std::uint64_t buffer = 0, length = 0, incarnation = 0;
  int port = 0;
};
hello parse_hello(const std::string& line) {
  auto j = nlohmann::json::parse(line);
  return {j["segment"], j["buffer"], j["length"], j["incarnation"], j["port"]};
}

std::unique_ptr<engine> initiator(std::vector<std::string> transports) {
  engine_config c;
  c.metadata = "P2PHANDSHAKE";
  c.transports = std::move(transports);
  c.batch_deadline = std::chrono::milliseconds(20'000);
  auto e = engine::create(c);
  REQUIRE(e);
  return std::move(*e);
}

struct heap_buf {
  std::byte* p;
  explicit heap_buf(std::size_t n) : p(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {}
  ~heap_buf() { std::free(p); }
};

// Bytes of this process's memfd mappings named "yutu-shm" that its page tables map. The initiators
// here register heap memory only, so these are the peers' buffers mapped by shm.
std::size_t mapped_peer_shm() {
  return yutu::test::mapped_rss(
      [](unsigned long, const char* line) { return std::strstr(line, "memfd:yutu-shm") != nullptr; });
}

void round_trip(engine& init, segment_id seg, child_peer& peer, const hello& h, std::size_t len, std::size_t off,
                heap_buf& src, heap_buf& dst) {
  CAPTURE(len);
  CAPTURE(off);
  fill_pattern(src.p + 1, len, static_cast<unsigned>(len * 7 + off));
  auto w = yutu::sync_wait(init.write(seg, src.p + 1, h.buffer + off, len));
  REQUIRE(w);
  auto sum = peer.command("sum " + std::to_string(off) + " " + std::to_string(len));
  CHECK(sum == std::to_string(fnv1a(src.p + 1, len)));
  std::memset(dst.p, 0, 64);
  auto r = yutu::sync_wait(init.read(seg, dst.p + 3, h.buffer + off, len));
  REQUIRE(r);
  CHECK(fnv1a(dst.p + 3, len) == fnv1a(src.p + 1, len));
}

}  // namespace

TEST_CASE("multi-process: tcp and shm, read and write, 1 B to 1 GiB") {
  if (peer_exe().empty()) {
    MESSAGE("YUTU_TEST_PEER is not set (run through meson test): skipped");
    return;
  }
  for (std::string transport : {"tcp", "shm"}) {
    CAPTURE(transport);
    const std::size_t size = (1ull << 30) + 64;
    child_peer peer;
    std::vector<std::string> args{"--transports", transport == "shm" ? "shm,tcp" : "tcp", "--size",
                                  std::to_string(size)};
    if (transport == "shm") args.push_back("--shared");
    REQUIRE(peer.start(peer_exe(), args));
    auto h = parse_hello(peer.hello());
    auto init = initiator(transport == "shm" ? std::vector<std::string>{"shm", "tcp"} : std::vector<std::string>{"tcp"});
    auto seg = yutu::sync_wait(init->open_segment(h.segment));
    REQUIRE(seg);
    heap_buf src(size + 16), dst(size + 16);
    for (std::size_t len : {std::size_t(1), std::size_t(3), std::size_t(4096), std::size_t(4097), std::size_t(65535),
                            std::size_t(1 << 20) + 1, std::size_t(17 << 20) + 11})
      round_trip(*init, *seg, peer, h, len, 5, src, dst);
    round_trip(*init, *seg, peer, h, std::size_t(1) << 30, 0, src, dst);
    CHECK(init->counters(transport).requests >= 16);
    CHECK(init->counters(transport == "shm" ? "tcp" : "shm").requests == 0);
    CHECK(peer.exit_cleanly() == 0);
  }
}

TEST_CASE("multi-process: shm that cannot be mapped falls back to tcp, and it shows in the counters") {
  if (peer_exe().empty()) return;
  child_peer peer;
  REQUIRE(peer.start(peer_exe(), {"--transports", "shm,tcp", "--size", "1048576", "--shared", "--close-memfd"}));
  auto h = parse_hello(peer.hello());
  auto init = initiator({"shm", "tcp"});
  auto seg = yutu::sync_wait(init->open_segment(h.segment));
  REQUIRE(seg);
  heap_buf src(1 << 20), dst(1 << 20);
  round_trip(*init, *seg, peer, h, 1000, 0, src, dst);
  CHECK(init->counters("shm").fallbacks_from >= 1);
  CHECK(init->counters("tcp").requests == 2);
  CHECK(init->metrics_text().find("yutu_transfer_fallbacks_total") != std::string::npos);
}

TEST_CASE("multi-process: the target killed mid-batch fails the batch typed, without a hang") {
  if (peer_exe().empty()) return;
  child_peer peer;
  const std::size_t size = 256 << 20;
  REQUIRE(peer.start(peer_exe(), {"--transports", "tcp", "--size", std::to_string(size)}));
  auto h = parse_hello(peer.hello());
  auto init = initiator({"tcp"});
  auto seg = yutu::sync_wait(init->open_segment(h.segment));
  REQUIRE(seg);
  heap_buf src(size);
  std::vector<transfer_request> batch;
  for (int i = 0; i < 16; ++i) batch.push_back({opcode::write, src.p, *seg, h.buffer, size});
  std::thread killer([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    peer.kill_now();
  });
  auto t0 = std::chrono::steady_clock::now();
  auto res = yutu::sync_wait(init->transfer(batch));
  killer.join();
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(15));
  CHECK_FALSE(res.ok());
  for (auto& e : res.errors)
    if (e) CHECK((e == te_errc::peer_unreachable || e == te_errc::stale_segment || e == yutu::errc::protocol_error));
  // Afterwards the dead peer keeps failing fast and typed.
  auto r = yutu::sync_wait(init->write(*seg, src.p, h.buffer, 64));
  REQUIRE_FALSE(r);
}

TEST_CASE("multi-process: an shm target that exits is noticed: writes into its memory fail typed") {
  if (peer_exe().empty()) return;
  child_peer peer;
  REQUIRE(peer.start(peer_exe(), {"--transports", "shm,tcp", "--size", "1048576", "--shared"}));
  auto h = parse_hello(peer.hello());
  auto init = initiator({"shm"});
  auto seg = yutu::sync_wait(init->open_segment(h.segment));
  REQUIRE(seg);
  heap_buf src(65536);
  fill_pattern(src.p, 65536, 5);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, h.buffer, 65536)));
  CHECK(peer.command("sum 0 65536") == std::to_string(fnv1a(src.p, 65536)));
  CHECK(mapped_peer_shm() > 0);
  peer.kill_now();
  // Its memory outlives it only while we map it: the exit watch lets go of it by itself, with no
  // transfer to this peer (a node that exited may never be written to again).
  auto until = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (mapped_peer_shm() > 0 && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  CHECK(mapped_peer_shm() == 0);
  // The mapping of the dead process's memory stays valid, so only the exit watch stands between a
  // write and silent loss. It runs on an engine reactor: allow it a moment, never more.
  auto t0 = std::chrono::steady_clock::now();
  yutu::result<void> w;
  do {
    w = yutu::sync_wait(init->write(*seg, src.p, h.buffer, 65536));
    if (w) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  } while (w && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(5));
  REQUIRE_FALSE(w);
  CHECK(w.error() == te_errc::peer_unreachable);
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(500));
  auto again = yutu::sync_wait(init->write(*seg, src.p, h.buffer, 64));
  REQUIRE_FALSE(again);
  // Its memory outlives it only in our mapping: gone once a transfer has seen the exit.
  CHECK(mapped_peer_shm() == 0);
}

TEST_CASE("multi-process: a restarted target is reconnected; stale addresses never reach the new process") {
  if (peer_exe().empty()) return;
  child_peer first;
  REQUIRE(first.start(peer_exe(), {"--transports", "tcp", "--size", "65536"}));
  auto h1 = parse_hello(first.hello());
  auto init = initiator({"tcp"});
  auto seg = yutu::sync_wait(init->open_segment(h1.segment));
  REQUIRE(seg);
  heap_buf src(65536), dst(65536);
  fill_pattern(src.p, 65536, 77);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, h1.buffer, 4096)));
  first.kill_now();

  child_peer second;
  REQUIRE(second.start(peer_exe(), {"--transports", "tcp", "--size", "65536", "--port", std::to_string(h1.port)}));
  auto h2 = parse_hello(second.hello());
  REQUIRE(h2.segment == h1.segment);
  CHECK(h2.incarnation != h1.incarnation);
  // The old incarnation's addresses are refused, whatever the new process has there.
  auto stale = yutu::sync_wait(init->write(*seg, src.p, h1.buffer, 4096));
  REQUIRE_FALSE(stale);
  CHECK(stale.error() == te_errc::stale_segment);
  // The descriptor was refreshed: the new process's buffer is reachable through the same handle.
  auto d = init->segment_descriptor(*seg);
  REQUIRE(d);
  CHECK(d->incarnation == h2.incarnation);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, h2.buffer, 4096)));
  CHECK(second.command("sum 0 4096") == std::to_string(fnv1a(src.p, 4096)));
}

TEST_CASE("multi-process: a peer's shm memory is mapped in the background once first used, not with shm_prefault off") {
  if (peer_exe().empty()) {
    MESSAGE("YUTU_TEST_PEER is not set (run through meson test): skipped");
    return;
  }
  constexpr std::size_t size = 64 << 20;
  bool kernel_populates = false;  // MADV_POPULATE_READ: Linux 5.14; before it the pages fault in as written
#ifdef MADV_POPULATE_READ
  {
    void* probe = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    REQUIRE(probe != MAP_FAILED);
    kernel_populates = ::madvise(probe, 4096, MADV_POPULATE_READ) == 0;
    ::munmap(probe, 4096);
  }
#endif
  if (!kernel_populates) MESSAGE("this kernel has no MADV_POPULATE_READ: only the option-off half runs");
  for (bool prefault : {true, false}) {
    if (prefault && !kernel_populates) continue;
    CAPTURE(prefault);
    child_peer peer;
    REQUIRE(peer.start(peer_exe(), {"--transports", "shm,tcp", "--size", std::to_string(size), "--shared"}));
    auto h = parse_hello(peer.hello());
    engine_config c;
    c.metadata = "P2PHANDSHAKE";
    c.transports = {"shm", "tcp"};
    c.shm_prefault = prefault;
    auto init = engine::create(c);
    REQUIRE(init);
    auto seg = yutu::sync_wait((*init)->open_segment(h.segment));
    REQUIRE(seg);
    REQUIRE(mapped_peer_shm() == 0);
    heap_buf src(4096);
    fill_pattern(src.p, 4096, 5);
    REQUIRE(yutu::sync_wait((*init)->write(*seg, src.p, h.buffer, 4096)));
    CHECK((*init)->counters("shm").requests == 1);
    // One write touched one page (and the kernel may map a few around it); the populate maps the rest.
    auto until = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (prefault && mapped_peer_shm() < size && std::chrono::steady_clock::now() < until)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (!prefault) std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (prefault)
      CHECK(mapped_peer_shm() >= size);
    else
      CHECK(mapped_peer_shm() < (1u << 20));
    CHECK(peer.command("sum 0 4096") == std::to_string(fnv1a(src.p, 4096)));
    init->reset();
    CHECK(peer.exit_cleanly() == 0);
  }
}
