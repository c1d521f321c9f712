// store_bench: the store client's put and get throughput and latency, against raw transfer-engine
// transfers of the same sizes over the same transport, measured in the same run (the physical
// reference: what the store adds is the master's round trips and its own bookkeeping).
//
// One process: an embedded store (master behind its RPC server, HTTP metadata server, a storage node
// with --node-memory) and a client that reaches the master over RPC on loopback, as a serving process
// would. For every transport (tcp; shm = same-host shared memory), object size (64 KiB, 1 MiB,
// 16 MiB) and batch (1, 32): put = batch_put_from of fresh keys (zero copy from registered memory;
// eviction makes room in steady state), get = batch_get_into of stored keys; raw = engine.transfer of
// the same batch (write for put, read for get) into memory of the node's engine. `--inflight`
// operations run at once (fewer for operations over 512 MiB), spread over the client engine's
// threads: each worker first does `co_await engine.schedule()`, as a serving process's caller should
// (`--own-reactor`: all on one reactor of the bench's own, paying a thread hop there and back per
// master call and per transfer). Before the figures of a transport, one write pass over the node's
// memory faults it in (steady state). Within a figure the store, the raw references and a master
// round trip (exist() of an absent key) are measured in turn, `--rounds` times; the round trip gives
// each figure the bound a store that waits for it cannot beat, and the process's CPU time per call
// (store against raw) the bound a machine with every core busy sets. `--defer-commit` measures
// reserved puts that commit in the background (client_config::defer_put_commit): each slice ends
// with flush(), so its time covers every commit. Output: a table, then one JSON line
// (last). First, as the floor under every master call, it measures a blocking loopback TCP round
// trip between two threads. `--transports rdma` runs the node and the client over RDMA NICs.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/store/client.hpp"
#include "yutu/store/embedded.hpp"

namespace {

using clk = std::chrono::steady_clock;
using yutu::task;
using namespace yutu::store;

struct options {
  double duration = 1.0;
  std::size_t rounds = 3;  // store and raw alternate this many times within a figure
  std::size_t inflight = 2;
  std::uint64_t node_memory = 2ull << 30;
  std::vector<std::uint64_t> sizes{64 << 10, 1 << 20, 16 << 20};
  std::vector<std::size_t> batches{1, 32};
  std::vector<std::string> transports{"tcp", "shm"};
  bool in_process_master = false;
  bool own_reactor = false;
  std::chrono::milliseconds replica_cache{0};
  std::uint64_t put_reservation = 0;
  bool defer_commit = false;
  bool hugepages = false;
  std::uint64_t nontemporal = yutu::store::client_config{}.engine.nontemporal_write_threshold;
};

struct sample {
  std::uint64_t bytes = 0;
  double seconds = 0;
  double cpu_seconds = 0;  // of the whole process (client, engine, master, node), user + system
  std::vector<double> lat_us;
  std::uint64_t errors = 0;
  std::string first_error;
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5))];
}

double mean(const std::vector<double>& v) {
  double t = 0;
  for (double x : v) t += x;
  return v.empty() ? 0 : t / static_cast<double>(v.size());
}

struct figure_ctx {
  client* c = nullptr;
  bool on_engine = true;  // workers move to the engine's threads first (the recommended way)
  yutu::transfer::segment_id raw_seg = 0;
  std::uint64_t raw_base = 0;
  // The second put reference ("fresh"): raw writes that walk the node's store memory as the store's
  // allocator does, each batch to the next place not written for a while, instead of rewriting one
  // cache-warm buffer. A serving store's puts land in memory freed by eviction long ago, so this is
  // the reference that isolates the store's own cost from where its bytes go.
  std::uint64_t fresh_base = 0, fresh_size = 0;
  std::atomic<std::uint64_t> fresh_next{0};
  std::uint64_t size = 0;
  std::size_t batch = 0;
  clk::time_point deadline;
  std::string prefix;
  std::size_t round = 0;  // slice of the figure: in the put keys, so each slice's are new
  bool deferred = false;  // client_config::defer_put_commit: puts end with a flush()
};

// Whether a worker goes on: until the figure's deadline, and at least three operations, so that a
// 512 MiB batch (16 MiB x 32) is not measured by one sample that may be its slowest.
bool more(const figure_ctx& f, std::size_t done) { return done < 3 || clk::now() < f.deadline; }

void note(sample& s, const std::error_code& ec) {
  if (!s.errors++) s.first_error = ec.message();
}

