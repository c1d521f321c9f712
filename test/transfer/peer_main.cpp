// A target process for the multi-process transfer tests.
//
// Starts an engine, registers one buffer filled with a known pattern, prints one JSON line
// {"segment","incarnation","buffer","length","pid","port"} and then serves commands from stdin:
//   sum OFFSET LEN   -> prints the FNV-1a 64 checksum of that part of the buffer
//   fill SEED        -> refills the buffer with the pattern of SEED, prints "ok"
//   notes            -> prints the notifications received so far, one per line, then "end"
//   exit             -> exits cleanly
// Flags: --transports a,b  --size N  --shared  --host H  --port P  --metadata CONN  --name NAME  --close-memfd
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "peer_util.hpp"
#include "yutu/transfer/engine.hpp"

using namespace yutu::transfer;

int main(int argc, char** argv) {
  engine_config cfg;
  cfg.transports = {"tcp"};
  cfg.metadata = "P2PHANDSHAKE";
  std::size_t size = 1 << 20;
  bool shared = false, close_memfd = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--transports") {
      cfg.transports.clear();
      std::string v = next();
      std::size_t pos = 0;
      while (pos <= v.size()) {
        auto c = v.find(',', pos);
        cfg.transports.push_back(v.substr(pos, c == std::string::npos ? std::string::npos : c - pos));
        if (c == std::string::npos) break;
        pos = c + 1;
      }
    } else if (a == "--size") {
      size = std::stoull(next());
    } else if (a == "--shared") {
      shared = true;
    } else if (a == "--close-memfd") {
      close_memfd = true;
    } else if (a == "--host") {
      cfg.listen_host = next();
    } else if (a == "--port") {
      cfg.listen_port = static_cast<std::uint16_t>(std::stoi(next()));
    } else if (a == "--metadata") {
      cfg.metadata = next();
    } else if (a == "--name") {
      cfg.local_segment_name = next();
    }
  }
  auto e = engine::create(cfg);
  if (!e) {
    std::printf("{\"error\":\"%s\"}\n", e.error().message().c_str());
    std::fflush(stdout);
    return 1;
  }
  std::byte* buf = nullptr;
  std::unique_ptr<std::byte, void (*)(void*)> owned(nullptr, std::free);  // the non-shared buffer
  if (shared) {
    auto p = (*e)->allocate_shared(size);
    if (!p) return 2;
    buf = static_cast<std::byte*>(*p);
    if (close_memfd) {
      // Make the shm path fail for peers (the memfd number we published no longer exists), so they
      // must fall back to tcp.
      auto d = (*e)->segment_descriptor(0);
      if (d)
        for (auto& b : d->buffers)
          if (b.shm_fd >= 0) ::close(b.shm_fd);
    }
  } else {
    buf = static_cast<std::byte*>(std::aligned_alloc(4096, (size + 4095) / 4096 * 4096));
    owned.reset(buf);
    if (!(*e)->register_memory(buf, size)) return 3;
  }
  yutu::test::fill_pattern(buf, size, 1);
  std::printf("{\"segment\":\"%s\",\"incarnation\":%llu,\"buffer\":%llu,\"length\":%zu,\"pid\":%d,\"port\":%u}\n",
              (*e)->segment_name().c_str(), static_cast<unsigned long long>((*e)->incarnation()),
              static_cast<unsigned long long>(reinterpret_cast<std::uintptr_t>(buf)), size, ::getpid(),
              (*e)->port());
  std::fflush(stdout);
  std::string cmd;
  while (std::cin >> cmd) {
    if (cmd == "sum") {
      std::uint64_t off = 0, len = 0;
      std::cin >> off >> len;
      if (off > size || len > size - off) {
        std::printf("err\n");
      } else {
        std::printf("%llu\n", static_cast<unsigned long long>(yutu::test::fnv1a(buf + off, len)));
      }
    } else if (cmd == "fill") {
      unsigned seed = 0;
      std::cin >> seed;
      yutu::test::fill_pattern(buf, size, seed);
      std::printf("ok\n");
    } else if (cmd == "notes") {
      while (auto n = (*e)->try_next_notification()) std::printf("%s|%s\n", n->from.c_str(), n->message.c_str());
      std::printf("end\n");
    } else if (cmd == "exit") {
      break;
    }
    std::fflush(stdout);
  }
  e->reset();
  return 0;
}
