// Two hosts on one kernel: two network namespaces joined by a veth pair. The target is a peer process
// started in one namespace (`ip netns exec`), the initiator is an engine of this process created while
// its thread is in the other (setns before engine::create: the reactor threads inherit the namespace).
// Checked: tcp (never shm) carries 1 B to 64 MiB both ways; a link cut mid-batch fails every unfinished
// request typed within the deadline, and after the link is restored the engine reconnects; a target
// killed in its namespace fails typed too. Skipped, with the reason, without root, `ip` or netns.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sched.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "peer_util.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/transfer/engine.hpp"

using namespace yutu::transfer;
using namespace std::chrono_literals;
using yutu::te_errc;
using yutu::test::child_peer;
using yutu::test::fill_pattern;
using yutu::test::fnv1a;

namespace {

constexpr auto batch_deadline = 3s;

std::string peer_exe() {
  const char* p = std::getenv("YUTU_TEST_PEER");
  return p ? p : "";
}

std::string ip_exe() {
  for (const char* p : {"/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"})
    if (::access(p, X_OK) == 0) return p;
  return "";
}

struct cmd_result {
  int status = -1;  // the exit status, -1 when it did not run or exit normally
  std::string output;
};

// Runs `ip args...` and collects its stdout and stderr.
cmd_result ip(const std::vector<std::string>& args) {
  cmd_result res;
  std::string exe = ip_exe();
  int out[2];
  if (exe.empty() || ::pipe2(out, O_CLOEXEC) != 0) return res;
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, out[1], 2);
  std::vector<char*> argv{exe.data()};
  std::vector<std::string> copy = args;
  for (auto& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  pid_t pid = -1;
  int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  ::close(out[1]);
  char buf[512];
  for (ssize_t n; rc == 0 && (n = ::read(out[0], buf, sizeof buf)) > 0;) res.output.append(buf, static_cast<std::size_t>(n));
  ::close(out[0]);
  int st = 0;
  if (rc == 0 && ::waitpid(pid, &st, 0) == pid && WIFEXITED(st)) res.status = WEXITSTATUS(st);
  while (!res.output.empty() && (res.output.back() == '\n' || res.output.back() == ' ')) res.output.pop_back();
  return res;
}

// Namespaces of earlier runs that died before their teardown (SIGKILL, a harness's timeout): named
// yutu_{a,b}_<pid> with that pid gone.
void remove_stale_namespaces() {
  std::error_code ec;
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() <= 7 || (name.rfind("yutu_a_", 0) != 0 && name.rfind("yutu_b_", 0) != 0)) continue;
    int pid = 0;
    auto [end, err] = std::from_chars(name.data() + 7, name.data() + name.size(), pid);
    if (err != std::errc{} || end != name.data() + name.size() || pid <= 0 || pid == ::getpid()) continue;
    if (::kill(pid, 0) != 0 && errno == ESRCH) (void)ip({"netns", "del", name});
  }
}

// Two namespaces A and B, veth A <-> B, 10.77.x.1/24 in A and 10.77.x.2/24 in B, every link up.
// Names carry the pid, so parallel runs do not clash; leftovers of runs that died are removed first. Deleting a namespace deletes the veth end inside it (and with it the other end).
class netns_pair {
 public:
  netns_pair() {
    const auto id = std::to_string(::getpid());
    ns_a = "yutu_a_" + id;
    ns_b = "yutu_b_" + id;
    veth_a = "yva" + id;  // interface names have at most 15 characters
    veth_b = "yvb" + id;
    const auto x = std::to_string(::getpid() % 250 + 1);
    addr_a = "10.77." + x + ".1";
    addr_b = "10.77." + x + ".2";
  }
  ~netns_pair() { teardown(); }
  netns_pair(const netns_pair&) = delete;
  netns_pair& operator=(const netns_pair&) = delete;

