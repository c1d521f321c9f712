// hello_reactor: the smallest tour of yutu's io layer. One reactor (one io_uring) on the main thread
// runs a coroutine that pushes no-ops through the ring, sleeps on a kernel timer, and lets a linked
// timeout cut a long sleep short, printing what each step did. Exits non-zero if any step misbehaves.
#include <chrono>
#include <cstdio>

#include "yutu/error.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;

namespace {

double ms_since(clk::time_point t0) {
  return std::chrono::duration<double, std::milli>(clk::now() - t0).count();
}

yutu::task<int> tour() {
  int failures = 0;

  constexpr int nops = 10000;
  auto t0 = clk::now();
  int completed = 0;
  for (int i = 0; i < nops; ++i)
    if (co_await yutu::io::nop()) ++completed;
  const double ns_per_nop = ms_since(t0) * 1e6 / nops;
  std::printf("  %d/%d nops through the ring, %.0f ns each\n", completed, nops, ns_per_nop);
  if (completed != nops) ++failures;

  t0 = clk::now();
  auto slept = co_await yutu::io::sleep_for(20ms);
  const double slept_ms = ms_since(t0);
  std::printf("  sleep_for(20ms): %s after %.1f ms\n", slept ? "ok" : slept.error().message().c_str(),
              slept_ms);
  if (!slept || slept_ms < 20.0) ++failures;

  // A per-operation deadline: the 10 s sleep fails with timed_out after 15 ms.
  t0 = clk::now();
  auto cut = co_await yutu::io::sleep_for(10s).with_timeout(15ms);
  const double cut_ms = ms_since(t0);
  std::printf("  sleep_for(10s).with_timeout(15ms): %s after %.1f ms\n",
              cut ? "ok" : cut.error().message().c_str(), cut_ms);
  if (cut || !yutu::is_timeout(cut.error()) || cut_ms > 5000.0) ++failures;

  co_return failures;
}

}  // namespace

int main() {
  yutu::io::reactor r;
  const auto& f = r.features();
  std::printf("hello_reactor: io_uring with single_issuer=%d defer_taskrun=%d send_zc=%d buf_ring=%d\n",
              f.single_issuer, f.defer_taskrun, f.send_zc, f.buf_ring);
  const int failures = r.block_on(tour());
  std::printf("hello_reactor: %s (%zu operations still in flight)\n", failures ? "FAILED" : "done",
              r.in_flight());
  return failures == 0 && r.in_flight() == 0 ? 0 : 1;
}
