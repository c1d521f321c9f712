// The transfer engine within one process: registration rules, local and tcp paths between two
// engines, batches, deadlines, notifications, submit + poll, hostile frames, connection reuse.
#include <doctest/doctest.h>

#include <dirent.h>
#include <sys/socket.h>

#include <cstring>
#include <memory>
#include <random>
#include <stop_token>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "peer_util.hpp"
#include "smaps.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/transfer/detail/stream_copy.hpp"
#include "yutu/transfer/engine.hpp"
#include "yutu/transfer/wire.hpp"

using namespace yutu::transfer;
using yutu::te_errc;
using yutu::task;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;

namespace {

std::unique_ptr<engine> make_engine(std::vector<std::string> transports, std::string name = "") {
  engine_config c;
  c.transports = std::move(transports);
  c.local_segment_name = std::move(name);
  c.threads = 2;
  c.batch_deadline = std::chrono::milliseconds(5000);
  auto e = engine::create(c);
  REQUIRE(e.has_value());
  return std::move(*e);
}

struct aligned_buf {
  std::byte* p;
  std::size_t n;
  explicit aligned_buf(std::size_t size) : p(static_cast<std::byte*>(std::aligned_alloc(64, (size + 63) / 64 * 64))), n(size) {}
  ~aligned_buf() { std::free(p); }
  std::uint64_t addr(std::size_t off = 0) const { return reinterpret_cast<std::uint64_t>(p + off); }
};

int count_fds() {
  int n = 0;
  if (DIR* d = ::opendir("/proc/self/fd")) {
    while (::readdir(d)) ++n;
    ::closedir(d);
  }
  return n;
}

}  // namespace

TEST_CASE("registration rejects overlaps, empty ranges and unknown addresses") {
  auto e = make_engine({"local", "tcp"});
  aligned_buf b(1 << 16);
  CHECK(e->register_memory(b.p, b.n));
  auto r = e->register_memory(b.p + 100, 10);
  REQUIRE_FALSE(r);
  CHECK(r.error() == te_errc::address_overlapped);
  CHECK(e->register_memory(b.p + b.n - 1, 0).error() == te_errc::invalid_argument);
  CHECK(e->register_memory(b.p, 1, "gpu:7").error() == te_errc::invalid_argument);
  CHECK(e->unregister_memory(b.p + 1).error() == te_errc::address_not_registered);
  CHECK(e->unregister_memory(b.p));
  CHECK(e->register_memory(b.p + 100, 10));  // no longer overlapping anything
}

TEST_CASE("local transfers to self are bounds-checked memcpy") {
  auto e = make_engine({"local", "tcp"});
  aligned_buf target(1 << 20), src(1 << 20);
  REQUIRE(e->register_memory(target.p, target.n));
  fill_pattern(src.p, src.n, 3);
  auto seg = yutu::sync_wait(e->open_segment(e->segment_name()));
  REQUIRE(seg);
  CHECK(yutu::sync_wait(e->write(*seg, src.p + 1, target.addr(3), 1000)));
  CHECK(std::memcmp(target.p + 3, src.p + 1, 1000) == 0);
  // One byte past the end of the registered buffer.
  auto bad = yutu::sync_wait(e->write(*seg, src.p, target.addr(target.n - 10), 11));
  REQUIRE_FALSE(bad);
  CHECK(bad.error() == te_errc::address_not_registered);
  CHECK(e->counters("local").requests == 1);
}

TEST_CASE("streaming copies: every alignment and length, nothing written outside the range") {
  // Head (up to a 64-byte boundary), streaming stores over whole 64-byte lines, tail, at every split.
  constexpr std::size_t max_len = (1 << 20) + 300;
  aligned_buf src(max_len + 64), dst(max_len + 256);
  fill_pattern(src.p, src.n, 7);
  std::vector<std::size_t> lengths;
  for (std::size_t n = 0; n <= 520; ++n) lengths.push_back(n);
  for (std::size_t n : {4095ul, 4096ul, 65536ul, 65536ul + 77, std::size_t{1} << 20, max_len}) lengths.push_back(n);
  for (std::size_t dst_off : {0ul, 1ul, 31ul, 32ul, 63ul, 64ul, 100ul})
    for (std::size_t src_off : {0ul, 3ul, 32ul})
      for (std::size_t n : lengths) {
        if (n > 65536 && (src_off != 3 || dst_off % 31 != 0)) continue;  // large ones at a few offsets
        CAPTURE(dst_off);
        CAPTURE(src_off);
        CAPTURE(n);
        std::memset(dst.p, 0xEE, dst.n);
        yutu::transfer::detail::stream_copy(dst.p + dst_off, src.p + src_off, n);
        REQUIRE(std::memcmp(dst.p + dst_off, src.p + src_off, n) == 0);
        for (std::size_t i = 0; i < dst_off; ++i) REQUIRE(dst.p[i] == std::byte{0xEE});
        for (std::size_t i = dst_off + n; i < std::min(dst.n, dst_off + n + 200); ++i) REQUIRE(dst.p[i] == std::byte{0xEE});
      }
}

