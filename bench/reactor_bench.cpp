// reactor_bench: what one reactor thread costs, and how close yutu's sockets come to the physical
// references measured in the same run.
//
//   nop       K coroutines on one reactor each looping `co_await io::nop()`: ops/s per thread, against
//             a hand-written liburing loop (same ring flags, same K SQEs per enter).
//   pingpong  64-byte TCP round trips on loopback, yutu client and echo server each on its own reactor
//             thread, against two plain threads doing blocking send/recv with TCP_NODELAY.
//   stream    TCP streaming on loopback (1 and 2 connections, 128 KiB and 1 MiB writes), a yutu sender
//             reactor looping send_all and a yutu receiver reactor discarding what it recv()s, against
//             iperf3 (one client thread, one server thread, as iperf3 3.12 is) at the same settings.
//
// The machine is shared and noisy, so every figure is the best of --repeats runs and the yutu and
// reference runs alternate, so both sides see the same noise. The last line of stdout is one JSON
// object holding every figure, ratio and the individual runs.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "yutu/error.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/socket.hpp"

namespace {

using clk = std::chrono::steady_clock;
using json = nlohmann::json;
using namespace std::chrono_literals;

struct options {
  double duration = 3.0;  // seconds per measurement
  int repeats = 3;        // best of
  bool quick = false;
  std::string only;  // "", "nop", "pingpong", "stream"
};

double seconds_since(clk::time_point t0) { return std::chrono::duration<double>(clk::now() - t0).count(); }

[[noreturn]] void die(const char* what, const std::error_code& ec) {
  std::fprintf(stderr, "reactor_bench: %s: %s\n", what, ec.message().c_str());
  std::exit(2);
}
[[noreturn]] void die_errno(const char* what) { die(what, {errno, std::system_category()}); }

// --- the report: table rows plus the JSON line ---

struct row {
  std::string figure, yutu, reference, ratio, target, verdict;
};

struct report {
  std::vector<row> rows;
  json j = {{"bench", "reactor"}};
  json runs = json::object();
  std::vector<std::string> notes;

