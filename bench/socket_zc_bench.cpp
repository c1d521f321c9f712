// socket_zc_bench: does IORING_OP_SEND_ZC beat a copying send, and from which chunk size on?
// The answer sets tcp_stream::zc_threshold.
//
// One sender reactor thread loops `co_await send(chunk)` or `co_await send_zc(chunk)` (one op in
// flight, the way send_all issues them) over loopback to a receiver reactor thread that recv()s into
// a 1 MiB buffer and discards. Chunk sizes 4 KiB .. 4 MiB; each figure is the best of --repeats runs,
// send and send_zc alternating so both see the same noise. The last line is one JSON object.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "yutu/io/reactor.hpp"
#include "yutu/io/socket.hpp"

namespace {

using clk = std::chrono::steady_clock;
using yutu::task;
using namespace yutu::io;

task<void> receiver(tcp_listener& l, std::size_t total) {
  auto s = co_await l.accept();
  if (!s) std::abort();
  std::vector<std::byte> buf(1 << 20);
  std::size_t got = 0;
  while (got < total) {
    auto n = co_await s->recv(buf);
    if (!n || *n == 0) std::abort();
    got += *n;
  }
}

task<double> sender(address to, std::size_t chunk, std::size_t total, bool zc, std::size_t* zc_copied) {
  auto s = co_await tcp_stream::connect(to);
  if (!s) std::abort();
  std::vector<std::byte> buf(chunk, std::byte{0x5a});
  auto t0 = clk::now();
  std::size_t sent = 0;
  while (sent < total) {
    std::span<const std::byte> b(buf.data(), std::min(chunk, total - sent));
    yutu::result<std::size_t> n;
    if (zc) {
      auto op = s->send_zc(b);
      n = co_await op;
      if (!op.used_zero_copy()) ++*zc_copied;
    } else {
      n = co_await s->send(b);
    }
    if (!n) std::abort();
    sent += *n;
  }
  co_return std::chrono::duration<double>(clk::now() - t0).count();
}

double run_one(std::size_t chunk, std::size_t total, bool zc, std::size_t* fallbacks) {
  auto l = tcp_listener::bind(address::ipv4_loopback(0));
  if (!l) std::abort();
  std::thread rx([&] {
    reactor r;
    r.block_on(receiver(*l, total));
  });
  reactor r;
  double secs = r.block_on(sender(l->local_address(), chunk, total, zc, fallbacks));
  rx.join();
  return double(total) / secs / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  int repeats = 3;
  std::size_t total = std::size_t{1} << 30;
  for (int i = 1; i < argc; ++i) {
    if (!std::strcmp(argv[i], "--repeats") && i + 1 < argc) repeats = std::atoi(argv[++i]);
    if (!std::strcmp(argv[i], "--mib") && i + 1 < argc) total = std::size_t(std::atoll(argv[++i])) << 20;
  }
  {
    reactor probe;
    std::printf("kernel SEND_ZC: %s\n", probe.features().send_zc ? "yes" : "no");
  }
  nlohmann::json out;
  out["bench"] = "socket_zc";
  out["bytes_per_run"] = total;
  std::printf("%10s %12s %12s %8s\n", "chunk", "send GB/s", "send_zc GB/s", "zc/send");
  for (std::size_t chunk : {4u << 10, 16u << 10, 32u << 10, 64u << 10, 256u << 10, 1u << 20, 4u << 20}) {
    double best_send = 0, best_zc = 0;
    std::size_t fallbacks = 0;
    for (int i = 0; i < repeats; ++i) {
      best_send = std::max(best_send, run_one(chunk, total, false, &fallbacks));
      best_zc = std::max(best_zc, run_one(chunk, total, true, &fallbacks));
    }
    std::printf("%10zu %12.2f %12.2f %8.2f\n", chunk, best_send, best_zc, best_zc / best_send);
    out["runs"].push_back({{"chunk", chunk}, {"send_gbps", best_send}, {"send_zc_gbps", best_zc},
                           {"ratio_zc_to_send", best_zc / best_send}, {"zc_ops_without_notif", fallbacks}});
  }
  std::printf("%s\n", out.dump().c_str());
}