TEST_CASE("local writes above the streaming threshold, and overlapping ones, land exactly") {
  auto e = make_engine({"local", "tcp"});
  REQUIRE(e->config().nontemporal_write_threshold == 64u << 10);
  aligned_buf target(4 << 20), src(4 << 20);
  REQUIRE(e->register_memory(target.p, target.n));
  auto seg = yutu::sync_wait(e->open_segment(e->segment_name()));
  REQUIRE(seg);
  fill_pattern(src.p, src.n, 11);
  // 3 MiB from an odd source address to an odd target address: the streaming path.
  REQUIRE(yutu::sync_wait(e->write(*seg, src.p + 5, target.addr(9), 3 << 20)));
  CHECK(std::memcmp(target.p + 9, src.p + 5, 3 << 20) == 0);
  // Source and target in the same registered buffer, overlapping: memmove's result, both ways.
  fill_pattern(target.p, target.n, 12);
  std::vector<std::byte> expect(target.p, target.p + target.n);
  std::memmove(expect.data() + 100, expect.data(), 1 << 20);
  REQUIRE(yutu::sync_wait(e->write(*seg, target.p, target.addr(100), 1 << 20)));
  CHECK(std::memcmp(target.p, expect.data(), target.n) == 0);
  std::memmove(expect.data(), expect.data() + 4096, 1 << 20);
  REQUIRE(yutu::sync_wait(e->write(*seg, target.p + 4096, target.addr(0), 1 << 20)));
  CHECK(std::memcmp(target.p, expect.data(), target.n) == 0);
}