  void print() const {
    const char* head[] = {"figure", "yutu", "reference", "ratio", "target", "result"};
    std::size_t w[6];
    for (int i = 0; i < 6; ++i) w[i] = std::strlen(head[i]);
    for (const row& r : rows) {
      const std::string* c[] = {&r.figure, &r.yutu, &r.reference, &r.ratio, &r.target, &r.verdict};
      for (int i = 0; i < 6; ++i) w[i] = std::max(w[i], c[i]->size());
    }
    auto line = [&](const std::string* c[]) {
      std::printf("|");
      for (int i = 0; i < 6; ++i) std::printf(" %-*s |", static_cast<int>(w[i]), c[i]->c_str());
      std::printf("\n");
    };
    std::string hs[6];
    for (int i = 0; i < 6; ++i) hs[i] = head[i];
    const std::string* hp[] = {&hs[0], &hs[1], &hs[2], &hs[3], &hs[4], &hs[5]};
    line(hp);
    std::string dash[6];
    for (int i = 0; i < 6; ++i) dash[i] = std::string(w[i], '-');
    const std::string* dp[] = {&dash[0], &dash[1], &dash[2], &dash[3], &dash[4], &dash[5]};
    line(dp);
    for (const row& r : rows) {
      const std::string* c[] = {&r.figure, &r.yutu, &r.reference, &r.ratio, &r.target, &r.verdict};
      line(c);
    }
    for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
  }
};

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// Relative spread of repeated runs, (max - min) / best: how noisy the machine was for this figure.
double spread(const std::vector<double>& v) {
  if (v.size() < 2) return 0;
  auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  double best = *hi;
  return best > 0 ? (*hi - *lo) / best : 0;
}

// A coroutine that starts at once and frees itself; `live` counts the ones still running.
struct detached {
  struct promise_type {
    detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

detached spawn(yutu::task<void> t, std::size_t& live) {
  co_await std::move(t);
  --live;
}

// ============================================================================================
// (a) nop rate
// ============================================================================================

yutu::task<void> nop_worker(std::uint64_t& count, const bool& stop) {
  while (!stop) {
    auto r = co_await yutu::io::nop();
    if (!r) die("nop", r.error());
    ++count;
  }
}

// A rate per thread: operations per second of the measuring thread's own CPU time (user + kernel,
// CLOCK_THREAD_CPUTIME_ID), which is what a reactor with a core to itself would sustain, and also per
// second of wall time, which on a shared machine also measures how often the scheduler ran us.
struct nop_result {
  double mops_cpu = 0;
  double mops_wall = 0;
  double ops_per_enter = 0;
};

double thread_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) / 1e9;
}

yutu::task<nop_result> nop_round(yutu::io::reactor& r, std::size_t k, double secs) {
  std::uint64_t count = 0;
  bool stop = false;
  std::size_t live = 0;
  for (std::size_t i = 0; i < k; ++i) {
    ++live;
    spawn(nop_worker(count, stop), live);
  }
  (void)co_await yutu::io::sleep_for(std::chrono::duration<double>(std::min(0.2, secs / 5)));
  const std::uint64_t c0 = count;
  const std::uint64_t e0 = r.statistics().enters;
  const auto t0 = clk::now();
  const double cpu0 = thread_cpu_seconds();
  (void)co_await yutu::io::sleep_for(std::chrono::duration<double>(secs));
  const std::uint64_t c1 = count;
  const std::uint64_t e1 = r.statistics().enters;
  const double cpu = thread_cpu_seconds() - cpu0;
  const double dt = seconds_since(t0);
  stop = true;
  while (live > 0) (void)co_await yutu::io::nop();
  const auto ops = static_cast<double>(c1 - c0);
  nop_result res;
  res.mops_cpu = ops / cpu / 1e6;
  res.mops_wall = ops / dt / 1e6;
  res.ops_per_enter = e1 > e0 ? ops / static_cast<double>(e1 - e0) : 0;
  co_return res;
}

nop_result yutu_nop(std::size_t k, double secs) {
  yutu::io::reactor r;
  return r.block_on(nop_round(r, k, secs));
}

// The physical reference: the same ring setup, K NOP SQEs per io_uring_enter, no coroutines.
nop_result raw_nop(std::size_t k, double secs) {
  io_uring ring;
  io_uring_params p{};
  p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_CQSIZE;
  p.cq_entries = 8192;
  if (io_uring_queue_init_params(4096, &ring, &p) < 0) {
    p = {};
    if (int rc = io_uring_queue_init_params(4096, &ring, &p); rc < 0) die("io_uring_queue_init", {-rc, std::system_category()});
  }
  const auto warm_end = clk::now() + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(std::min(0.2, secs / 5)));
  const auto window = std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(secs));
  std::uint64_t count = 0, enters = 0;
  clk::time_point t0{}, end{};
  double cpu0 = 0;
  bool measuring = false;
  for (;;) {
    for (std::size_t i = 0; i < k; ++i) {
      io_uring_sqe* sqe = io_uring_get_sqe(&ring);
      io_uring_prep_nop(sqe);
      io_uring_sqe_set_data64(sqe, i);
    }
    io_uring_submit_and_wait(&ring, static_cast<unsigned>(k));
    ++enters;
    unsigned head, n = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring, head, cqe) {
      ++n;
    }
    io_uring_cq_advance(&ring, n);
    count += n;
    const auto now = clk::now();
    if (!measuring) {
      if (now >= warm_end) {
        measuring = true;
        count = enters = 0;
        t0 = now;
        cpu0 = thread_cpu_seconds();
        end = now + window;
      }
    } else if (now >= end) {
      const double cpu = thread_cpu_seconds() - cpu0;
      io_uring_queue_exit(&ring);
      const auto ops = static_cast<double>(count);
      return {ops / cpu / 1e6, ops / std::chrono::duration<double>(now - t0).count() / 1e6,
              ops / static_cast<double>(enters)};
    }
  }
}

