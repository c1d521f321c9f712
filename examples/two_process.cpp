// A plain two-process read/write: a target process registers a buffer, an initiator process writes
// into it and reads it back through the transfer engine, peer to peer (no metadata service).
//
// Run it as is (it forks its own target), or as two commands on two hosts:
//   two_process --target 0.0.0.0          prints its segment name, e.g. 10.0.0.2:41234
//   two_process --initiator 10.0.0.2:41234
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "yutu/io/reactor.hpp"
#include "yutu/transfer/engine.hpp"

using namespace yutu::transfer;

namespace {

constexpr std::size_t buffer_size = 16 << 20;

int run_target(const std::string& host, int report_fd) {
  engine_config cfg;
  cfg.metadata = "P2PHANDSHAKE";
  cfg.listen_host = host;
  auto e = engine::create(cfg);
  if (!e) {
    std::fprintf(stderr, "target: %s\n", e.error().message().c_str());
    return 1;
  }
  std::vector<std::byte> buf(buffer_size);
  if (!(*e)->register_memory(buf.data(), buf.size())) return 1;
  // Tell the initiator where to write: "<segment> <buffer address>".
  std::string hello = (*e)->segment_name() + " " + std::to_string(reinterpret_cast<std::uintptr_t>(buf.data())) + "\n";
  if (::write(report_fd, hello.data(), hello.size()) < 0) return 1;
  // Serve until the initiator closes the pipe.
  char c;
  while (::read(STDIN_FILENO, &c, 1) > 0) {
  }
  std::printf("target: first bytes now \"%.20s\"\n", reinterpret_cast<const char*>(buf.data()));
  return 0;
}

yutu::task<int> initiate(engine& e, std::string segment, std::uint64_t remote) {
  auto seg = co_await e.open_segment(segment);
  if (!seg) {
    std::fprintf(stderr, "initiator: open_segment(%s): %s\n", segment.c_str(), seg.error().message().c_str());
    co_return 1;
  }
  std::string msg = "hello from the initiator, through yutu";
  std::vector<std::byte> out(buffer_size), in(buffer_size);
  std::memcpy(out.data(), msg.data(), msg.size());
  for (std::size_t i = msg.size(); i < out.size(); ++i) out[i] = std::byte(i * 31);
  if (auto w = co_await e.write(*seg, out.data(), remote, out.size()); !w) {
    std::fprintf(stderr, "initiator: write: %s\n", w.error().message().c_str());
    co_return 1;
  }
  if (auto r = co_await e.read(*seg, in.data(), remote, in.size()); !r) {
    std::fprintf(stderr, "initiator: read: %s\n", r.error().message().c_str());
    co_return 1;
  }
  bool same = std::memcmp(in.data(), out.data(), out.size()) == 0;
  std::printf("initiator: wrote and read back %zu MiB over %s: %s\n", buffer_size >> 20,
              e.counters("shm").requests ? "shm" : "tcp", same ? "identical" : "DIFFERENT");
  co_return same ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--target") return run_target(argv[2], STDOUT_FILENO);
  engine_config cfg;
  cfg.metadata = "P2PHANDSHAKE";
  if (argc == 3 && std::string(argv[1]) == "--initiator") {
    std::string arg = argv[2];
    std::fprintf(stderr, "initiator: give the buffer address as printed by the target: ");
    unsigned long long remote = 0;
    if (std::scanf("%llu", &remote) != 1) return 2;
    auto e = engine::create(cfg);
    if (!e) return 1;
    return yutu::io::reactor().block_on(initiate(**e, arg, remote));
  }
  // Both roles on this machine: fork the target before any thread exists.
  int report[2], control[2];
  if (::pipe(report) || ::pipe(control)) return 1;
  pid_t child = ::fork();
  if (child == 0) {
    ::close(report[0]);
    ::close(control[1]);
    ::dup2(control[0], STDIN_FILENO);
    return run_target("127.0.0.1", report[1]);
  }
  ::close(report[1]);
  ::close(control[0]);
  char line[256] = {};
  std::size_t got = 0;
  while (got < sizeof line - 1) {
    ssize_t n = ::read(report[0], line + got, 1);
    if (n <= 0 || line[got] == '\n') break;
    ++got;
  }
  char segment[128];
  unsigned long long remote = 0;
  if (std::sscanf(line, "%127s %llu", segment, &remote) != 2) {
    std::fprintf(stderr, "the target did not start\n");
    return 1;
  }
  int rc;
  {
    auto e = engine::create(cfg);
    if (!e) return 1;
    rc = yutu::io::reactor().block_on(initiate(**e, segment, remote));
  }
  ::close(control[1]);
  int status = 0;
  ::waitpid(child, &status, 0);
  return rc != 0 ? rc : (WIFEXITED(status) ? WEXITSTATUS(status) : 1);
}