// Requests done on the spot on an engine thread take their peer and descriptor from that thread's
// cache and count in that thread's share of the counters: a descriptor that changed, a closed
// segment and the sums must all show through.
TEST_CASE("shm writes from every engine thread: cached peers follow new memory and closed segments; counters add up") {
  auto target = make_engine({"shm"}, "target-cache");
  auto init = make_engine({"shm"}, "init-cache");
  const std::size_t n = 1 << 20;
  auto a = target->allocate_shared(n);
  REQUIRE(a);
  auto* am = static_cast<std::byte*>(*a);
  auto seg = yutu::sync_wait(init->open_segment("target-cache"));
  REQUIRE(seg);
  aligned_buf src(n);
  REQUIRE(init->register_memory(src.p, src.n));
  std::uint64_t writes = 0, bytes = 0;
  auto write_check = [&](segment_id sg, std::byte* mem, unsigned seed, std::size_t len) {
    fill_pattern(src.p, len, seed);
    auto w = yutu::sync_wait(init->write(sg, src.p, reinterpret_cast<std::uint64_t>(mem), len));
    REQUIRE_MESSAGE(w, (w ? std::string() : w.error().message()));
    CHECK(fnv1a(mem, len) == fnv1a(src.p, len));
    ++writes;
    bytes += len;
  };
  // A target publishes the descriptor naming new memory in the background: until it has, the range
  // is unknown (a loaded machine once took longer than open_segment and one fetch again).
  auto wait_named = [&](segment_id sg, std::byte* mem) {
    bool named = false;
    for (int i = 0; i < 500 && !named; ++i) {
      named = yutu::sync_wait(init->write(sg, src.p, reinterpret_cast<std::uint64_t>(mem), 64)).has_value();
      if (!named) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    REQUIRE(named);
    ++writes;
    bytes += 64;
  };
  wait_named(*seg, am);
  // Plain-thread callers are spread over the engine's two threads: both caches fill.
  for (unsigned i = 0; i < 8; ++i) write_check(*seg, am, i, 4096 + i);

  // New memory at the target: the cached descriptors do not cover it; the write fetches the
  // descriptor again and every thread's cache follows.
  auto b = target->allocate_shared(n);
  REQUIRE(b);
  auto* bm = static_cast<std::byte*>(*b);
  wait_named(*seg, bm);
  for (unsigned i = 0; i < 8; ++i) {
    write_check(*seg, bm, 100 + i, 8192 + i);
    write_check(*seg, am, 200 + i, 100 + i);
  }
  // Two peers in turn (a put with two replicas on two nodes): each keeps its own cached entry.
  auto target2 = make_engine({"shm"}, "target-cache-2");
  auto c2 = target2->allocate_shared(n);
  REQUIRE(c2);
  auto* cm = static_cast<std::byte*>(*c2);
  auto seg2 = yutu::sync_wait(init->open_segment("target-cache-2"));
  REQUIRE(seg2);
  wait_named(*seg2, cm);
  for (unsigned i = 0; i < 8; ++i) {
    write_check(*seg, am, 400 + i, 256 + i);
    write_check(*seg2, cm, 500 + i, 512 + i);
  }
  const transport_counts c = init->counters("shm");
  CHECK(c.requests == writes);
  CHECK(c.bytes == bytes);
  CHECK(init->metrics_text().find(fmt::format("transport=\"shm\"}} {}\n", writes)) != std::string::npos);

  // A closed segment is gone for every thread, whatever it had cached.
  REQUIRE(init->close_segment(*seg));
  for (int i = 0; i < 4; ++i) {
    auto w = yutu::sync_wait(init->write(*seg, src.p, reinterpret_cast<std::uint64_t>(am), 64));
    REQUIRE_FALSE(w);
    CHECK(w.error() == te_errc::invalid_argument);
  }
  auto again = yutu::sync_wait(init->open_segment("target-cache"));
  REQUIRE(again);
  CHECK(*again != *seg);
  for (unsigned i = 0; i < 4; ++i) write_check(*again, bm, 300 + i, 512);
  CHECK(init->counters("shm").requests == writes);
}

// Writes `n` bytes of pattern `seed` from `src` to `at` in the peer's new block until they land there:
// until the peer's new descriptor is published, the range is unknown (or belongs to a freed block).
bool write_until_landed(engine& init, segment_id seg, std::byte* src, std::byte* at, std::size_t n, unsigned seed) {
  fill_pattern(src, n, seed);
  for (int i = 0; i < 500; ++i) {
    auto w = yutu::sync_wait(init.write(seg, src, reinterpret_cast<std::uint64_t>(at), n));
    if (w && fnv1a(at, n) == fnv1a(src, n)) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return false;
}

// A peer that frees a shared block and allocates another usually gets the same memfd number back,
// and often the same address: a mapping kept from the first block must not take the writes meant
// for the second (they would land in memory nobody reads: silent loss).
TEST_CASE("shm: a block freed and allocated again at the peer gets the writes, not the old mapping") {
  auto target = make_engine({"shm"}, "target-realloc");
  auto init = make_engine({"shm"}, "init-realloc");
  const std::size_t n = 1 << 20;
  aligned_buf src(n);
  REQUIRE(init->register_memory(src.p, src.n));
  auto seg = yutu::sync_wait(init->open_segment("target-realloc"));
  REQUIRE(seg);
  for (unsigned round = 0; round < 4; ++round) {
    CAPTURE(round);
    auto a = target->allocate_shared(n);
    REQUIRE(a);
    auto* am = static_cast<std::byte*>(*a);
    std::memset(am, 0, n);
    CHECK(write_until_landed(*init, *seg, src.p, am, n, 17 + round));
    // From every engine thread, again.
    for (unsigned i = 0; i < 4; ++i) {
      fill_pattern(src.p, 4096, 100 * round + i);
      REQUIRE(yutu::sync_wait(init->write(*seg, src.p, reinterpret_cast<std::uint64_t>(am), 4096)));
      CHECK(fnv1a(am, 4096) == fnv1a(src.p, 4096));
    }
    REQUIRE(target->free_shared(am));
  }
}

// Bytes of this process's memfd mappings named "yutu-shm" that its page tables map: in these tests the
// target's own blocks and the initiator's mappings of them.
std::size_t mapped_shm() {
  return yutu::test::mapped_rss(
      [](unsigned long, const char* line) { return std::strstr(line, "memfd:yutu-shm") != nullptr; });
}

TEST_CASE("shm: a block its live owner frees is let go by the peer that mapped it, with no transfer to it") {
  // The initiator's threads cache their mapping of the block; none of them reaches it again. Without
  // the exit watch's sweep of released blocks, that mapping (and the block's pages) stays as long
  // as the initiator runs: a node freeing a segment would give no memory back.
  auto target = make_engine({"shm"}, "target-release");
  auto init = make_engine({"shm"}, "init-release");
  const std::size_t n = 4 << 20;
  aligned_buf src(n);
  REQUIRE(init->register_memory(src.p, src.n));
  auto seg = yutu::sync_wait(init->open_segment("target-release"));
  REQUIRE(seg);
  const std::size_t base = mapped_shm();
  auto a = target->allocate_shared(n);
  REQUIRE(a);
  auto* am = static_cast<std::byte*>(*a);
  REQUIRE(write_until_landed(*init, *seg, src.p, am, n, 77));
  // The owner's block and the initiator's mapping of it (written through: its pages are mapped).
  CHECK(mapped_shm() >= base + 2 * n);
  REQUIRE(target->free_shared(am));
  const auto until = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (mapped_shm() > base && std::chrono::steady_clock::now() < until)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  CHECK(mapped_shm() == base);
  // A new block at the owner is found and written as before.
  auto b = target->allocate_shared(n);
  REQUIRE(b);
  auto* bm = static_cast<std::byte*>(*b);
  CHECK(write_until_landed(*init, *seg, src.p, bm, n, 78));
  REQUIRE(target->free_shared(bm));
}

TEST_CASE("shm: a copy through a descriptor older than an unregister or a free fails; registered again, it lands") {
  auto target = make_engine({"shm"}, "target-guard");
  auto init = make_engine({"shm"}, "init-guard");
  const std::size_t n = 1 << 20;
  aligned_buf src(n), dst(n);
  REQUIRE(init->register_memory(src.p, src.n));
  REQUIRE(init->register_memory(dst.p, dst.n));
  auto seg = yutu::sync_wait(init->open_segment("target-guard"));
  REQUIRE(seg);
  auto a = target->allocate_shared(n);
  REQUIRE(a);
  auto* am = static_cast<std::byte*>(*a);
  const auto addr = reinterpret_cast<std::uint64_t>(am);
  // Lands once the initiator has a descriptor that names the block (fetched again on a miss).
  const auto write_lands = [&](unsigned seed) {
    fill_pattern(src.p, n, seed);
    for (int i = 0; i < 500; ++i) {
      auto w = yutu::sync_wait(init->write(*seg, src.p, addr, n));
      if (w && fnv1a(am, n) == fnv1a(src.p, n)) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  };
  REQUIRE(write_lands(31));

  // Unregistered, still allocated: the initiator's descriptor still names the block, and its
  // mapping would take the bytes; the guard refuses them before the copy.
  REQUIRE(target->unregister_memory(am));
  std::memset(am, 0, n);
  const auto shm_failures = init->counters("shm").failures;
  for (unsigned i = 0; i < 3; ++i) {
    CAPTURE(i);
    fill_pattern(src.p, n, 40 + i);
    auto w = yutu::sync_wait(init->write(*seg, src.p, addr, n));
    REQUIRE_FALSE(w);
    CHECK(w.error() == te_errc::address_not_registered);
    auto r = yutu::sync_wait(init->read(*seg, dst.p, addr, 4096));
    REQUIRE_FALSE(r);
    CHECK(r.error() == te_errc::address_not_registered);
  }
  // The first refusal came from the shm transport itself, through the old descriptor.
  CHECK(init->counters("shm").failures > shm_failures);
  const std::vector<std::byte> zeros(n);
  CHECK(std::memcmp(am, zeros.data(), n) == 0);

  // Registered again (a new registration number): found again, and writes land. A second
  // registration of the same block is refused and leaves the first one's guard as it was.
  REQUIRE(target->register_memory(am, n));
  CHECK(target->register_memory(am, n).error() == te_errc::address_overlapped);
  REQUIRE(write_lands(50));
  std::memset(dst.p, 0, 4096);
  REQUIRE(yutu::sync_wait(init->read(*seg, dst.p, addr, 4096)));
  CHECK(std::memcmp(dst.p, am, 4096) == 0);

  // Freed: the initiator's mapping still holds the pages, which nobody reads any more.
  REQUIRE(target->free_shared(am));
  const auto before_free = init->counters("shm").failures;
  for (unsigned i = 0; i < 3; ++i) {
    auto w = yutu::sync_wait(init->write(*seg, src.p, addr, 4096));
    REQUIRE_FALSE(w);
    // Until the descriptor without the block is published, the one fetched again still names it,
    // and its memfd can no longer be opened: shm cannot serve it (an engine with tcp too would fall
    // back, and the owner would answer address_not_registered).
    CHECK((w.error() == te_errc::address_not_registered || w.error() == te_errc::no_transport));
  }
  CHECK(init->counters("shm").failures > before_free);
}

TEST_CASE("two engines over tcp: every opcode, unaligned sizes and addresses, data verified") {
  auto target = make_engine({"tcp"}, "target-a");
  auto init = make_engine({"tcp"}, "init-a");
  const std::size_t n = 8 << 20;
  aligned_buf tb(n), src(n), dst(n);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-a"));
  REQUIRE(seg);
  for (std::size_t len : {std::size_t(1), std::size_t(7), std::size_t(4095), std::size_t(4099), std::size_t(65537),
                          std::size_t(1 << 20) + 5, std::size_t(3 << 20) + 3}) {
    CAPTURE(len);
    std::size_t off = 13, soff = 5;
    fill_pattern(src.p + soff, len, static_cast<unsigned>(len));
    auto w = yutu::sync_wait(init->write(*seg, src.p + soff, tb.addr(off), len));
    REQUIRE(w);
    CHECK(fnv1a(tb.p + off, len) == fnv1a(src.p + soff, len));
    std::memset(dst.p, 0, len + 16);
    auto r = yutu::sync_wait(init->read(*seg, dst.p + 3, tb.addr(off), len));
    REQUIRE(r);
    CHECK(fnv1a(dst.p + 3, len) == fnv1a(src.p + soff, len));
  }
  CHECK(init->counters("tcp").failures == 0);
}

TEST_CASE("one batch of requests done inline (local) and waited for (tcp), with bad ones of each, each its own result") {
  auto target = make_engine({"local", "tcp"}, "target-mix");
  auto init = make_engine({"local", "tcp"}, "init-mix");
  const std::size_t n = 1 << 20;
  aligned_buf remote(n), mine(n), src(n);
  REQUIRE(target->register_memory(remote.p, remote.n));
  REQUIRE(init->register_memory(mine.p, mine.n));
  auto rseg = yutu::sync_wait(init->open_segment("target-mix"));
  auto self = yutu::sync_wait(init->open_segment("init-mix"));
  REQUIRE(rseg);
  REQUIRE(self);
  fill_pattern(src.p, n, 21);
  std::vector<transfer_request> batch;
  for (std::size_t k = 0; k < 8; ++k) {
    const std::uint64_t off = k * (64 << 10);
    batch.push_back({opcode::write, src.p + off, k % 2 ? *rseg : *self, (k % 2 ? remote : mine).addr(off), 64 << 10});
  }
  batch.push_back({opcode::write, src.p, *self, mine.addr(n - 16), 64});     // past this engine's buffer
  batch.push_back({opcode::write, src.p, *rseg, remote.addr(n - 16), 64});   // past the peer's buffer
  auto res = yutu::sync_wait(init->transfer(batch));
  REQUIRE(res.errors.size() == batch.size());
  for (std::size_t k = 0; k < 8; ++k) {
    CAPTURE(k);
    CHECK_FALSE(res.errors[k]);
    const std::uint64_t off = k * (64 << 10);
    CHECK(fnv1a((k % 2 ? remote : mine).p + off, 64 << 10) == fnv1a(src.p + off, 64 << 10));
  }
  CHECK(res.errors[8] == te_errc::address_not_registered);
  CHECK(res.errors[9]);
  // Each success counted once, by the transport that moved it; the failed local one once too.
  CHECK(init->counters("local").requests == 4);
  CHECK(init->counters("local").failures == 1);
  CHECK(init->counters("tcp").requests == 4);
}

TEST_CASE("thousands of concurrent requests in one batch") {
  auto target = make_engine({"tcp"}, "target-b");
  auto init = make_engine({"tcp"}, "init-b");
  const std::size_t count = 4000, each = 1000;
  aligned_buf tb(count * each + 64), src(count * each + 64), dst(count * each + 64);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-b"));
  REQUIRE(seg);
  fill_pattern(src.p, src.n, 9);
  std::vector<transfer_request> batch;
  for (std::size_t i = 0; i < count; ++i)
    batch.push_back({opcode::write, src.p + i * each + 1, *seg, tb.addr(i * each + 3), each - (i % 7)});
  auto res = yutu::sync_wait(init->transfer(batch));
  REQUIRE(res.errors.size() == count);
  CHECK(res.ok());
  for (std::size_t i = 0; i < count; i += 97)
    CHECK(std::memcmp(tb.p + i * each + 3, src.p + i * each + 1, each - (i % 7)) == 0);
  for (auto& r : batch) {
    r.op = opcode::read;
    r.source = dst.p + (static_cast<std::byte*>(r.source) - src.p);
  }
  res = yutu::sync_wait(init->transfer(batch));
  CHECK(res.ok());
  for (std::size_t i = 0; i < count; i += 89)
    CHECK(std::memcmp(dst.p + i * each + 1, src.p + i * each + 1, each - (i % 7)) == 0);
}

TEST_CASE("mixed reads, writes and bad ranges in one pipelined batch keep their order and their bytes") {
  // Writes are acked in runs and their frames leave gathered; a READ's response (with payload) and an
  // error response interleave with those acks: every result must still match its own request.
  auto target = make_engine({"tcp"}, "target-m");
  auto init = make_engine({"tcp"}, "init-m");
  const std::size_t count = 3000, each = 4096 + 17;
  aligned_buf tb(2 * count * each), src(count * each), dst(count * each);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-m"));
  REQUIRE(seg);
  fill_pattern(tb.p + count * each, count * each, 21);  // what the reads fetch
  fill_pattern(src.p, src.n, 22);                        // what the writes store
  std::memset(dst.p, 0, dst.n);
  std::vector<transfer_request> batch;
  for (std::size_t i = 0; i < count; ++i) {
    if (i % 11 == 5)
      batch.push_back({opcode::write, src.p + i * each, *seg, tb.addr() + tb.n + 4096 * i, each});  // unregistered
    else if (i % 2 == 0)
      batch.push_back({opcode::write, src.p + i * each, *seg, tb.addr(i * each), each - i % 5});
    else
      batch.push_back({opcode::read, dst.p + i * each, *seg, tb.addr(count * each + i * each), each - i % 3});
  }
  for (int round = 0; round < 3; ++round) {
    auto res = yutu::sync_wait(init->transfer(batch));
    REQUIRE(res.errors.size() == count);
    for (std::size_t i = 0; i < count; ++i) {
      CAPTURE(i);
      if (i % 11 == 5) {
        CHECK(res.errors[i] == te_errc::address_not_registered);
      } else {
        REQUIRE_FALSE(res.errors[i]);
        if (i % 2 == 0)
          CHECK(std::memcmp(tb.p + i * each, src.p + i * each, each - i % 5) == 0);
        else
          CHECK(std::memcmp(dst.p + i * each, tb.p + count * each + i * each, each - i % 3) == 0);
      }
    }
  }
}

TEST_CASE("requests outside registered memory fail typed and do not disturb the rest of the batch") {
  auto target = make_engine({"tcp"}, "target-c");
  auto init = make_engine({"tcp"}, "init-c");
  aligned_buf tb(1 << 16), other(1 << 16), src(1 << 16);
  REQUIRE(target->register_memory(tb.p, tb.n));
  REQUIRE(target->register_memory(other.p, other.n, "cpu:0", /*remote_accessible=*/false));
  auto seg = yutu::sync_wait(init->open_segment("target-c"));
  REQUIRE(seg);
  fill_pattern(src.p, src.n, 5);
  std::vector<transfer_request> batch{
      {opcode::write, src.p, *seg, tb.addr(0), 100},
      {opcode::write, src.p, *seg, tb.addr(tb.n - 50), 100},  // crosses the end
      {opcode::read, src.p, *seg, other.addr(0), 100},        // registered, not remotely accessible
      {opcode::write, src.p, *seg, 8, 100},                   // never registered
      {opcode::read, src.p + 200, *seg, tb.addr(0), 100},
  };
  auto res = yutu::sync_wait(init->transfer(batch));
  CHECK_FALSE(res.errors[0]);
  CHECK(res.errors[1] == te_errc::address_not_registered);
  CHECK(res.errors[2] == te_errc::address_not_registered);
  CHECK(res.errors[3] == te_errc::address_not_registered);
  CHECK_FALSE(res.errors[4]);
  CHECK(std::memcmp(src.p + 200, src.p, 100) == 0);
}

TEST_CASE("an unknown segment and a dead peer fail typed within the deadline") {
  auto init = make_engine({"tcp"}, "init-d");
  auto missing = yutu::sync_wait(init->open_segment("nobody-here"));
  REQUIRE_FALSE(missing);
  CHECK(missing.error() == yutu::errc::segment_not_found);

  auto target = make_engine({"tcp"}, "target-d");
  aligned_buf tb(4096), src(4096);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-d"));
  REQUIRE(seg);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), 64)));
  target.reset();  // the peer goes away
  auto t0 = std::chrono::steady_clock::now();
  auto r = yutu::sync_wait(init->write(*seg, src.p, tb.addr(), 64));
  REQUIRE_FALSE(r);
  CHECK((r.error() == te_errc::peer_unreachable || r.error() == te_errc::stale_segment));
  CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(6));
}