void bench_nop(const options& o, report& rep) {
  const std::vector<std::size_t> ks = {64, 256, 1024};
  double best_overall = 0, best_wall = 0;
  std::string spreads;
  for (std::size_t k : ks) {
    std::vector<double> ys, rs, yw, rw;
    double per_enter = 0;
    for (int i = 0; i < o.repeats; ++i) {
      const nop_result y = yutu_nop(k, o.duration);
      const nop_result r = raw_nop(k, o.duration);
      ys.push_back(y.mops_cpu);
      rs.push_back(r.mops_cpu);
      yw.push_back(y.mops_wall);
      rw.push_back(r.mops_wall);
      per_enter = std::max(per_enter, y.ops_per_enter);
    }
    const double y = *std::max_element(ys.begin(), ys.end());
    const double ref = *std::max_element(rs.begin(), rs.end());
    const double wall = *std::max_element(yw.begin(), yw.end());
    best_overall = std::max(best_overall, y);
    best_wall = std::max(best_wall, wall);
    const std::string key = "nop_k" + std::to_string(k), raw_key = "raw_nop_k" + std::to_string(k);
    rep.j[key + "_mops"] = y;
    rep.j[key + "_wall_mops"] = wall;
    rep.j[key + "_ops_per_enter"] = per_enter;
    rep.j[raw_key + "_mops"] = ref;
    rep.j[raw_key + "_wall_mops"] = *std::max_element(rw.begin(), rw.end());
    rep.j[key + "_ratio"] = y / ref;
    rep.runs[key + "_mops"] = ys;
    rep.runs[key + "_wall_mops"] = yw;
    rep.runs[raw_key + "_mops"] = rs;
    rep.runs[raw_key + "_wall_mops"] = rw;
    rep.rows.push_back({"nop per thread, K=" + std::to_string(k), fmt("%.2f M/s", y),
                        fmt("%.2f M/s raw liburing", ref), fmt("%.2f", y / ref), ">= 5 M/s",
                        y >= 5.0 ? "pass" : "FAIL"});
    spreads += (spreads.empty() ? "" : ", ") + ("K=" + std::to_string(k) + " ") +
               fmt("%.0f%%", 100 * spread(ys)) + fmt("/%.0f%%", 100 * spread(rs));
  }
  rep.j["nop_mops_per_thread"] = best_overall;
  rep.j["nop_wall_mops"] = best_wall;
  rep.notes.push_back("nop: operations per second of the reactor thread's CPU time (user + kernel); per wall-clock "
                      "second the best was " + fmt("%.2f M/s", best_wall) + " (the machine is shared)");
  if (o.repeats > 1) rep.notes.push_back("nop: best of " + std::to_string(o.repeats) + "; run-to-run spread yutu/raw " + spreads);
}

// ============================================================================================
// (b) 64-byte ping-pong
// ============================================================================================

constexpr std::size_t kPingSize = 64;

struct latency {
  double p50_us = 0, p99_us = 0;
  std::size_t samples = 0;
};

latency summarize(std::vector<std::uint32_t>& ns) {
  latency l;
  l.samples = ns.size();
  if (ns.empty()) return l;
  std::sort(ns.begin(), ns.end());
  auto at = [&](double q) { return ns[std::min(ns.size() - 1, static_cast<std::size_t>(q * static_cast<double>(ns.size())))] / 1e3; };
  l.p50_us = at(0.50);
  l.p99_us = at(0.99);
  return l;
}

// How the ping-pong sends. `send_all` is the public API: it tries send(2) with MSG_DONTWAIT on the
// reactor thread first and uses the ring only for what did not fit. `ring_only` is the previous version
// for comparison: every send goes through the ring. Reported as information only.
enum class send_mode { send_all, ring_only };

yutu::task<yutu::result<void>> send_message(yutu::io::tcp_stream& s, std::span<const std::byte> buf, send_mode m) {
  if (m == send_mode::ring_only) {
    while (!buf.empty()) {
      auto n = co_await s.send(buf);
      if (!n) co_return yutu::fail(n.error());
      if (*n == 0) co_return yutu::fail(yutu::errc::closed);
      buf = buf.subspan(*n);
    }
    co_return yutu::ok();
  }
  co_return co_await s.send_all(buf);
}

yutu::task<void> yutu_echo_server(yutu::io::tcp_listener& l, send_mode m) {
  auto s = co_await l.accept();
  if (!s) die("accept", s.error());
  std::byte buf[kPingSize];
  for (;;) {
    if (auto r = co_await s->recv_exact(buf); !r) break;  // the client closed: done
    if (auto r = co_await send_message(*s, buf, m); !r) break;
  }
}

