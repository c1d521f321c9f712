// The RDMA transport on real hardware (libibverbs): two engines in this process, WRITE and READ
// through a real device, verified by checksum. Exits 77 (meson's "skipped") with the reason when
// yutu was built without rdma-core or no active RDMA device exists; soft-RoCE counts (docs/rdma.md
// says how to create one where the kernel has rdma_rxe).
//
// YUTU_RDMA_TEST_DEVICES (comma list) limits the NICs; YUTU_RDMA_TEST_HOST is the address the engines
// bind (a NIC's address makes RoCE pick the GID holding it).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "../peer_util.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/transfer/engine.hpp"
#include "yutu/transfer/rdma/verbs.hpp"

using namespace yutu::transfer;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;

int main() {
  auto v = rdma::make_ibverbs();
  if (!v) {
    std::printf("SKIP: built without rdma-core (%s)\n", v.error().message().c_str());
    return 77;
  }
  auto names = (*v)->device_names();
  if (!names || names->empty()) {
    std::printf("SKIP: no RDMA device (ibv_get_device_list found none; see docs/rdma.md for soft-RoCE)\n");
    return 77;
  }
  engine_config c;
  c.transports = {"rdma"};
  c.threads = 2;
  c.batch_deadline = std::chrono::milliseconds(20'000);
  if (const char* h = std::getenv("YUTU_RDMA_TEST_HOST")) c.listen_host = h;
  if (const char* d = std::getenv("YUTU_RDMA_TEST_DEVICES")) {
    std::string s = d;
    for (std::size_t pos = 0; pos < s.size();) {
      auto comma = s.find(',', pos);
      if (comma == std::string::npos) comma = s.size();
      if (comma > pos) c.rdma.devices.push_back(s.substr(pos, comma - pos));
      pos = comma + 1;
    }
  }
  c.local_segment_name = "rdma-hw-target";
  auto target = engine::create(c);
  c.local_segment_name = "rdma-hw-init";
  auto init = engine::create(c);
  if (!target || !init) {
    std::printf("FAIL: engine::create\n");
    return 1;
  }
  const std::size_t n = 16 << 20;
  std::vector<std::byte> tb(n), src(n), dst(n);
  if (!(*target)->register_memory(tb.data(), n) || !(*init)->register_memory(src.data(), n) ||
      !(*init)->register_memory(dst.data(), n)) {
    std::printf("FAIL: register_memory (RLIMIT_MEMLOCK too low?)\n");
    return 1;
  }
  auto d = (*target)->segment_descriptor(0);
  if (!d || !d->extensions.count("rdma")) {
    std::printf("SKIP: devices listed but none usable (no active port or GID); see the engine's log\n");
    return 77;
  }
  auto seg = yutu::sync_wait((*init)->open_segment("rdma-hw-target"));
  if (!seg) {
    std::printf("FAIL: open_segment: %s\n", seg.error().message().c_str());
    return 1;
  }
  int failures = 0;
  for (std::size_t len : {std::size_t(1), std::size_t(4099), std::size_t(65537), std::size_t(3 << 20) + 7, n - 64}) {
    fill_pattern(src.data() + 5, len, static_cast<unsigned>(len));
    auto w = yutu::sync_wait((*init)->write(*seg, src.data() + 5, reinterpret_cast<std::uint64_t>(tb.data() + 13), len));
    std::memset(dst.data(), 0, len + 8);
    auto r = yutu::sync_wait((*init)->read(*seg, dst.data() + 3, reinterpret_cast<std::uint64_t>(tb.data() + 13), len));
    bool ok = w && r && fnv1a(tb.data() + 13, len) == fnv1a(src.data() + 5, len) &&
              fnv1a(dst.data() + 3, len) == fnv1a(src.data() + 5, len);
    std::printf("%s: %zu bytes write+read%s%s\n", ok ? "ok" : "FAIL", len, w ? "" : " (write failed)",
                r ? "" : " (read failed)");
    if (!ok) ++failures;
  }
  std::printf("rdma requests %llu, failures %llu\n",
              static_cast<unsigned long long>((*init)->counters("rdma").requests),
              static_cast<unsigned long long>((*init)->counters("rdma").failures));
  return failures ? 1 : 0;
}