TEST_CASE("notifications reach the target after the batch") {
  auto target = make_engine({"tcp"}, "target-e");
  auto init = make_engine({"tcp"}, "init-e");
  aligned_buf tb(4096), src(4096);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-e"));
  REQUIRE(seg);
  std::vector<transfer_request> batch{{opcode::write, src.p, *seg, tb.addr(), 128}};
  auto res = yutu::sync_wait(init->transfer(batch, batch_options{.deadline = {}, .notify = "layer 0 done"}));
  REQUIRE(res.ok());
  auto n = yutu::sync_wait(target->next_notification());
  REQUIRE(n);
  CHECK(n->from == "init-e");
  CHECK(n->message == "layer 0 done");
  CHECK(yutu::sync_wait(init->notify(*seg, "second")));
  auto n2 = yutu::sync_wait(target->next_notification());
  REQUIRE(n2);
  CHECK(n2->message == "second");
}

TEST_CASE("submit, poll and free a batch from a plain thread") {
  auto target = make_engine({"tcp"}, "target-f");
  auto init = make_engine({"tcp"}, "init-f");
  aligned_buf tb(1 << 20), src(1 << 20);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-f"));
  REQUIRE(seg);
  fill_pattern(src.p, src.n, 11);
  std::vector<transfer_request> batch{{opcode::write, src.p, *seg, tb.addr(), 1 << 20},
                                      {opcode::write, src.p, *seg, 16, 1}};
  auto id = init->submit(batch);
  REQUIRE(id);
  auto res = init->wait(*id);
  REQUIRE(res);
  CHECK(init->status(*id, 0).value() == transfer_status::completed);
  CHECK(init->status(*id, 1).value() == transfer_status::failed);
  CHECK(init->status(*id, 2).error() == te_errc::invalid_argument);
  CHECK(init->free_batch(*id));
  CHECK(init->free_batch(*id).error() == te_errc::invalid_argument);
  CHECK(std::memcmp(tb.p, src.p, 1 << 20) == 0);
}