  // Empty on success, else why it cannot be set up (the reason to skip).
  std::string setup() {
    if (::geteuid() != 0) return "not root";
    if (ip_exe().empty()) return "`ip` (iproute2) is not installed";
    remove_stale_namespaces();
    teardown();
    (void)ip({"link", "del", veth_a});
    if (auto r = ip({"netns", "add", ns_a}); r.status != 0) return "`ip netns add` failed: " + r.output;
    if (auto r = ip({"netns", "add", ns_b}); r.status != 0) return "`ip netns add` failed: " + r.output;
    const std::vector<std::vector<std::string>> steps{
        {"link", "add", veth_a, "type", "veth", "peer", "name", veth_b},
        {"link", "set", veth_a, "netns", ns_a},
        {"link", "set", veth_b, "netns", ns_b},
        {"-n", ns_a, "addr", "add", addr_a + "/24", "dev", veth_a},
        {"-n", ns_b, "addr", "add", addr_b + "/24", "dev", veth_b},
        {"-n", ns_a, "link", "set", "lo", "up"},
        {"-n", ns_b, "link", "set", "lo", "up"},
        {"-n", ns_a, "link", "set", veth_a, "up"},
        {"-n", ns_b, "link", "set", veth_b, "up"},
    };
    for (const auto& s : steps) {
      auto r = ip(s);
      if (r.status != 0) {
        std::string cmd = "ip";
        for (const auto& a : s) cmd += " " + a;
        return "`" + cmd + "` failed: " + r.output;
      }
    }
    return "";
  }

  // The veth end in B, down or up (the cut and the repair).
  bool set_link_b(bool up) { return ip({"-n", ns_b, "link", "set", veth_b, up ? "up" : "down"}).status == 0; }
  // A veth brought up reports its carrier a moment later, and until then a connect can fail at once:
  // "restored" means both ends say LOWER_UP (bounded: false after 5 s).
  bool wait_link_up() {
    for (int i = 0; i < 500; ++i) {
      auto a = ip({"-n", ns_a, "-o", "link", "show", veth_a});
      auto b = ip({"-n", ns_b, "-o", "link", "show", veth_b});
      if (a.output.find("LOWER_UP") != std::string::npos && b.output.find("LOWER_UP") != std::string::npos)
        return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return false;
  }

  void teardown() {
    (void)ip({"netns", "del", ns_a});
    (void)ip({"netns", "del", ns_b});
  }

  std::string ns_a, ns_b, veth_a, veth_b, addr_a, addr_b;
};

// The inode of a network namespace file ("net:[inode]" of /proc/.../ns/net).
ino_t ns_inode(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 ? st.st_ino : 0;
}

// Moves the calling thread into a named network namespace and back on destruction. Threads it
// creates meanwhile (an engine's reactors) stay in the namespace for good.
class enter_netns {
 public:
  explicit enter_netns(const std::string& name) {
    saved_ = ::open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
    int fd = ::open(("/run/netns/" + name).c_str(), O_RDONLY | O_CLOEXEC);
    entered_ = saved_ >= 0 && fd >= 0 && ::setns(fd, CLONE_NEWNET) == 0;
    if (fd >= 0) ::close(fd);
  }
  ~enter_netns() {
    if (entered_) (void)::setns(saved_, CLONE_NEWNET);
    if (saved_ >= 0) ::close(saved_);
  }
  enter_netns(const enter_netns&) = delete;
  enter_netns& operator=(const enter_netns&) = delete;
  bool ok() const { return entered_; }