task<void> put_worker(figure_ctx& f, std::byte* buf, std::size_t w, sample& s) {
  if (f.on_engine) co_await f.c->engine().schedule();
  std::vector<std::string> keys(f.batch);
  std::vector<const void*> srcs;
  std::vector<std::uint64_t> sizes(f.batch, f.size);
  for (std::size_t k = 0; k < f.batch; ++k) srcs.push_back(buf + k * f.size);
  for (std::size_t it = 0; more(f, it); ++it) {
    for (std::size_t k = 0; k < f.batch; ++k) keys[k] = fmt::format("{}-{}-{}-{}-{}", f.prefix, f.round, w, it, k);
    auto t0 = clk::now();
    auto res = co_await f.c->batch_put_from(keys, srcs, sizes);
    s.lat_us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
    for (auto& r : res) {
      if (r)
        s.bytes += f.size;
      else
        note(s, r.error());
    }
  }
}

task<void> get_worker(figure_ctx& f, std::byte* buf, std::size_t w, sample& s) {
  if (f.on_engine) co_await f.c->engine().schedule();
  std::vector<std::string> keys;
  std::vector<void*> dsts;
  std::vector<std::uint64_t> sizes(f.batch, f.size);
  for (std::size_t k = 0; k < f.batch; ++k) {
    keys.push_back(fmt::format("{}-{}-{}", f.prefix, w, k));
    dsts.push_back(buf + k * f.size);
  }
  for (std::size_t it = 0; more(f, it); ++it) {
    auto t0 = clk::now();
    auto res = co_await f.c->batch_get_into(keys, dsts, sizes);
    s.lat_us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
    for (auto& r : res) {
      if (r)
        s.bytes += *r;
      else
        note(s, r.error());
    }
  }
}

task<void> raw_worker(figure_ctx& f, std::byte* buf, std::size_t w, yutu::transfer::opcode op, bool fresh,
                      sample& s) {
  if (f.on_engine) co_await f.c->engine().schedule();
  std::vector<yutu::transfer::transfer_request> reqs;
  for (std::size_t k = 0; k < f.batch; ++k)
    reqs.push_back({op, buf + k * f.size, f.raw_seg, f.raw_base + (w * f.batch + k) * f.size, f.size});
  auto& eng = f.c->engine();
  const std::uint64_t span = f.batch * f.size;
  const std::uint64_t places = fresh ? f.fresh_size / span : 0;
  for (std::size_t it = 0; more(f, it); ++it) {
    if (fresh) {
      std::uint64_t at = f.fresh_base + f.fresh_next.fetch_add(1, std::memory_order_relaxed) % places * span;
      for (std::size_t k = 0; k < f.batch; ++k) reqs[k].target_offset = at + k * f.size;
    }
    auto t0 = clk::now();
    auto res = co_await eng.transfer(reqs);
    s.lat_us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
    for (auto& e : res.errors) {
      if (!e)
        s.bytes += f.size;
      else
        note(s, e);
    }
  }
}

// The master round trip under every put: exist() of an absent key, the cheapest call the master
// answers, made by `workers` callers at once from the engine's threads as the figures' workers call.
task<void> rtt_worker(figure_ctx& f, std::size_t w, sample& s) {
  if (f.on_engine) co_await f.c->engine().schedule();
  const std::string key = fmt::format("{}-absent-{}", f.prefix, w);
  for (std::size_t it = 0; more(f, it); ++it) {
    auto t0 = clk::now();
    auto r = co_await f.c->exist(key);
    s.lat_us.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
    if (!r) note(s, r.error());
  }
}

// Stores the keys the get workers read.
task<bool> prefill(figure_ctx& f, std::byte* buf, std::size_t workers) {
  for (std::size_t w = 0; w < workers; ++w) {
    std::vector<std::string> keys;
    std::vector<const void*> srcs;
    std::vector<std::uint64_t> sizes(f.batch, f.size);
    for (std::size_t k = 0; k < f.batch; ++k) {
      keys.push_back(fmt::format("{}-{}-{}", f.prefix, w, k));
      srcs.push_back(buf + (w * f.batch + k) * f.size);
    }
    for (auto& r : co_await f.c->batch_put_from(keys, srcs, sizes))
      if (!r) {
        std::fprintf(stderr, "store_bench: prefill: %s\n", r.error().message().c_str());
        co_return false;
      }
  }
  auto failed = co_await f.c->flush();
  if (!failed) {
    std::fprintf(stderr, "store_bench: prefill: flush: %s\n", failed.error().message().c_str());
    co_return false;
  }
  for (const deferred_failure& d : *failed) {
    std::fprintf(stderr, "store_bench: prefill of %s: %s\n", d.key.c_str(), d.error.message().c_str());
    co_return false;
  }
  co_return true;
}