namespace {
// Two engines and 2 GiB of writes (8 x 256 MiB of 0xAA into a zeroed target): far more than can
// finish before a short deadline or an early stop, so when the batch ends some frames are acked,
// some are in the send in flight, and most are still queued behind it.
struct interrupted_batch {
  static constexpr std::size_t n = 256 << 20;
  std::unique_ptr<engine> target, init;
  aligned_buf tb{n}, src{n};
  segment_id seg = 0;
  std::vector<transfer_request> batch;

  explicit interrupted_batch(const std::string& name) {
    target = make_engine({"tcp"}, "target-" + name);
    init = make_engine({"tcp"}, "init-" + name);
    REQUIRE(target->register_memory(tb.p, tb.n));
    auto s = yutu::sync_wait(init->open_segment("target-" + name));
    REQUIRE(s);
    seg = *s;
    std::memset(src.p, 0xAA, n);
    std::memset(tb.p, 0, n);
    for (int i = 0; i < 8; ++i) batch.push_back({opcode::write, src.p, seg, tb.addr(), n});
  }
  // Once the batch returned, its source memory is the caller's again: nothing queued or half sent
  // may still be read from it and reach the target.
  void check_source_untouched_afterwards() {
    std::memset(src.p, 0x55, n);
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    CHECK(std::memchr(tb.p, 0x55, n) == nullptr);
  }
};
}  // namespace