 private:
  int saved_ = -1;
  bool entered_ = false;
};

struct hello {
  std::string segment;
  std::uint64_t buffer = 0, length = 0;
  int pid = 0;
};
hello parse_hello(const std::string& line) {
  auto j = nlohmann::json::parse(line);
  return {j["segment"], j["buffer"], j["length"], j["pid"]};
}

struct heap_buf {
  std::byte* p;
  explicit heap_buf(std::size_t n) : p(static_cast<std::byte*>(std::aligned_alloc(4096, (n + 4095) / 4096 * 4096))) {}
  ~heap_buf() { std::free(p); }
  heap_buf(const heap_buf&) = delete;
  heap_buf& operator=(const heap_buf&) = delete;
};

// A peer process in namespace `ns`, listening on `host`.
bool start_peer_in(child_peer& peer, const std::string& ns, const std::string& host, std::size_t size,
                   bool shared) {
  std::vector<std::string> args{"netns", "exec", ns, peer_exe(), "--host", host, "--size", std::to_string(size),
                                "--transports", shared ? "shm,tcp" : "tcp"};
  if (shared) args.push_back("--shared");
  return peer.start(ip_exe(), args);
}

// The initiator, created by a thread that is in namespace A (so its listener and reactors are there).
std::unique_ptr<engine> make_initiator(const netns_pair& net, std::vector<std::string> transports) {
  engine_config c;
  c.metadata = "P2PHANDSHAKE";
  c.listen_host = net.addr_a;
  c.transports = std::move(transports);
  c.batch_deadline = batch_deadline;
  c.connect_timeout = 1s;
  auto e = engine::create(c);
  REQUIRE(e);
  return std::move(*e);
}

bool typed_link_error(const std::error_code& e) {
  return e == te_errc::peer_unreachable || e == std::errc::timed_out;
}

// Sets up the namespaces and enters A, or says why the case is skipped.
#define NETNS_CASE_SETUP(net, inside)                                         \
  if (peer_exe().empty()) {                                                   \
    MESSAGE("SKIP: YUTU_TEST_PEER is not set (run through meson test)");      \
    return;                                                                   \
  }                                                                           \
  netns_pair net;                                                             \
  if (auto why = net.setup(); !why.empty()) {                                 \
    MESSAGE("SKIP: two network namespaces cannot be set up here: " << why);   \
    return;                                                                   \
  }                                                                           \
  enter_netns inside(net.ns_a);                                               \
  REQUIRE(inside.ok())

}  // namespace

TEST_CASE("netns: threads created inside a namespace stay there") {
  const ino_t before = ns_inode("/proc/thread-self/ns/net");
  ino_t a = 0, child = 0;
  std::atomic<bool> leave{false};
  std::atomic<ino_t> child_after{0};
  std::thread lingering;
  {
    NETNS_CASE_SETUP(net, inside);
    a = ns_inode("/run/netns/" + net.ns_a);
    CHECK(a != before);
    CHECK(ns_inode("/proc/thread-self/ns/net") == a);
    std::thread([&] { child = ns_inode("/proc/thread-self/ns/net"); }).join();
    CHECK(child == a);
    // A thread outlives its creator's return to the original namespace, as an engine's reactors do.
    lingering = std::thread([&] {
      while (!leave.load()) std::this_thread::sleep_for(1ms);
      child_after = ns_inode("/proc/thread-self/ns/net");
    });
  }
  CHECK(ns_inode("/proc/thread-self/ns/net") == before);
  if (lingering.joinable()) {
    leave = true;
    lingering.join();
    CHECK(child_after.load() == a);
  }
}