enum class kind { store_put, store_get, raw_put, raw_put_fresh, raw_get, master_rtt };

task<void> run_figure(figure_ctx& f, kind k, std::byte* buf, std::size_t workers, sample& s) {
  // One sample per worker: the workers may run on different threads.
  std::vector<sample> per(workers);
  std::vector<task<void>> ws;
  for (std::size_t w = 0; w < workers; ++w) {
    std::byte* mine = buf + w * f.batch * f.size;
    switch (k) {
      case kind::store_put: ws.push_back(put_worker(f, mine, w, per[w])); break;
      case kind::store_get: ws.push_back(get_worker(f, mine, w, per[w])); break;
      case kind::raw_put: ws.push_back(raw_worker(f, mine, w, yutu::transfer::opcode::write, false, per[w])); break;
      case kind::raw_put_fresh:
        ws.push_back(raw_worker(f, mine, w, yutu::transfer::opcode::write, true, per[w]));
        break;
      case kind::raw_get: ws.push_back(raw_worker(f, mine, w, yutu::transfer::opcode::read, false, per[w])); break;
      case kind::master_rtt: ws.push_back(rtt_worker(f, w, per[w])); break;
    }
  }
  co_await yutu::when_all(std::move(ws));
  // Deferred commits: the slice ends when every put it made is readable, so its time includes the
  // commits still in flight; a commit the master refused takes its object out of the figure.
  if (k == kind::store_put && f.deferred) {
    auto failed = co_await f.c->flush();
    if (!failed) {
      note(per[0], failed.error());
    } else {
      for (const deferred_failure& d : *failed) {
        per[0].bytes -= f.size;
        note(per[0], d.error);
      }
    }
  }
  for (auto& p : per) {
    s.bytes += p.bytes;
    s.lat_us.insert(s.lat_us.end(), p.lat_us.begin(), p.lat_us.end());
    if (p.errors && !s.errors) s.first_error = p.first_error;
    s.errors += p.errors;
  }
}

// Adds one slice of a figure to what the earlier slices measured.
void add(sample& into, sample s) {
  into.bytes += s.bytes;
  into.seconds += s.seconds;
  into.cpu_seconds += s.cpu_seconds;
  into.lat_us.insert(into.lat_us.end(), s.lat_us.begin(), s.lat_us.end());
  if (s.errors && !into.errors) into.first_error = s.first_error;
  into.errors += s.errors;
}

double process_cpu_seconds() {
  rusage u{};
  ::getrusage(RUSAGE_SELF, &u);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + static_cast<double>(t.tv_usec) * 1e-6; };
  return sec(u.ru_utime) + sec(u.ru_stime);
}

sample measure(yutu::io::reactor& r, figure_ctx& f, kind k, std::byte* buf, std::size_t workers, double duration) {
  sample s;
  const double cpu0 = process_cpu_seconds();
  auto t0 = clk::now();
  f.deadline = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(duration));
  if (f.on_engine)
    f.c->engine().reactors().block_on(0, run_figure(f, k, buf, workers, s));
  else
    r.block_on(run_figure(f, k, buf, workers, s));
  s.seconds = std::chrono::duration<double>(clk::now() - t0).count();
  s.cpu_seconds = process_cpu_seconds() - cpu0;
  return s;
}