yutu::task<void> yutu_ping_client(yutu::io::address to, double secs, send_mode m, std::vector<std::uint32_t>& samples) {
  auto s = co_await yutu::io::tcp_stream::connect(to);
  if (!s) die("connect", s.error());
  std::byte buf[kPingSize] = {};
  const double warm = std::min(0.2, secs / 5);
  const auto t_start = clk::now();
  const auto warm_end = t_start + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(warm));
  const auto end = warm_end + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(secs));
  for (;;) {
    const auto t0 = clk::now();
    if (t0 >= end) break;
    if (auto r = co_await send_message(*s, buf, m); !r) die("send", r.error());
    if (auto r = co_await s->recv_exact(buf); !r) die("recv_exact", r.error());
    if (t0 >= warm_end) samples.push_back(static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now() - t0).count()));
  }
}

// Client and echo server each on a reactor of its own thread; neither spins: each sleeps in
// io_uring_enter when it has nothing to do, as a blocking socket sleeps in recv (net.core.busy_read
// is 0 here, so blocking sockets do not busy-poll either).
latency yutu_pingpong(double secs, send_mode m) {
  auto l = yutu::io::tcp_listener::bind(yutu::io::address::ipv4_loopback(0));
  if (!l) die("listen", l.error());
  const auto to = l->local_address();
  std::thread server([&] {
    yutu::io::reactor r;
    r.block_on(yutu_echo_server(*l, m));
  });
  std::vector<std::uint32_t> samples;
  samples.reserve(static_cast<std::size_t>(secs * 200000) + 1024);
  std::thread client([&] {
    yutu::io::reactor r;
    r.block_on(yutu_ping_client(to, secs, m, samples));
  });
  client.join();
  server.join();
  return summarize(samples);
}