TEST_CASE("netns: write and read over the veth, 1 B to 64 MiB, through tcp and never shm") {
  NETNS_CASE_SETUP(net, inside);
  const std::size_t size = (64ull << 20) + 64;
  child_peer peer;
  // The target offers shm with memfd-backed memory: only the host identity keeps shm out.
  REQUIRE(start_peer_in(peer, net.ns_b, net.addr_b, size, /*shared=*/true));
  auto h = parse_hello(peer.hello());
  CHECK(h.segment == net.addr_b + ":" + h.segment.substr(h.segment.rfind(':') + 1));
  auto init = make_initiator(net, {"shm", "tcp"});
  auto seg = yutu::sync_wait(init->open_segment(h.segment));
  REQUIRE(seg);
  auto theirs = init->segment_descriptor(*seg);
  auto ours = init->segment_descriptor(0);
  REQUIRE(theirs);
  REQUIRE(ours);
  CHECK(theirs->host_id != ours->host_id);

  heap_buf src(size + 16), dst(size + 16);
  int n = 0;
  for (std::size_t len : {std::size_t(1), std::size_t(4097), std::size_t(65537) + 2, std::size_t(4) << 20,
                          std::size_t(64) << 20}) {
    const std::size_t off = len == (std::size_t(64) << 20) ? 0 : 5;
    CAPTURE(len);
    fill_pattern(src.p + 1, len, static_cast<unsigned>(len * 7 + off));
    auto w = yutu::sync_wait(init->write(*seg, src.p + 1, h.buffer + off, len));
    REQUIRE(w);
    CHECK(peer.command("sum " + std::to_string(off) + " " + std::to_string(len)) ==
          std::to_string(fnv1a(src.p + 1, len)));
    std::memset(dst.p, 0, 64);
    auto r = yutu::sync_wait(init->read(*seg, dst.p + 3, h.buffer + off, len));
    REQUIRE(r);
    CHECK(fnv1a(dst.p + 3, len) == fnv1a(src.p + 1, len));
    n += 2;
  }
  CHECK(init->counters("tcp").requests == static_cast<std::uint64_t>(n));
  CHECK(init->counters("shm").requests == 0);
  CHECK(init->counters("shm").failures == 0);
  CHECK(init->counters("shm").fallbacks_from == 0);
  // The peer is on "another host": large writes left with SEND_ZC where this kernel has it (the
  // bytes above were verified all the same); small ones were copied.
  yutu::io::reactor probe;
  if (probe.features().send_zc) {
    const auto zc = init->counters("tcp").zero_copy_bytes;
    CHECK(zc >= (std::size_t(64) << 20));
    CHECK(zc < init->counters("tcp").bytes);
  } else {
    MESSAGE("no SEND_ZC in this kernel: the zero-copy path was not exercised");
  }
  CHECK(peer.exit_cleanly() == 0);
}