TEST_CASE("a batch past its deadline fails with timed_out, promptly") {
  interrupted_batch b("g");
  auto t0 = std::chrono::steady_clock::now();
  auto res = yutu::sync_wait(b.init->transfer(b.batch, batch_options{.deadline = std::chrono::milliseconds(20), .notify = {}}));
  auto took = std::chrono::steady_clock::now() - t0;
  CHECK(took < std::chrono::seconds(3));
  bool any_timeout = false;
  for (auto& e : res.errors) any_timeout |= yutu::is_timeout(e);
  CHECK(any_timeout);
  b.check_source_untouched_afterwards();
  // The engine is still usable afterwards.
  CHECK(yutu::sync_wait(b.init->write(b.seg, b.src.p, b.tb.addr(), 4096)));
}

TEST_CASE("a cancelled batch returns promptly and never reads its source memory afterwards") {
  interrupted_batch b("c");
  std::stop_source stop;
  std::thread canceller([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    stop.request_stop();
  });
  auto t0 = std::chrono::steady_clock::now();
  auto res = yutu::sync_wait(b.init->transfer(b.batch), stop.get_token());
  auto took = std::chrono::steady_clock::now() - t0;
  canceller.join();
  CHECK(took < std::chrono::seconds(3));
  bool any_canceled = false;
  for (auto& e : res.errors) any_canceled |= yutu::is_canceled(e);
  CHECK(any_canceled);
  b.check_source_untouched_afterwards();
  CHECK(yutu::sync_wait(b.init->write(b.seg, b.src.p, b.tb.addr(), 4096)));
  CHECK(b.tb.p[4095] == std::byte{0x55});
}

TEST_CASE("hostile frames close only their own connection") {
  auto target = make_engine({"tcp"}, "target-h");
  auto init = make_engine({"tcp"}, "init-h");
  aligned_buf tb(4096), src(4096);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-h"));
  REQUIRE(seg);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), 64)));

  yutu::io::reactor r;
  auto attack = [](std::uint16_t port, std::vector<std::byte> junk) -> task<bool> {
    auto s = co_await yutu::io::tcp_stream::connect(yutu::io::address::ipv4_loopback(port));
    if (!s) co_return false;
    if (!co_await s->send_all(junk)) co_return false;
    std::byte b[64];
    auto n = co_await s->recv(b).with_timeout(std::chrono::seconds(3));
    // The server closed on us: EOF, or a reset when it left our junk unread.
    co_return (n.has_value() && *n == 0) || (!n.has_value() && n.error() == std::errc::connection_reset);
  };
  std::vector<std::byte> garbage(100, std::byte{0x41});
  CHECK(r.block_on(attack(target->port(), garbage)));
  wire::header h;
  h.type = wire::frame_type::write;
  h.addr = tb.addr();
  h.length = 1ull << 40;  // larger than any slice a target accepts
  auto hb = wire::encode(h);
  CHECK(r.block_on(attack(target->port(), std::vector<std::byte>(hb.begin(), hb.end()))));
  h.type = wire::frame_type::write_ack;  // a response type sent by a client
  h.length = 0;
  hb = wire::encode(h);
  CHECK(r.block_on(attack(target->port(), std::vector<std::byte>(hb.begin(), hb.end()))));
  // The legitimate client is unaffected.
  CHECK(yutu::sync_wait(init->write(*seg, src.p, tb.addr(), 64)));
}

