// The reactor: nop, timers, cancellation, linked timeouts, cross-thread posting.
#include <doctest/doctest.h>

#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <thread>

#include "smaps.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using namespace std::chrono_literals;
using yutu::task;
using yutu::io::reactor;

TEST_CASE("nop completes through the ring") {
  reactor r;
  auto t = []() -> task<int> {
    int n = 0;
    for (int i = 0; i < 1000; ++i)
      if (co_await yutu::io::nop()) ++n;
    co_return n;
  };
  CHECK(r.block_on(t()) == 1000);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("sleep_for waits at least the duration") {
  reactor r;
  auto t0 = std::chrono::steady_clock::now();
  auto res = r.block_on([]() -> task<yutu::result<void>> { co_return co_await yutu::io::sleep_for(5ms); }());
  CHECK(res.has_value());
  CHECK(std::chrono::steady_clock::now() - t0 >= 5ms);
}

TEST_CASE("a stop request cancels a sleep promptly") {
  reactor r;
  std::stop_source src;
  auto sleeper = []() -> task<yutu::result<void>> { co_return co_await yutu::io::sleep_for(10s); };
  auto t0 = std::chrono::steady_clock::now();
  std::thread th([&] {
    std::this_thread::sleep_for(20ms);
    src.request_stop();
  });
  auto res = r.block_on(sleeper().with_stop_token(src.get_token()));
  th.join();
  REQUIRE_FALSE(res.has_value());
  CHECK(yutu::is_canceled(res.error()));
  CHECK(std::chrono::steady_clock::now() - t0 < 5s);
  CHECK(r.in_flight() == 0);
}

TEST_CASE("a linked timeout fails a stuck operation with timed_out") {
  reactor r;
  int fds[2];
  REQUIRE(::pipe(fds) == 0);
  auto res = r.block_on([](int fd) -> task<yutu::result<unsigned>> {
    co_return co_await yutu::io::poll(fd, POLLIN).with_timeout(10ms);
  }(fds[0]));
  REQUIRE_FALSE(res.has_value());
  CHECK(yutu::is_timeout(res.error()));
  ::close(fds[0]);
  ::close(fds[1]);
}

TEST_CASE("work posted from another thread runs on the reactor thread") {
  reactor r;
  std::thread::id ran_on;
  auto t = [&]() -> task<void> {
    std::thread th([&] {});
    th.join();
    co_await r.schedule();
    ran_on = std::this_thread::get_id();
  };
  r.block_on(t());
  CHECK(ran_on == std::this_thread::get_id());
}

namespace {
// Bytes of the mapping that starts at `addr` that this process's page tables map.
std::size_t rss_of(const void* addr) {
  bool found = false;
  auto rss = yutu::test::mapped_rss([&](unsigned long start, const char*) {
    const bool it = start == reinterpret_cast<unsigned long>(addr);
    found = found || it;
    return it;
  });
  REQUIRE(found);
  return rss;
}
}  // namespace

TEST_CASE("madvise through the ring: MADV_POPULATE_READ maps a second mapping's pages; bad advice is an error") {
  // Pages that exist (written through one mapping) but are not mapped in a second one until touched
  // or populated: the shm transport's situation with a peer's memory.
  constexpr std::size_t n = 16 << 20;
  int fd = ::memfd_create("yutu-test-populate", 0);
  REQUIRE(fd >= 0);
  REQUIRE(::ftruncate(fd, n) == 0);
  void* a = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  void* b = ::mmap(nullptr, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  REQUIRE(a != MAP_FAILED);
  REQUIRE(b != MAP_FAILED);
  std::memset(a, 7, n);
  CHECK(rss_of(b) == 0);
#ifdef MADV_POPULATE_READ
  if (::madvise(static_cast<char*>(b) + n - 4096, 4096, MADV_POPULATE_READ) != 0 && errno == EINVAL) {
    MESSAGE("skipped: this kernel has no MADV_POPULATE_READ (Linux 5.14)");
    ::munmap(a, n);
    ::munmap(b, n);
    ::close(fd);
    return;
  }
  CHECK(rss_of(b) < n);  // the probe mapped that page (and a few around it), not the rest
#else
  MESSAGE("skipped: these headers have no MADV_POPULATE_READ");
  return;
#endif
  reactor r;
  auto advise = [](void* p, std::size_t len, int advice) -> task<yutu::result<void>> {
    co_return co_await yutu::io::madvise(p, len, advice);
  };
  auto res = r.block_on(advise(b, n, MADV_POPULATE_READ));
  REQUIRE(res.has_value());
  CHECK(rss_of(b) == n);
  CHECK(static_cast<unsigned char*>(b)[n - 1] == 7);
  auto bad = r.block_on(advise(b, n, 12345));
  REQUIRE_FALSE(bad.has_value());
  CHECK(bad.error() == std::errc::invalid_argument);
  auto huge = r.block_on(advise(b, std::size_t{1} << 32, MADV_POPULATE_READ));
  REQUIRE_FALSE(huge.has_value());
  CHECK(huge.error() == std::errc::invalid_argument);
  CHECK(r.in_flight() == 0);
  ::munmap(a, n);
  ::munmap(b, n);
  ::close(fd);
}