TEST_CASE("netns: the link cut mid-batch fails typed within the deadline; restored, the engine reconnects") {
  NETNS_CASE_SETUP(net, inside);
  const std::size_t size = 256ull << 20, piece = 16ull << 20;
  child_peer peer;
  REQUIRE(start_peer_in(peer, net.ns_b, net.addr_b, size, /*shared=*/false));
  auto h = parse_hello(peer.hello());
  auto init = make_initiator(net, {"tcp"});
  auto seg = yutu::sync_wait(init->open_segment(h.segment));
  REQUIRE(seg);
  heap_buf src(size);
  fill_pattern(src.p, size, 3);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, h.buffer, 4096)));  // connections are up

  // 2 GiB in 16 MiB requests over the 256 MiB buffer: far more than can finish before the cut.
  std::vector<transfer_request> batch;
  for (std::size_t i = 0; i < 128; ++i) {
    const std::size_t off = (i * piece) % size;
    batch.push_back({opcode::write, src.p + off, *seg, h.buffer + off, piece});
  }
  std::atomic<bool> cut{false};
  std::chrono::steady_clock::time_point cut_at{};
  std::thread cutter([&] {
    // Cut once the batch is flowing: a request of it has completed (the warm-up was the first).
    const auto give_up = std::chrono::steady_clock::now() + 5s;
    while (init->counters("tcp").requests < 2 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(1ms);
    cut_at = std::chrono::steady_clock::now();
    cut = net.set_link_b(false);
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto res = yutu::sync_wait(init->transfer(batch));
  const auto t1 = std::chrono::steady_clock::now();
  cutter.join();
  REQUIRE(cut.load());
  MESSAGE("cut after " << std::chrono::duration_cast<std::chrono::milliseconds>(cut_at - t0).count()
                       << " ms, batch ended after "
                       << std::chrono::duration_cast<std::chrono::milliseconds>(t1 - t0).count() << " ms");
  CHECK(t1 - t0 < batch_deadline + 1s);
  CHECK_FALSE(res.ok());
  std::size_t failed = 0;
  for (auto& e : res.errors) {
    if (!e) continue;
    ++failed;
    CAPTURE(e.message());
    CHECK(typed_link_error(e));
  }
  CHECK(failed > 0);
  MESSAGE(failed << " of " << res.errors.size() << " requests failed: " << res.first_error().message());

  // With the link still down, a new transfer fails typed and in time, too.
  const auto t2 = std::chrono::steady_clock::now();
  auto down = yutu::sync_wait(init->write(*seg, src.p, h.buffer, 65536));
  REQUIRE_FALSE(down);
  CAPTURE(down.error().message());
  CHECK(typed_link_error(down.error()));
  CHECK(std::chrono::steady_clock::now() - t2 < batch_deadline + 1s);

  // The link is back: the same engine and segment handle work again, over fresh connections.
  REQUIRE(net.set_link_b(true));
  REQUIRE(net.wait_link_up());
  fill_pattern(src.p, 4 << 20, 9);
  auto again = yutu::sync_wait(init->write(*seg, src.p, h.buffer, 4 << 20));
  CAPTURE(again ? std::string("ok") : again.error().message());
  REQUIRE(again);
  CHECK(peer.command("sum 0 " + std::to_string(4 << 20)) == std::to_string(fnv1a(src.p, 4 << 20)));
  heap_buf dst(4 << 20);
  REQUIRE(yutu::sync_wait(init->read(*seg, dst.p, h.buffer, 4 << 20)));
  CHECK(fnv1a(dst.p, 4 << 20) == fnv1a(src.p, 4 << 20));
  CHECK(peer.exit_cleanly() == 0);
}

TEST_CASE("netns: the target killed in its namespace fails the batch typed; a new target is reachable") {
  NETNS_CASE_SETUP(net, inside);
  const std::size_t size = 64ull << 20, piece = 16ull << 20;
  child_peer peer;
  REQUIRE(start_peer_in(peer, net.ns_b, net.addr_b, size, /*shared=*/false));
  auto h = parse_hello(peer.hello());
  auto init = make_initiator(net, {"tcp"});
  auto seg = yutu::sync_wait(init->open_segment(h.segment));
  REQUIRE(seg);
  heap_buf src(size);
  REQUIRE(yutu::sync_wait(init->write(*seg, src.p, h.buffer, 4096)));
  std::vector<transfer_request> batch;
  for (std::size_t i = 0; i < 128; ++i) {
    const std::size_t off = (i * piece) % size;
    batch.push_back({opcode::write, src.p + off, *seg, h.buffer + off, piece});
  }
  std::thread killer([&] {
    const auto give_up = std::chrono::steady_clock::now() + 5s;
    while (init->counters("tcp").requests < 2 && std::chrono::steady_clock::now() < give_up)
      std::this_thread::sleep_for(1ms);
    peer.kill_now();
  });
  const auto t0 = std::chrono::steady_clock::now();
  auto res = yutu::sync_wait(init->transfer(batch));
  killer.join();
  CHECK(std::chrono::steady_clock::now() - t0 < batch_deadline + 1s);
  CHECK_FALSE(res.ok());
  for (auto& e : res.errors) {
    if (!e) continue;
    CAPTURE(e.message());
    CHECK((typed_link_error(e) || e == te_errc::stale_segment || e == yutu::errc::protocol_error));
  }
  // The dead target keeps failing fast and typed.
  auto dead = yutu::sync_wait(init->write(*seg, src.p, h.buffer, 64));
  REQUIRE_FALSE(dead);

  // A new target in the same namespace: the engine is still fine.
  child_peer second;
  REQUIRE(start_peer_in(second, net.ns_b, net.addr_b, 1 << 20, /*shared=*/false));
  auto h2 = parse_hello(second.hello());
  auto seg2 = yutu::sync_wait(init->open_segment(h2.segment));
  REQUIRE(seg2);
  fill_pattern(src.p, 1 << 20, 11);
  REQUIRE(yutu::sync_wait(init->write(*seg2, src.p, h2.buffer, 1 << 20)));
  CHECK(second.command("sum 0 " + std::to_string(1 << 20)) == std::to_string(fnv1a(src.p, 1 << 20)));
  CHECK(second.exit_cleanly() == 0);
}