// The reference: blocking send/recv on two plain threads, TCP_NODELAY, MSG_WAITALL for the reply.
bool blocking_send(int fd, const std::byte* p, std::size_t n) {
  while (n > 0) {
    ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}
bool blocking_recv(int fd, std::byte* p, std::size_t n) {
  while (n > 0) {
    ssize_t k = ::recv(fd, p, n, MSG_WAITALL);
    if (k <= 0) return false;
    p += k;
    n -= static_cast<std::size_t>(k);
  }
  return true;
}
void set_nodelay(int fd) {
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

latency blocking_pingpong(double secs) {
  int lfd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof a;
  if (::bind(lfd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(lfd, 16) != 0 ||
      ::getsockname(lfd, reinterpret_cast<sockaddr*>(&a), &alen) != 0)
    die_errno("blocking listen");
  std::thread server([&] {
    int c = ::accept4(lfd, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) die_errno("accept");
    set_nodelay(c);
    std::byte buf[kPingSize];
    while (blocking_recv(c, buf, sizeof buf) && blocking_send(c, buf, sizeof buf)) {
    }
    ::close(c);
  });
  std::vector<std::uint32_t> samples;
  samples.reserve(static_cast<std::size_t>(secs * 200000) + 1024);
  std::thread client([&] {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) die_errno("connect");
    set_nodelay(fd);
    std::byte buf[kPingSize] = {};
    const double warm = std::min(0.2, secs / 5);
    const auto warm_end = clk::now() + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(warm));
    const auto end = warm_end + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(secs));
    for (;;) {
      const auto t0 = clk::now();
      if (t0 >= end) break;
      if (!blocking_send(fd, buf, sizeof buf) || !blocking_recv(fd, buf, sizeof buf)) die_errno("blocking round trip");
      if (t0 >= warm_end) samples.push_back(static_cast<std::uint32_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(clk::now() - t0).count()));
    }
    ::close(fd);
  });
  client.join();
  server.join();
  ::close(lfd);
  return summarize(samples);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void bench_pingpong(const options& o, report& rep) {
  // Many short slices, the three variants taking turns going first, so a burst of load from
  // elsewhere hits all alike; the best slice is the figure, and the median is reported too.
  const double slice = std::min(o.duration, 0.5);
  const int slices = o.repeats * std::max(1, static_cast<int>(std::lround(o.duration / slice)));
  std::vector<double> y50, y99, b50, b99, f50;
  std::size_t ys = 0, bs = 0;
  for (int i = 0; i < slices; ++i) {
    for (int j = 0; j < 3; ++j) {
      switch ((i + j) % 3) {
        case 0: {
          latency y = yutu_pingpong(slice, send_mode::send_all);
          y50.push_back(y.p50_us);
          y99.push_back(y.p99_us);
          ys += y.samples;
          break;
        }
        case 1: {
          latency b = blocking_pingpong(slice);
          b50.push_back(b.p50_us);
          b99.push_back(b.p99_us);
          bs += b.samples;
          break;
        }
        default:
          f50.push_back(yutu_pingpong(slice, send_mode::ring_only).p50_us);
      }
    }
  }
  auto best = [](const std::vector<double>& v) { return *std::min_element(v.begin(), v.end()); };
  const double yp50 = best(y50), yp99 = best(y99), bp50 = best(b50), bp99 = best(b99), fp50 = best(f50);
  rep.j["pingpong_p50_us"] = yp50;
  rep.j["pingpong_p99_us"] = yp99;
  rep.j["blocking_p50_us"] = bp50;
  rep.j["blocking_p99_us"] = bp99;
  rep.j["pingpong_p50_ratio"] = yp50 / bp50;
  rep.j["pingpong_p99_ratio"] = yp99 / bp99;
  rep.j["pingpong_p50_ratio_median"] = median(y50) / median(b50);
  rep.j["pingpong_ring_only_p50_us"] = fp50;
  rep.j["pingpong_ring_only_p50_ratio"] = fp50 / bp50;
  rep.j["pingpong_slices"] = slices;
  rep.j["pingpong_round_trips"] = ys;
  rep.j["blocking_round_trips"] = bs;
  rep.runs["pingpong_p50_us"] = y50;
  rep.runs["pingpong_p99_us"] = y99;
  rep.runs["blocking_p50_us"] = b50;
  rep.runs["blocking_p99_us"] = b99;
  rep.runs["pingpong_ring_only_p50_us"] = f50;
  rep.rows.push_back({"64 B ping-pong RTT p50", fmt("%.2f us", yp50), fmt("%.2f us blocking", bp50),
                      fmt("%.2f", yp50 / bp50), "<= 1.2x", yp50 / bp50 <= 1.2 ? "pass" : "FAIL"});
  rep.rows.push_back({"64 B ping-pong RTT p99", fmt("%.2f us", yp99), fmt("%.2f us blocking", bp99),
                      fmt("%.2f", yp99 / bp99), "-", "info"});
  rep.rows.push_back({"  previous version: every send via the ring", fmt("%.2f us", fp50), fmt("%.2f us blocking", bp50),
                      fmt("%.2f", fp50 / bp50), "-", "info"});
  rep.notes.push_back("ping-pong: best of " + std::to_string(slices) + " " + fmt("%.1f s", slice) +
                      " slices per variant, variants interleaved; median p50 " + fmt("%.2f", median(y50)) +
                      " us vs " + fmt("%.2f", median(b50)) + " us blocking (ratio " +
                      fmt("%.2f", median(y50) / median(b50)) + "); " + std::to_string(ys) + " / " +
                      std::to_string(bs) + " round trips");
}

// ============================================================================================
// (c) streaming throughput
// ============================================================================================

struct stream_case {
  int conns;
  std::size_t write_size;
  std::string key() const {
    return std::to_string(conns) + "conn_" + (write_size >= (1u << 20) ? std::to_string(write_size >> 20) + "m" : std::to_string(write_size >> 10) + "k");
  }
  std::string label() const {
    return std::to_string(conns) + (conns == 1 ? " conn, " : " conns, ") +
           (write_size >= (1u << 20) ? std::to_string(write_size >> 20) + " MiB" : std::to_string(write_size >> 10) + " KiB") + " writes";
  }
};

