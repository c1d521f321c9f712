// hello_reactor: the smallest tour of yutu's io layer. A reactor_pool runs two reactors (one io_uring
// each, on its own thread). The main thread first borrows reactor 0 to push no-ops through its ring
// and to let a per-operation deadline cut a long sleep short; then it spawns six sleepers across both
// reactors, which sleep concurrently, so they all finish in about the longest sleep rather than the
// sum. It prints what each step did and exits non-zero if any step misbehaved.
#include <atomic>
#include <chrono>
#include <cstdio>

#include "yutu/error.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/reactor_pool.hpp"

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

double ms_since(clk::time_point t0) {
  return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
}

yutu::task<int> nops_and_deadline() {
  int failures = 0;

  constexpr int nops = 10000;
  auto t0 = clk::now();
  int completed = 0;
  for (int i = 0; i < nops; ++i)
    if (co_await yutu::io::nop()) ++completed;
  std::printf("  reactor 0: %d/%d nops through the ring, %.0f ns each\n", completed, nops,
              ms_since(t0) * 1e6 / nops);
  if (completed != nops) ++failures;

  // A per-operation deadline (a linked timeout): the 10 s sleep fails with timed_out after 15 ms.
  t0 = clk::now();
  auto cut = co_await yutu::io::sleep_for(10s).with_timeout(15ms);
  const double cut_ms = ms_since(t0);
  std::printf("  reactor 0: sleep_for(10s).with_timeout(15ms): %s after %.1f ms\n",
              cut ? "ok" : cut.error().message().c_str(), cut_ms);
  if (cut || !yutu::is_timeout(cut.error()) || cut_ms > 5000.0) ++failures;

  co_return failures;
}

// Sleeps, then checks it slept long enough. The counters live in main until the pool is joined.
yutu::task<void> sleeper(std::chrono::milliseconds d, std::atomic<int>& finished,
                         std::atomic<int>& failures) {
  const auto t0 = clk::now();
  auto slept = co_await yutu::io::sleep_for(d);
  if (!slept || clk::now() - t0 < d) failures.fetch_add(1);
  finished.fetch_add(1);
}

}  // namespace

int main() {
  yutu::io::reactor_pool pool(2);
  const auto& f = pool.at(0).features();
  std::printf("hello_reactor: %zu reactors; io_uring single_issuer=%d defer_taskrun=%d send_zc=%d\n",
              pool.size(), f.single_issuer, f.defer_taskrun, f.send_zc);

  int failures = pool.block_on(0, nops_and_deadline());

  std::atomic<int> finished{0}, sleep_failures{0};
  const auto t0 = clk::now();
  int total_ms = 0;
  for (int i = 0; i < 6; ++i) {
    const auto d = std::chrono::milliseconds(10 * (i + 1));
    total_ms += static_cast<int>(d.count());
    pool.spawn(static_cast<std::size_t>(i) % pool.size(), sleeper(d, finished, sleep_failures));
  }
  pool.stop_and_join();  // waits for the spawned sleepers first
  const double wall_ms = ms_since(t0);
  std::printf("  6 sleepers (10..60 ms, %d ms in all) on 2 reactors: %d finished in %.1f ms\n",
              total_ms, finished.load(), wall_ms);
  if (finished.load() != 6 || sleep_failures.load() != 0 || wall_ms >= total_ms) ++failures;

  std::printf("hello_reactor: %s\n", failures ? "FAILED" : "done");
  return failures == 0 ? 0 : 1;
}
