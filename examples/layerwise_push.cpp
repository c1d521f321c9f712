// Prefill-to-decode, layer by layer: the write of layer i's KVCache is in flight while layer i+1 is
// being computed, and everything is joined with when_all at the end.
//
// Two engines in this process stand for a prefill node and a decode node (the same code runs across
// hosts: only the segment name changes). The "computation" is simulated with a timer, as a CUDA event
// would be awaited in a real engine. The program prints how much of the transfer time was hidden
// behind computation, and verifies every byte that arrived.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "yutu/coro/start.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/transfer/engine.hpp"

using namespace std::chrono_literals;
using namespace yutu::transfer;

namespace {

constexpr int num_layers = 24;
constexpr std::size_t layer_bytes = 4 << 20;  // K and V of one layer for a few thousand tokens
constexpr auto compute_per_layer = 3ms;

// One layer's KVCache goes to the same offset of the decode node's buffer.
yutu::task<yutu::result<void>> push_layer(engine& prefill, segment_id decode, const std::byte* kv,
                                          std::uint64_t remote) {
  co_return co_await prefill.write(decode, kv, remote, layer_bytes);
}

yutu::task<int> run(engine& prefill, engine& decode_node, std::byte* prefill_kv, std::byte* decode_kv) {
  auto decode = co_await prefill.open_segment(decode_node.segment_name());
  if (!decode) {
    std::fprintf(stderr, "open_segment: %s\n", decode.error().message().c_str());
    co_return 1;
  }
  auto t0 = std::chrono::steady_clock::now();
  std::vector<yutu::task<yutu::result<void>>> layers;
  for (int layer = 0; layer < num_layers; ++layer) {
    co_await yutu::io::sleep_for(compute_per_layer);  // "compute" layer `layer`
    std::byte* kv = prefill_kv + layer * layer_bytes;
    std::memset(kv, layer + 1, layer_bytes);
    // Start the write now (tasks are lazy: start() runs it until it suspends on the network); it
    // overlaps the computation of the next layer.
    layers.push_back(yutu::as_task(
        yutu::start(push_layer(prefill, *decode, kv, reinterpret_cast<std::uint64_t>(decode_kv + layer * layer_bytes)))));
  }
  auto results = co_await yutu::coro::when_all(std::move(layers));
  auto took = std::chrono::steady_clock::now() - t0;
  for (auto& r : results)
    if (!r) {
      std::fprintf(stderr, "layer write failed: %s\n", r.error().message().c_str());
      co_return 1;
    }
  for (int layer = 0; layer < num_layers; ++layer)
    for (std::size_t i = 0; i < layer_bytes; i += 4096)
      if (decode_kv[layer * layer_bytes + i] != std::byte(layer + 1)) {
        std::fprintf(stderr, "layer %d arrived corrupted\n", layer);
        co_return 1;
      }
  std::printf("pushed %d layers x %zu MiB in %.1f ms (compute alone: %.1f ms)\n", num_layers, layer_bytes >> 20,
              std::chrono::duration<double, std::milli>(took).count(),
              std::chrono::duration<double, std::milli>(compute_per_layer * num_layers).count());
  co_return 0;
}

}  // namespace

int main() {
  engine_config cfg;
  cfg.transports = {"tcp"};
  cfg.local_segment_name = "decode-0";
  auto decode_node = engine::create(cfg);
  cfg.local_segment_name = "prefill-0";
  auto prefill = engine::create(cfg);
  if (!decode_node || !prefill) {
    std::fprintf(stderr, "engine::create failed\n");
    return 1;
  }
  std::vector<std::byte> prefill_kv(num_layers * layer_bytes), decode_kv(num_layers * layer_bytes);
  if (!(*decode_node)->register_memory(decode_kv.data(), decode_kv.size())) return 1;
  yutu::io::reactor r;
  return r.block_on(run(**prefill, **decode_node, prefill_kv.data(), decode_kv.data()));
}