// The receiver recv()s into a buffer of the write size, as iperf3's server reads in blocks of the
// client's -l. A larger one (1-4 MiB) measured no faster here: the copy into a buffer that no longer
// fits the L2 cache costs more than the recv calls it saves.
yutu::task<void> stream_receiver(yutu::io::tcp_stream s, std::size_t chunk, std::atomic<std::uint64_t>& bytes) {
  std::vector<std::byte> buf(chunk);
  for (;;) {
    auto n = co_await s.recv(buf);
    if (!n || *n == 0) break;
    bytes.fetch_add(*n, std::memory_order_relaxed);
  }
}

yutu::task<void> stream_server(yutu::io::tcp_listener& l, int conns, std::size_t chunk, std::atomic<std::uint64_t>& bytes) {
  std::size_t live = 0;
  for (int i = 0; i < conns; ++i) {
    auto s = co_await l.accept();
    if (!s) die("accept", s.error());
    ++live;
    spawn(stream_receiver(std::move(*s), chunk, bytes), live);
  }
  while (live > 0) (void)co_await yutu::io::sleep_for(1ms);
}

yutu::task<void> stream_sender(yutu::io::tcp_stream& s, std::span<const std::byte> buf, const std::atomic<bool>& stop) {
  while (!stop.load(std::memory_order_relaxed)) {
    if (auto r = co_await s.send_all(buf); !r) die("send_all", r.error());
  }
  (void)s.shutdown_write();
}

yutu::task<void> stream_client(yutu::io::address to, int conns, std::span<const std::byte> buf,
                               const std::atomic<bool>& stop) {
  std::vector<yutu::io::tcp_stream> streams;
  for (int i = 0; i < conns; ++i) {
    auto s = co_await yutu::io::tcp_stream::connect(to);
    if (!s) die("connect", s.error());
    streams.push_back(std::move(*s));
  }
  std::size_t live = 0;
  for (auto& s : streams) {
    ++live;
    spawn(stream_sender(s, buf, stop), live);
  }
  while (live > 0) (void)co_await yutu::io::sleep_for(1ms);
}

// Gbit/s over `secs` after a warm-up, measured at the receiver.
double yutu_stream(const stream_case& c, double secs) {
  auto l = yutu::io::tcp_listener::bind(yutu::io::address::ipv4_loopback(0));
  if (!l) die("listen", l.error());
  const auto to = l->local_address();
  std::atomic<std::uint64_t> bytes{0};
  std::atomic<bool> stop{false};
  std::vector<std::byte> payload(c.write_size, std::byte{0x5a});
  std::thread server([&] {
    yutu::io::reactor r;
    r.block_on(stream_server(*l, c.conns, c.write_size, bytes));
  });
  std::thread client([&] {
    yutu::io::reactor r;
    r.block_on(stream_client(to, c.conns, payload, stop));
  });
  std::this_thread::sleep_for(std::chrono::duration<double>(std::min(0.3, secs / 5)));
  const std::uint64_t b0 = bytes.load();
  const auto t0 = clk::now();
  std::this_thread::sleep_for(std::chrono::duration<double>(secs));
  const std::uint64_t b1 = bytes.load();
  const double dt = seconds_since(t0);
  stop.store(true);
  client.join();
  server.join();
  return static_cast<double>(b1 - b0) * 8 / dt / 1e9;
}

// --- iperf3 as a child process ---

std::optional<std::string> find_in_path(const char* name) {
  const char* path = std::getenv("PATH");
  std::stringstream ss(path ? path : "/usr/bin:/bin");
  std::string dir;
  while (std::getline(ss, dir, ':')) {
    std::string p = dir + "/" + name;
    if (::access(p.c_str(), X_OK) == 0) return p;
  }
  return std::nullopt;
}

std::uint16_t free_port() {
  auto l = yutu::io::tcp_listener::bind(yutu::io::address::ipv4_loopback(0));
  if (!l) die("listen", l.error());
  return l->local_address().port();
}

// Whether something listens on `port` (IPv4 or IPv6), read from /proc so no connection is made: a
// probe connection would be taken by `iperf3 -s -1` as its one client.
bool listening(std::uint16_t port) {
  char want[16];
  std::snprintf(want, sizeof want, ":%04X", port);
  for (const char* f : {"/proc/net/tcp", "/proc/net/tcp6"}) {
    std::ifstream in(f);
    std::string line;
    std::getline(in, line);
    while (std::getline(in, line)) {
      std::istringstream ls(line);
      std::string sl, local, remote, state;
      ls >> sl >> local >> remote >> state;
      if (state == "0A" && local.size() >= 5 && local.compare(local.size() - 5, 5, want) == 0) return true;
    }
  }
  return false;
}