// The floor under every master call: the p50 round trip of a 64-byte request and reply between two
// threads over loopback TCP with blocking sockets, measured in the same run. 0 when it cannot run.
double loopback_rtt_p50_us(int rounds) {
  int l = ::socket(AF_INET, SOCK_STREAM, 0);
  if (l < 0) return 0;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t al = sizeof a;
  if (::bind(l, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(l, 1) != 0 ||
      ::getsockname(l, reinterpret_cast<sockaddr*>(&a), &al) != 0) {
    ::close(l);
    return 0;
  }
  int c = ::socket(AF_INET, SOCK_STREAM, 0);
  if (c < 0 || ::connect(c, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    if (c >= 0) ::close(c);
    ::close(l);
    return 0;
  }
  int one = 1;
  ::setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  std::thread echo([l] {
    int s = ::accept(l, nullptr, nullptr);
    if (s < 0) return;
    int on = 1;
    ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    char b[64];
    while (::recv(s, b, sizeof b, MSG_WAITALL) == static_cast<ssize_t>(sizeof b))
      if (::send(s, b, sizeof b, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof b)) break;
    ::close(s);
  });
  char b[64] = {};
  std::vector<double> lat;
  lat.reserve(static_cast<std::size_t>(rounds));
  for (int i = 0; i < rounds; ++i) {
    auto t0 = clk::now();
    if (::send(c, b, sizeof b, MSG_NOSIGNAL) != static_cast<ssize_t>(sizeof b) ||
        ::recv(c, b, sizeof b, MSG_WAITALL) != static_cast<ssize_t>(sizeof b))
      break;
    lat.push_back(std::chrono::duration<double, std::micro>(clk::now() - t0).count());
  }
  ::close(c);
  echo.join();
  ::close(l);
  return pct(std::move(lat), 0.5);
}

std::vector<std::uint64_t> parse_sizes(const std::string& v) {
  std::vector<std::uint64_t> out;
  std::size_t from = 0;
  while (from <= v.size()) {
    auto comma = v.find(',', from);
    auto s = parse_size(v.substr(from, comma == std::string::npos ? std::string::npos : comma - from));
    if (!s || *s == 0) {
      std::fprintf(stderr, "store_bench: bad size list '%s'\n", v.c_str());
      std::exit(2);
    }
    out.push_back(*s);
    if (comma == std::string::npos) break;
    from = comma + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "store_bench: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--help" || a == "-h") {
      std::printf(
          "usage: store_bench [--duration S] [--inflight N] [--node-memory SIZE] [--sizes 64KiB,1MiB,16MiB]\n"
          "                   [--batches 1,32] [--transports tcp,shm|rdma] [--in-process-master] [--own-reactor]\n"
          "                   [--replica-cache MS] [--put-reservation SIZE [--defer-commit]]\n"
          "                   [--nontemporal-threshold SIZE] [--hugepages]\n"
          "                   [--rounds N] [--quick]\n"
          "  --rounds N: the store and the raw references alternate N times within each figure, --duration / N\n"
          "                 each (default 3), so that drift of the machine lands on both sides of a ratio\n"
          "  --transports rdma: the node and the client over RDMA NICs (every one found), measured alone\n"
          "  --own-reactor: callers run on a reactor of the bench's own, not on the engine's threads\n"
          "                 (every master call and transfer then crosses threads twice)\n"
          "  --replica-cache MS: the client reuses replica lists for up to MS ms (client_config::\n"
          "                 replica_cache_max_age): repeated gets of a key skip the master\n"
          "  --put-reservation SIZE: each engine thread keeps SIZE bytes per object size allocated ahead\n"
          "                 (client_config::put_reservation_bytes): a put commits into one, one master\n"
          "                 round trip instead of two\n"
          "  --defer-commit: reserved puts return once written and commit in the background, batched\n"
          "                 (client_config::defer_put_commit); each slice of a put figure ends with flush(),\n"
          "                 so its time covers every commit and its bytes only the objects committed\n"
          "  --hugepages: the node's memory is backed by huge pages (reserve them first: vm.nr_hugepages)\n"
          "  --nontemporal-threshold SIZE: shm puts (and raw writes) of at least SIZE use streaming stores\n"
          "                 (client_config::engine.nontemporal_write_threshold, default 64KiB; 0: memcpy)\n");
      return 0;
    } else if (a == "--duration") {
      o.duration = std::atof(next().c_str());
    } else if (a == "--rounds") {
      o.rounds = static_cast<std::size_t>(std::atoi(next().c_str()));
    } else if (a == "--inflight") {
      o.inflight = static_cast<std::size_t>(std::atoi(next().c_str()));
    } else if (a == "--node-memory") {
      auto s = parse_size(next());
      if (!s) return 2;
      o.node_memory = *s;
    } else if (a == "--sizes") {
      o.sizes = parse_sizes(next());
    } else if (a == "--batches") {
      o.batches.clear();
      for (auto b : parse_sizes(next())) o.batches.push_back(static_cast<std::size_t>(b));
    } else if (a == "--transports") {
      std::string v = next();
      o.transports = yutu::transfer::split_list(v);
      for (const std::string& t : o.transports)
        if (t != "tcp" && t != "shm" && t != "rdma") {
          std::fprintf(stderr, "store_bench: --transports takes tcp, shm and rdma, not '%s'\n", t.c_str());
          return 2;
        }
    } else if (a == "--in-process-master") {
      o.in_process_master = true;
    } else if (a == "--own-reactor") {
      o.own_reactor = true;
    } else if (a == "--replica-cache") {
      o.replica_cache = std::chrono::milliseconds(std::atoi(next().c_str()));
    } else if (a == "--put-reservation") {
      auto s = parse_size(next());
      if (!s) return 2;
      o.put_reservation = *s;
    } else if (a == "--hugepages") {
      o.hugepages = true;
    } else if (a == "--defer-commit") {
      o.defer_commit = true;
    } else if (a == "--nontemporal-threshold") {
      auto s = parse_size(next());
      if (!s) return 2;
      o.nontemporal = *s;
    } else if (a == "--quick") {
      o.duration = 0.3;
    } else {
      std::fprintf(stderr, "store_bench: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (o.defer_commit && !o.put_reservation) {
    std::fprintf(stderr, "store_bench: --defer-commit needs --put-reservation (only reserved puts defer)\n");
    return 2;
  }
  if (!(o.duration > 0) || o.inflight == 0 || o.transports.empty() || o.rounds == 0) {
    std::fprintf(stderr, "store_bench: bad options\n");
    return 2;
  }
  // The storage node speaks one network protocol: rdma is measured in a run of its own.
  const bool rdma = std::find(o.transports.begin(), o.transports.end(), "rdma") != o.transports.end();
  if (rdma && o.transports.size() > 1) {
    std::fprintf(stderr, "store_bench: measure rdma alone (--transports rdma)\n");
    return 2;
  }
  const std::uint64_t op_budget = 512ull << 20;  // bytes one worker's batch may span
  std::uint64_t max_op = 0;
  for (auto sz : o.sizes)
    for (auto b : o.batches) max_op = std::max(max_op, sz * b);
  const std::uint64_t buf_bytes = std::max(max_op, std::min(op_budget, max_op * o.inflight));

  embedded_config ec;
  ec.memory = o.node_memory;
  ec.hugepages = o.hugepages;
  if (rdma) ec.protocol = "rdma";
  // Long enough for a 512 MiB get; short, because memory force-removed under a lease is held until it ends.
  ec.master.default_kv_lease_ttl = std::chrono::milliseconds(5000);
  auto store = embedded::create(ec);
  if (!store) {
    std::fprintf(stderr, "store_bench: embedded store: %s%s\n", store.error().message().c_str(),
                 rdma && store.error() == yutu::te_errc::device_not_found ? " (no RDMA NIC opened: nothing measured)" : "");
    return 1;
  }
  // The raw reference's target: memory of the node's engine, beside the store's segments.
  auto raw_mem = (*store)->node()->engine().allocate_shared(buf_bytes);
  if (!raw_mem) {
    std::fprintf(stderr, "store_bench: raw target: %s\n", raw_mem.error().message().c_str());
    return 1;
  }
  std::unique_ptr<std::byte[]> buf(new std::byte[buf_bytes]);
  for (std::uint64_t i = 0; i < buf_bytes; i += 4096) buf[i] = static_cast<std::byte>(i >> 12);

  const double rtt_us = loopback_rtt_p50_us(20000);
  std::printf("reference: a blocking loopback TCP round trip between two threads, p50 %.1f us (a put makes %s\n"
              "           master round trip%s and a get one; --replica-cache lets repeated gets skip theirs)\n",
              rtt_us, o.defer_commit ? "no" : o.put_reservation ? "one" : "two",
              o.put_reservation && !o.defer_commit ? "" : "s");
  nlohmann::json results = nlohmann::json::array();
  std::printf("store_bench: %g s per figure, master over %s, callers on %s, replica cache %lld ms, put reservations %.0f MiB%s, node memory %.1f GiB\n",
              o.duration, o.in_process_master ? "in-process calls" : "RPC on loopback",
              o.own_reactor ? "a reactor of their own" : "the engine's threads",
              static_cast<long long>(o.replica_cache.count()), static_cast<double>(o.put_reservation) / (1 << 20),
              o.defer_commit ? " with deferred commits" : "",
              static_cast<double>(o.node_memory) / (1ull << 30));
  std::printf("bound: the most a store that waits for one master round trip per call (two for a put without\n"
              "       a reservation, as above 4 MiB; none for a get served from the replica cache) can reach against raw at the\n"
              "       same concurrency: raw / (raw + round trips x master), mean latencies, the master's measured\n"
              "       as exist() of an absent key from the same number of callers just before the figure)\n");
  std::printf("cpu: the process's CPU time (client, engine, master and node together) per call, store / raw;\n"
              "     cpu bound = raw's / the store's: the most the store can reach against raw where raw keeps\n"
              "     every core busy (raw busy: raw's CPU time / (wall time x %u cores))\n",
              std::max(1u, std::thread::hardware_concurrency()));
  std::printf("| %-9s | %-4s | %-7s | %-5s | %-11s | %-11s | %-6s | %-11s | %-6s | %-6s | %-8s | %-19s | %-19s | %-17s | %-9s | %-8s |\n",
              "transport", "op", "size", "batch", "store GiB/s", "raw GiB/s", "ratio", "fresh GiB/s", "ratio", "bound",
              "of bound", "store p50/p99 us", "raw p50/p99 us", "cpu us/call st/raw", "cpu bound", "raw busy");
  std::printf("|-----------|------|---------|-------|-------------|-------------|--------|-------------|--------|--------|----------|---------------------|---------------------|--------------------|-----------|----------|\n");
  const double cores = std::max(1u, std::thread::hardware_concurrency());
  std::uint64_t total_errors = 0;
  std::size_t figures = 0, passes = 0, passes_fresh = 0, bounded = 0, near_bound = 0;
  double min_ratio = 1e9;
  yutu::io::reactor r;
  int fig = 0;
  for (const auto& transport : o.transports) {
    client_config cc;
    // Each figure's bytes cross the transport it names: tcp and rdma alone, even on one host.
    if (transport == "rdma") {
      cc.protocol = "rdma";
      cc.transports = {"rdma"};
    } else {
      cc.transports = transport == "tcp" ? std::vector<std::string>{"tcp"}
                                         : std::vector<std::string>{"local", "shm", "tcp"};
    }
    cc.transfer_deadline = std::chrono::milliseconds(60'000);
    cc.rpc_timeout = std::chrono::milliseconds(10'000);
    cc.replica_cache_max_age = o.replica_cache;
    cc.put_reservation_bytes = o.put_reservation;
    cc.defer_put_commit = o.defer_commit;
    cc.engine.nontemporal_write_threshold = o.nontemporal;
    auto c = o.in_process_master ? (*store)->connect(cc) : [&] {
      cc.master = (*store)->master_address();
      cc.metadata = (*store)->metadata();
      return client::create(cc);
    }();
    if (!c) {
      std::fprintf(stderr, "store_bench: client: %s\n", c.error().message().c_str());
      return 1;
    }
    if (auto rr = (*c)->register_buffer(buf.get(), buf_bytes); !rr) {
      std::fprintf(stderr, "store_bench: register_buffer: %s\n", rr.error().message().c_str());
      return 1;
    }
    auto seg = r.block_on((*c)->engine().open_segment((*store)->node()->engine().segment_name()));
    if (!seg) {
      std::fprintf(stderr, "store_bench: open_segment: %s\n", seg.error().message().c_str());
      return 1;
    }
    // Steady state before measuring: one write pass over every segment of the node through this
    // client's engine, so the client's mapping of the node's memory (shm) is faulted in and the pages
    // have been written once, as in a store that has been running. Without it the store's puts, which
    // go to fresh addresses, paid a minor page fault per 4 KiB that the raw reference (rewriting one
    // buffer) never pays: perf showed shmem faults, not the store, in the 64 KiB shm put.
    for (const segment_info& sg : (*store)->node()->segments()) {
      for (std::uint64_t off = 0; off < sg.size; off += buf_bytes) {
        std::vector<yutu::transfer::transfer_request> warm{{yutu::transfer::opcode::write, buf.get(), *seg,
                                                            sg.base + off, std::min(buf_bytes, sg.size - off)}};
        auto res = r.block_on((*c)->engine().transfer(warm));
        if (!res.errors.empty() && res.errors[0]) {
          std::fprintf(stderr, "store_bench: warm-up write: %s\n", res.errors[0].message().c_str());
          return 1;
        }
      }
    }
    // The raw reference's target too: otherwise its first figures fault that memory in (a 16 MiB x 32
    // raw write once measured 0.3 GiB/s, one 1.5 s sample, making the store look 30x faster).
    {
      std::vector<yutu::transfer::transfer_request> warm{{yutu::transfer::opcode::write, buf.get(), *seg,
                                                          reinterpret_cast<std::uint64_t>(*raw_mem), buf_bytes}};
      auto res = r.block_on((*c)->engine().transfer(warm));
      if (!res.errors.empty() && res.errors[0]) {
        std::fprintf(stderr, "store_bench: warm-up write of the raw target: %s\n", res.errors[0].message().c_str());
        return 1;
      }
    }
    const segment_info node_seg = (*store)->node()->segments().front();
    for (auto size : o.sizes)
      for (auto batch : o.batches) {
        figure_ctx f;
        f.c = c->get();
        f.on_engine = !o.own_reactor;
        f.raw_seg = *seg;
        f.raw_base = reinterpret_cast<std::uint64_t>(*raw_mem);
        f.fresh_base = node_seg.base;
        f.fresh_size = node_seg.size;
        f.size = size;
        f.batch = batch;
        f.deferred = o.defer_commit;
        const std::size_t workers =
            std::max<std::size_t>(1, std::min<std::uint64_t>(o.inflight, buf_bytes / (size * batch)));
        for (std::string op : {"put", "get"}) {
          f.prefix = fmt::format("f{}{}", fig++, op);
          // How many master round trips this figure's calls wait for, and what one costs now.
          const bool reserved = o.put_reservation && size <= client_config{}.put_reservation_max_object;
          const int trips = op == "put" ? (reserved ? (o.defer_commit ? 0 : 1) : 2) : (o.replica_cache.count() > 0 ? 0 : 1);
          // The store and its references alternate in `rounds` slices, so that the machine's drift
          // over the figure (other tenants, frequency) lands on both sides of each ratio.
          const double slice = o.duration / static_cast<double>(o.rounds);
          sample mrtt, st, raw, fresh;
          if (op == "get" && !r.block_on(prefill(f, buf.get(), workers))) return 1;
          for (std::size_t round = 0; round < o.rounds; ++round) {
            f.round = round;
            if (trips > 0) add(mrtt, measure(r, f, kind::master_rtt, buf.get(), workers, std::min(slice, 0.1)));
            if (op == "put") {
              add(st, measure(r, f, kind::store_put, buf.get(), workers, slice));
              add(raw, measure(r, f, kind::raw_put, buf.get(), workers, slice));
              // Over the store's memory, where this figure's objects lie: they are never read, and
              // remove_all below drops them.
              add(fresh, measure(r, f, kind::raw_put_fresh, buf.get(), workers, slice));
            } else {
              add(st, measure(r, f, kind::store_get, buf.get(), workers, slice));
              add(raw, measure(r, f, kind::raw_get, buf.get(), workers, slice));
            }
          }
          (void)r.block_on((*c)->remove_all(true));
          const double master_p50 = pct(mrtt.lat_us, 0.5), master_mean = mean(mrtt.lat_us);
          const double gib = static_cast<double>(1ull << 30);
          double sg = static_cast<double>(st.bytes) / gib / st.seconds;
          double rg = static_cast<double>(raw.bytes) / gib / raw.seconds;
          double ratio = rg > 0 ? sg / rg : 0;
          // Gets read the same few objects over and over, as the raw reference does: no second one.
          double fg = op == "put" ? static_cast<double>(fresh.bytes) / gib / fresh.seconds : rg;
          double ratio_fresh = fg > 0 ? sg / fg : 0;
          // Throughput at a fixed number of callers goes as 1 / mean latency: what the round trips
          // alone leave of raw's throughput.
          const double raw_p50 = pct(raw.lat_us, 0.5), raw_mean = mean(raw.lat_us);
          const double bound = trips == 0 || raw_mean <= 0 ? 1.0 : raw_mean / (raw_mean + trips * master_mean);
          const double of_bound = bound > 0 ? ratio / bound : 0;
          const auto per_call = [](const sample& x) {
            return x.lat_us.empty() ? 0.0 : x.cpu_seconds * 1e6 / static_cast<double>(x.lat_us.size());
          };
          const double st_cpu = per_call(st), raw_cpu = per_call(raw);
          const double cpu_bound = st_cpu > 0 ? std::min(1.0, raw_cpu / st_cpu) : 1.0;
          const double raw_busy = raw.seconds > 0 ? raw.cpu_seconds / (raw.seconds * cores) : 0;
          min_ratio = std::min(min_ratio, ratio);
          if (ratio < 0.8 && bound < 0.8) {
            ++bounded;
            near_bound += of_bound >= 0.8;
          }
          passes += ratio >= 0.8;
          passes_fresh += ratio_fresh >= 0.8;
          ++figures;
          total_errors += st.errors + raw.errors + fresh.errors + mrtt.errors;
          std::string size_s = size >= (1 << 20) ? fmt::format("{}MiB", size >> 20) : fmt::format("{}KiB", size >> 10);
          std::string fresh_s = op == "put" ? fmt::format("{:11.3f}", fg) : fmt::format("{:>11}", "-");
          std::printf("| %-9s | %-4s | %-7s | %-5zu | %11.3f | %11.3f | %5.0f%% | %s | %5.0f%% | %5.0f%% | %7.0f%% | %8.0f / %8.0f | %8.0f / %8.0f | %7.1f / %8.1f | %8.0f%% | %7.0f%% |\n",
                      transport.c_str(), op.c_str(), size_s.c_str(), batch, sg, rg, 100 * ratio, fresh_s.c_str(),
                      100 * ratio_fresh, 100 * bound, 100 * of_bound, pct(st.lat_us, 0.5), pct(st.lat_us, 0.99),
                      raw_p50, pct(raw.lat_us, 0.99), st_cpu, raw_cpu, 100 * cpu_bound, 100 * raw_busy);
          std::fflush(stdout);
          if (st.errors) std::printf("    store errors: %llu (%s)\n", static_cast<unsigned long long>(st.errors), st.first_error.c_str());
          if (raw.errors) std::printf("    raw errors: %llu (%s)\n", static_cast<unsigned long long>(raw.errors), raw.first_error.c_str());
          if (fresh.errors) std::printf("    fresh raw errors: %llu (%s)\n", static_cast<unsigned long long>(fresh.errors), fresh.first_error.c_str());
          if (mrtt.errors) std::printf("    master round-trip errors: %llu (%s)\n", static_cast<unsigned long long>(mrtt.errors), mrtt.first_error.c_str());
          nlohmann::json fig_j = {{"transport", transport}, {"op", op}, {"size", size}, {"batch", batch},
                                  {"inflight", workers}, {"store_gib_s", sg}, {"raw_gib_s", rg}, {"ratio", ratio},
                                  {"ratio_fresh", ratio_fresh},
                                  {"store_p50_us", pct(st.lat_us, 0.5)}, {"store_p99_us", pct(st.lat_us, 0.99)},
                                  {"raw_p50_us", pct(raw.lat_us, 0.5)}, {"raw_p99_us", pct(raw.lat_us, 0.99)},
                                  {"master_rtt_trips", trips}, {"master_rtt_p50_us", master_p50},
                                  {"master_rtt_mean_us", master_mean}, {"raw_mean_us", raw_mean},
                                  {"bound", bound}, {"of_bound", of_bound},
                                  {"store_cpu_us_per_call", st_cpu}, {"raw_cpu_us_per_call", raw_cpu},
                                  {"cpu_bound", cpu_bound}, {"raw_busy", raw_busy},
                                  {"errors", st.errors + raw.errors + fresh.errors + mrtt.errors}};
          if (op == "put") {
            fig_j["raw_fresh_gib_s"] = fg;
            fig_j["raw_fresh_p50_us"] = pct(fresh.lat_us, 0.5);
          }
          results.push_back(std::move(fig_j));
        }
      }
    if (o.put_reservation) {
      const auto cs = (*c)->stats();
      std::printf("    %s: %llu of %llu puts committed into a reservation, %llu reservations refused at commit, "
                  "%llu puts waited for a refill\n",
                  transport.c_str(), static_cast<unsigned long long>(cs.reserved_puts),
                  static_cast<unsigned long long>(cs.puts), static_cast<unsigned long long>(cs.reservation_fallbacks),
                  static_cast<unsigned long long>(cs.reservation_waits));
    }
    (void)(*c)->unregister_buffer(buf.get());
    c->reset();
  }
  std::printf("%zu of %zu figures reach 0.8 of raw; %zu of %zu against the fresh-place reference for puts\n", passes,
              figures, passes_fresh, figures);
  std::printf("%zu of the %zu below 0.8 have a round-trip bound below 0.8; %zu of those reach 0.8 of their bound\n",
              bounded, figures - passes, near_bound);
  nlohmann::json j;
  j["bench"] = "store";
  j["master"] = o.in_process_master ? "in-process" : "rpc";
  j["callers"] = o.own_reactor ? "own-reactor" : "engine-threads";
  j["replica_cache_ms"] = o.replica_cache.count();
  j["put_reservation_bytes"] = o.put_reservation;
  j["defer_commit"] = o.defer_commit;
  j["duration_s"] = o.duration;
  j["rounds"] = o.rounds;
  j["results"] = results;
  j["min_ratio"] = min_ratio;
  j["loopback_rtt_p50_us"] = rtt_us;
  j["figures"] = figures;
  j["at_least_0_8"] = passes;
  j["at_least_0_8_vs_fresh"] = passes_fresh;
  j["below_0_8_with_bound_below_0_8"] = bounded;
  j["of_those_at_least_0_8_of_bound"] = near_bound;
  j["target_ratio"] = 0.8;
  j["errors"] = total_errors;
  std::printf("%s\n", j.dump().c_str());
  return total_errors == 0 ? 0 : 1;
}