TEST_CASE("100k short transfers reuse pooled connections: no port or fd exhaustion") {
  auto target = make_engine({"tcp"}, "target-i");
  auto init = make_engine({"tcp"}, "init-i");
  aligned_buf tb(4096), src(4096);
  REQUIRE(target->register_memory(tb.p, tb.n));
  auto seg = yutu::sync_wait(init->open_segment("target-i"));
  REQUIRE(seg);
  std::vector<transfer_request> batch;
  for (int i = 0; i < 1000; ++i) batch.push_back({opcode::write, src.p + (i % 64), *seg, tb.addr(i % 128), 16});
  // Each batch runs on the next engine reactor and a single-slice request prefers the connection
  // homed there, so a few warm-up batches open every pooled connection; after that nothing new opens.
  for (int warm = 0; warm < 8; ++warm) REQUIRE(yutu::sync_wait(init->transfer(batch)).ok());
  int fds_before = count_fds();
  for (int round = 0; round < 100; ++round) {
    auto res = yutu::sync_wait(init->transfer(batch));
    REQUIRE(res.ok());
  }
  CHECK(count_fds() <= fds_before);
  CHECK(init->counters("tcp").requests >= 100'000);
}

TEST_CASE("comma lists: items in order, empty ones dropped") {
  using v = std::vector<std::string>;
  CHECK(split_list("mlx5_0,mlx5_1") == v{"mlx5_0", "mlx5_1"});
  CHECK(split_list("a,,b,") == v{"a", "b"});
  CHECK(split_list(",") == v{});
  CHECK(split_list("") == v{});
  CHECK(split_list("one") == v{"one"});
}

TEST_CASE("config from JSON and YUTU_* variables; bad values are errors") {
  auto c = engine_config::from_json(R"({"threads": 3, "transports": ["shm","tcp"], "batch_deadline_ms": 1500})");
  REQUIRE(c);
  CHECK(c->threads == 3);
  CHECK(c->transports == std::vector<std::string>{"shm", "tcp"});
  CHECK(c->batch_deadline == std::chrono::milliseconds(1500));
  CHECK_FALSE(engine_config::from_json(R"({"transports": ["carrier-pigeon"]})"));
  CHECK_FALSE(engine_config::from_json("not json"));
  // A misspelt key is an error, not a silently ignored setting; so are wrapped-around negatives.
  CHECK(engine_config::from_json(R"({"thread": 3})").error() == te_errc::invalid_argument);
  CHECK_FALSE(engine_config::from_json(R"({"rdma": {"slice_sise": 4096}})"));
  CHECK_FALSE(engine_config::from_json(R"({"rdma": 1})"));
  CHECK_FALSE(engine_config::from_json(R"({"threads": -1})"));
  CHECK_FALSE(engine_config::from_json(R"({"rdma": {"qps_per_endpoint": -1}})"));
  CHECK(engine_config::from_json(R"({"rdma": {"gid_index": -1}})"));
  CHECK_FALSE(engine_config::from_json(R"({"threads": 100000})"));
  CHECK_FALSE(engine_config::from_json(R"({"transports": []})"));
  CHECK_FALSE(engine_config::from_json(R"({"threads": "3"})"));
  auto r = engine_config::from_json(R"({"rdma": {"slice_size": 4096, "busy_poll": true}})");
  REQUIRE(r);
  CHECK(r->rdma.slice_size == 4096);
  CHECK(r->rdma.busy_poll);
  auto nt = engine_config::from_json(R"({"nontemporal_write_threshold": 0})");
  REQUIRE(nt);
  CHECK(nt->nontemporal_write_threshold == 0);
  CHECK_FALSE(engine_config::from_json(R"({"nontemporal_write_threshold": -1})"));
  ::setenv("YUTU_NONTEMPORAL_WRITE_THRESHOLD", "1048576", 1);
  CHECK(nt->apply_env());
  CHECK(nt->nontemporal_write_threshold == 1u << 20);
  ::setenv("YUTU_NONTEMPORAL_WRITE_THRESHOLD", "1MiB", 1);
  CHECK_FALSE(nt->apply_env());
  CHECK(nt->nontemporal_write_threshold == 1u << 20);
  ::unsetenv("YUTU_NONTEMPORAL_WRITE_THRESHOLD");
  CHECK(nt->shm_prefault);
  auto np = engine_config::from_json(R"({"shm_prefault": false})");
  REQUIRE(np);
  CHECK_FALSE(np->shm_prefault);
  CHECK_FALSE(engine_config::from_json(R"({"shm_prefault": "no"})"));
  ::setenv("YUTU_SHM_PREFAULT", "1", 1);
  CHECK(np->apply_env());
  CHECK(np->shm_prefault);
  ::setenv("YUTU_SHM_PREFAULT", "yes", 1);
  CHECK_FALSE(np->apply_env());
  CHECK(np->shm_prefault);
  ::unsetenv("YUTU_SHM_PREFAULT");
  ::setenv("YUTU_THREADS", "4", 1);
  ::setenv("YUTU_TRANSPORTS", "tcp", 1);
  CHECK(c->apply_env());
  CHECK(c->threads == 4);
  CHECK(c->transports == std::vector<std::string>{"tcp"});
  ::setenv("YUTU_BATCH_DEADLINE_MS", "1500", 1);
  ::setenv("YUTU_RDMA_GID_INDEX", "3", 1);
  CHECK(c->apply_env());
  CHECK(c->batch_deadline == std::chrono::milliseconds(1500));
  CHECK(c->rdma.gid_index == 3);
  ::unsetenv("YUTU_BATCH_DEADLINE_MS");
  ::unsetenv("YUTU_RDMA_GID_INDEX");
  // The same bounds as the JSON keys; a bad value leaves the field as it was.
  for (auto [var, value] : {std::pair{"YUTU_THREADS", "four"}, std::pair{"YUTU_THREADS", "2000"},
                            std::pair{"YUTU_THREADS", "0"}, std::pair{"YUTU_TCP_CONNECTIONS", "0"},
                            std::pair{"YUTU_TCP_CONNECTIONS", "257"}, std::pair{"YUTU_LISTEN_PORT", "70000"},
                            std::pair{"YUTU_TCP_SLICE_SIZE", "0"}, std::pair{"YUTU_RDMA_GID_INDEX", "256"},
                            std::pair{"YUTU_TRANSPORTS", "tcp,smoke-signals"}, std::pair{"YUTU_TRANSPORTS", ","}}) {
    CAPTURE(var);
    CAPTURE(value);
    ::setenv(var, value, 1);
    CHECK_FALSE(c->apply_env());
    ::unsetenv(var);
  }
  CHECK(c->threads == 4);
  ::unsetenv("YUTU_THREADS");
  ::unsetenv("YUTU_TRANSPORTS");
}

TEST_CASE("wire decoder rejects bad magic, versions, types and sizes") {
  wire::header h;
  h.type = wire::frame_type::read;
  h.length = 100;
  auto b = wire::encode(h);
  REQUIRE(wire::decode(b, 1 << 20));
  auto bad = b;
  bad[0] = std::byte{0};
  CHECK(wire::decode(bad, 1 << 20).error() == yutu::errc::protocol_error);
  bad = b;
  bad[4] = std::byte{9};
  CHECK(wire::decode(bad, 1 << 20).error() == yutu::errc::invalid_version);
  bad = b;
  bad[5] = std::byte{77};
  CHECK_FALSE(wire::decode(bad, 1 << 20));
  h.length = (1 << 20) + 1;
  CHECK_FALSE(wire::decode(wire::encode(h), 1 << 20));
  h.type = wire::frame_type::desc_req;
  h.length = 1;
  CHECK_FALSE(wire::decode(wire::encode(h), 1 << 20));
  h.type = wire::frame_type::write;
  h.addr = ~0ull - 10;
  h.length = 100;
  CHECK_FALSE(wire::decode(wire::encode(h), 1 << 20));
}

TEST_CASE("segment descriptors round-trip through JSON and reject garbage") {
  segment_desc d;
  d.name = "x";
  d.incarnation = 42;
  d.transports = {"tcp"};
  d.buffers.push_back({4096, 100, "cpu:0", -1, 0, 0});
  d.buffers.push_back({1024, 10, "cpu:1", 5, 0, 4096, 9, 16, 77});
  auto back = segment_desc::from_json(d.to_json());
  REQUIRE(back);
  CHECK(back->buffers.size() == 2);
  CHECK(back->buffers[0].shm_fd == 5);
  CHECK(back->buffers[0].shm_id == 9);
  CHECK(back->buffers[0].shm_guard == 16);
  CHECK(back->buffers[0].shm_reg == 77);
  CHECK(back->buffers[1].shm_id == 0);
  CHECK(back->buffers[1].shm_guard == 0);
  // The guard word: aligned, inside the memfd, never inside the buffer (a peer's copy would
  // overwrite it).
  const auto guarded = [](std::string_view shm) {
    return segment_desc::from_json(
        fmt::format(R"({{"name":"a","incarnation":1,"buffers":[{{"addr":4096,"length":100,"shm":{}}}]}})", shm));
  };
  CHECK(guarded(R"({"fd":3,"offset":0,"size":4096,"guard":104,"reg":1})"));
  CHECK(guarded(R"({"fd":3,"offset":8,"size":4096,"guard":0,"reg":1})"));  // 0: no guard
  CHECK(guarded(R"({"fd":3,"offset":0,"size":4096,"guard":4088,"reg":1})"));
  CHECK_FALSE(guarded(R"({"fd":3,"offset":0,"size":4096,"guard":96,"reg":1})"));    // inside the buffer
  CHECK_FALSE(guarded(R"({"fd":3,"offset":0,"size":4096,"guard":105,"reg":1})"));   // unaligned
  CHECK_FALSE(guarded(R"({"fd":3,"offset":0,"size":4096,"guard":4096,"reg":1})"));  // past the memfd
  CHECK_FALSE(guarded(R"({"fd":3,"offset":8,"size":4096,"guard":8,"reg":1})"));     // the buffer's first word
  // A buffer outside its memfd (a peer would copy past its mapping) is refused.
  CHECK_FALSE(segment_desc::from_json(
      R"({"name":"a","incarnation":1,"buffers":[{"addr":4096,"length":100,"shm":{"fd":3,"offset":4000,"size":4096}}]})"));
  CHECK_FALSE(segment_desc::from_json(
      R"({"name":"a","incarnation":1,"buffers":[{"addr":4096,"length":1,"shm":{"fd":3,"offset":5000,"size":4096}}]})"));
  CHECK(segment_desc::from_json(
      R"({"name":"a","incarnation":1,"buffers":[{"addr":4096,"length":96,"shm":{"fd":3,"offset":4000,"size":4096}}]})"));
  CHECK(back->buffers[0].addr == 1024);  // sorted
  CHECK(back->find(4096 + 50, 50) != nullptr);
  CHECK(back->find(4096 + 50, 51) == nullptr);
  CHECK(back->find(1024 + 10, 0) != nullptr);
  CHECK_FALSE(segment_desc::from_json("{}"));
  CHECK_FALSE(segment_desc::from_json("[1,2]"));
  CHECK_FALSE(segment_desc::from_json(R"({"name":"x","incarnation":1,"buffers":[{"addr":18446744073709551615,"length":2}]})"));
  // Numbers that are not integers of the field's type are errors, not casts: the fuzzer's input
  // (a float incarnation past 2^64 was undefined behaviour), a port past 65535, a negative address.
  CHECK(segment_desc::from_json(
            R"({"name":"a","incarnation":5555555555555555555551,"transports":["t5cp"],"buffers":[]})")
            .error() == te_errc::metadata_error);
  CHECK_FALSE(segment_desc::from_json(R"({"name":"a","incarnation":1.5,"buffers":[]})"));
  CHECK_FALSE(segment_desc::from_json(R"({"name":"a","incarnation":1,"tcp":{"host":"h","port":70000},"buffers":[]})"));
  CHECK_FALSE(segment_desc::from_json(R"({"name":"a","incarnation":1,"buffers":[{"addr":-4096,"length":2}]})"));
  CHECK_FALSE(segment_desc::from_json(R"({"name":"a","incarnation":1,"pid":1e30,"buffers":[]})"));
  CHECK(segment_desc::from_json(R"({"name":"a","incarnation":1,"pid":-1,"buffers":[]})"));
  CHECK(engine_config::from_json(R"({"threads": 1e30})").error() == te_errc::invalid_argument);
  CHECK_FALSE(engine_config::from_json(R"({"rdma": {"max_retries": 2.5}})"));
}