pid_t spawn_process(const std::vector<std::string>& args, int stdout_fd) {
  pid_t pid = ::fork();
  if (pid < 0) die_errno("fork");
  if (pid == 0) {
    int devnull = ::open("/dev/null", O_RDWR);
    ::dup2(devnull, 0);
    ::dup2(stdout_fd >= 0 ? stdout_fd : devnull, 1);
    ::dup2(devnull, 2);
    std::vector<char*> argv;
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return pid;
}

void reap_child(pid_t pid, double grace_s) {
  const auto end = clk::now() + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(grace_s));
  int st;
  while (::waitpid(pid, &st, WNOHANG) == 0) {
    if (clk::now() >= end) {
      ::kill(pid, SIGKILL);
      ::waitpid(pid, &st, 0);
      return;
    }
    std::this_thread::sleep_for(10ms);
  }
}

// iperf3's received Gbit/s, or nullopt (with a reason) if it could not be run.
std::optional<double> iperf3_stream(const std::string& exe, const stream_case& c, int secs, std::string& why) {
  const std::uint16_t port = free_port();
  const std::string p = std::to_string(port);
  pid_t server = spawn_process({exe, "-s", "-1", "-p", p}, -1);
  const auto ready_by = clk::now() + 5s;
  while (!listening(port)) {
    if (clk::now() >= ready_by) {
      reap_child(server, 0);
      why = "iperf3 server did not listen";
      return std::nullopt;
    }
    std::this_thread::sleep_for(5ms);
  }
  int out[2];
  if (::pipe2(out, O_CLOEXEC) != 0) die_errno("pipe");
  pid_t client = spawn_process({exe, "-c", "127.0.0.1", "-p", p, "-P", std::to_string(c.conns), "-l",
                                std::to_string(c.write_size), "-t", std::to_string(secs), "-J"},
                               out[1]);
  ::close(out[1]);
  std::string text;
  char buf[65536];
  for (ssize_t n; (n = ::read(out[0], buf, sizeof buf)) != 0;) {
    if (n < 0) {
      if (errno == EINTR) continue;
      break;
    }
    text.append(buf, static_cast<std::size_t>(n));
  }
  ::close(out[0]);
  reap_child(client, 5);
  reap_child(server, 5);
  try {
    json j = json::parse(text);
    if (j.contains("error")) {
      why = "iperf3: " + j["error"].get<std::string>();
      return std::nullopt;
    }
    return j.at("end").at("sum_received").at("bits_per_second").get<double>() / 1e9;
  } catch (const std::exception& e) {
    why = std::string("iperf3 output not understood: ") + e.what();
    return std::nullopt;
  }
}

