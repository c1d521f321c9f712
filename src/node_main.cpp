// yutu-node: a storage node, the process that contributes memory to the store and does nothing else
// (Mooncake's store client run with a global segment and no requests). It mounts its memory at the
// master, heartbeats, re-mounts when the master forgot it, and on SIGTERM/SIGINT unmounts and exits 0.
// One line on stdout says it is ready (scripts and yutu-cluster wait for it); logs go to stderr.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "yutu/coro/sync_wait.hpp"
#include "yutu/store/client.hpp"

namespace {

constexpr const char* usage =
    "usage: yutu-node --master HOST:PORT [options]\n"
    "  A storage node: contributes memory to a yutu store and serves it to clients.\n"
    "  --master HOST:PORT     the yutu-master RPC address (required)\n"
    "  --metadata CONN        metadata of the transfer engines (default http://127.0.0.1:8080/metadata;\n"
    "                         also etcd://h:p, P2PHANDSHAKE)\n"
    "  --memory SIZE          memory to contribute, e.g. 1GiB, 512MiB (default 1GiB)\n"
    "  --max-segment-size SIZE  split the memory into segments of at most this (default 16GiB)\n"
    "  --protocol tcp|rdma    network transport between hosts (default tcp; same-host peers use\n"
    "                         shared memory on top; rdma has no tcp fallback)\n"
    "  --rdma-devices LIST    RDMA NICs to use, e.g. mlx5_0,mlx5_1 (default: every one found)\n"
    "  --host ADDR[:PORT]     address the node's engine listens on and names its host (default 127.0.0.1)\n"
    "  --hugepages            back the memory with huge pages\n"
    "  --master-wait SECONDS  keep trying to reach a master that is still starting (default 30)\n"
    "  --help                 this text\n";

}  // namespace

int main(int argc, char** argv) {
  yutu::store::client_config cfg;
  cfg.metadata = "http://127.0.0.1:8080/metadata";
  cfg.global_segment_size = 1ull << 30;
  cfg.master_wait = std::chrono::seconds(30);
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    std::string v;
    auto value = [&](std::string_view name) {
      if (a == name) {
        if (i + 1 >= argc) return false;
        v = argv[++i];
        return true;
      }
      if (a.size() > name.size() + 1 && a.starts_with(name) && a[name.size()] == '=') {
        v = std::string(a.substr(name.size() + 1));
        return true;
      }
      return false;
    };
    auto size_of = [&](const char* flag) -> std::uint64_t {
      auto s = yutu::store::parse_size(v);
      if (!s || *s == 0) {
        std::fprintf(stderr, "yutu-node: bad size '%s' for %s\n", v.c_str(), flag);
        std::exit(2);
      }
      return *s;
    };
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (a == "--hugepages") {
      cfg.hugepages = true;
    } else if (value("--master")) {
      cfg.master = v;
    } else if (value("--metadata")) {
      cfg.metadata = v;
    } else if (value("--memory")) {
      cfg.global_segment_size = size_of("--memory");
    } else if (value("--max-segment-size")) {
      cfg.max_segment_size = size_of("--max-segment-size");
    } else if (value("--protocol")) {
      if (v != "tcp" && v != "rdma") {
        std::fprintf(stderr, "yutu-node: --protocol must be tcp or rdma, not '%s'\n", v.c_str());
        return 2;
      }
      cfg.protocol = v;
    } else if (value("--rdma-devices")) {
      cfg.engine.rdma.devices = yutu::transfer::split_list(v);
      if (cfg.engine.rdma.devices.empty()) {  // "every NIC" is the default, not something to spell as ""
        std::fprintf(stderr, "yutu-node: bad device list '%s' for --rdma-devices\n", v.c_str());
        return 2;
      }
    } else if (value("--host")) {
      cfg.local_hostname = v;
    } else if (value("--master-wait")) {
      char* end = nullptr;
      long s = std::strtol(v.c_str(), &end, 10);
      if (v.empty() || *end != '\0' || s < 0) {
        std::fprintf(stderr, "yutu-node: bad value '%s' for --master-wait\n", v.c_str());
        return 2;
      }
      cfg.master_wait = std::chrono::seconds(s);
    } else {
      std::fprintf(stderr, "yutu-node: unknown or incomplete argument '%s'\n%s", argv[i], usage);
      return 2;
    }
  }
  if (cfg.master.empty()) {
    std::fprintf(stderr, "yutu-node: --master is required\n%s", usage);
    return 2;
  }

  // Blocked before any thread starts: every thread inherits the mask and only sigwait sees them.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  if (::pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) {
    std::perror("yutu-node: pthread_sigmask");
    return 1;
  }

  auto c = yutu::store::client::create(cfg);
  if (!c) {
    std::fprintf(stderr, "yutu-node: cannot start: %s\n", c.error().message().c_str());
    return 1;
  }
  std::printf("yutu-node: ready, engine %s, %llu bytes in %zu segment(s), client %s\n",
              (*c)->engine().segment_name().c_str(), static_cast<unsigned long long>(cfg.global_segment_size),
              (*c)->segments().size(), (*c)->id().c_str());
  std::fflush(stdout);

  int sig = 0;
  while (::sigwait(&mask, &sig) != 0) {
  }
  std::fprintf(stderr, "yutu-node: %s, unmounting\n", ::strsignal(sig));
  auto r = yutu::sync_wait((*c)->close());
  if (!r) std::fprintf(stderr, "yutu-node: unmounting failed: %s\n", r.error().message().c_str());
  c->reset();
  std::fprintf(stderr, "yutu-node: stopped\n");
  return 0;
}