void bench_stream(const options& o, report& rep) {
  const std::vector<stream_case> cases = {{1, 128 << 10}, {1, 1 << 20}, {2, 128 << 10}, {2, 1 << 20}};
  // iperf3 3.12 takes whole seconds; yutu runs as long, so both see the same window.
  const int secs = std::max(1, static_cast<int>(std::lround(o.duration)));
  const auto exe = find_in_path("iperf3");
  rep.j["iperf3"] = exe ? *exe : "missing";
  if (!exe) rep.notes.push_back("iperf3 not found in PATH: stream ratios are null");
  std::string spreads;
  for (const stream_case& c : cases) {
    std::vector<double> ys, is;
    std::string why;
    for (int i = 0; i < o.repeats; ++i) {
      ys.push_back(yutu_stream(c, secs));
      if (exe && why.empty()) {
        if (auto g = iperf3_stream(*exe, c, secs, why)) is.push_back(*g);
      }
    }
    const double y = *std::max_element(ys.begin(), ys.end());
    const std::string k = c.key();
    rep.j["stream_" + k + "_gbps"] = y;
    rep.runs["stream_" + k + "_gbps"] = ys;
    row r{"stream " + c.label(), fmt("%.1f Gbit/s", y), "", "", ">= 0.90x iperf3", ""};
    if (!is.empty() && why.empty()) {
      const double ref = *std::max_element(is.begin(), is.end());
      rep.j["iperf3_" + k + "_gbps"] = ref;
      rep.j["stream_" + k + "_ratio"] = y / ref;
      rep.runs["iperf3_" + k + "_gbps"] = is;
      r.reference = fmt("%.1f Gbit/s iperf3", ref);
      r.ratio = fmt("%.2f", y / ref);
      r.verdict = y / ref >= 0.9 ? "pass" : "FAIL";
      spreads += (spreads.empty() ? "" : ", ") + k + " " + fmt("%.0f%%", 100 * spread(ys)) +
                 fmt("/%.0f%%", 100 * spread(is));
    } else {
      rep.j["iperf3_" + k + "_gbps"] = nullptr;
      rep.j["stream_" + k + "_ratio"] = nullptr;
      r.reference = exe ? "iperf3 failed" : "iperf3 missing";
      r.ratio = "-";
      r.verdict = "n/a";
      if (!why.empty()) rep.notes.push_back("stream " + k + ": " + why);
    }
    rep.rows.push_back(r);
  }
  rep.j["stream_seconds"] = secs;
  if (o.repeats > 1 && !spreads.empty())
    rep.notes.push_back("stream: best of " + std::to_string(o.repeats) + ", yutu and iperf3 alternating; run-to-run spread yutu/iperf3 " + spreads);
}

// The 1-minute load average: how busy the (shared) machine was around the measurements.
double loadavg() {
  std::ifstream in("/proc/loadavg");
  double l = -1;
  in >> l;
  return l;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  bool duration_set = false, repeats_set = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "reactor_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--duration") {
      o.duration = std::atof(value().c_str());
      duration_set = true;
    } else if (a == "--repeats") {
      o.repeats = std::max(1, std::atoi(value().c_str()));
      repeats_set = true;
    } else if (a == "--quick") {
      o.quick = true;
    } else if (a == "--only") {
      o.only = value();
      if (o.only != "nop" && o.only != "pingpong" && o.only != "stream") {
        std::fprintf(stderr, "reactor_bench: --only takes nop, pingpong or stream\n");
        return 2;
      }
    } else if (a == "--help" || a == "-h") {
      std::printf(
          "usage: reactor_bench [--duration SECONDS] [--repeats N] [--quick] [--only nop|pingpong|stream]\n"
          "  --duration  seconds per measurement (default 3; iperf3 rounds it up to whole seconds)\n"
          "  --repeats   runs per figure, best of N for yutu and reference alike (default 3)\n"
          "  --quick     CI-sized: --duration 0.5 --repeats 1 unless given\n");
      return 0;
    } else {
      std::fprintf(stderr, "reactor_bench: unknown argument %s (try --help)\n", a.c_str());
      return 2;
    }
  }
  if (o.quick) {
    if (!duration_set) o.duration = 0.5;
    if (!repeats_set) o.repeats = 1;
  }
  if (o.duration <= 0) o.duration = 0.1;
  ::signal(SIGPIPE, SIG_IGN);

  report rep;
  rep.j["loadavg_start"] = loadavg();
  rep.j["duration_s"] = o.duration;
  rep.j["repeats"] = o.repeats;
  rep.j["cpus"] = std::thread::hardware_concurrency();
  if (o.only.empty() || o.only == "nop") bench_nop(o, rep);
  if (o.only.empty() || o.only == "pingpong") bench_pingpong(o, rep);
  if (o.only.empty() || o.only == "stream") bench_stream(o, rep);
  rep.j["loadavg_end"] = loadavg();
  rep.notes.push_back("1-minute load average " + fmt("%.2f", rep.j["loadavg_start"].get<double>()) + " at start, " +
                      fmt("%.2f", rep.j["loadavg_end"].get<double>()) + " at end, on " +
                      std::to_string(std::thread::hardware_concurrency()) + " CPUs");
  rep.print();
  rep.j["runs"] = rep.runs;
  std::printf("%s\n", rep.j.dump().c_str());
  return 0;
}
