// yutu-cluster: a whole store on one machine, as separate processes on loopback (yutu-metadata,
// yutu-master, N yutu-node storage nodes), driven by a KVCache workload in this process the way an
// LLM serving engine drives it: for every request, the prompt's blocks are keyed by their prefix
// hash ("model@tp0@<hash_id>", one id per 512 tokens), the leading blocks already cached are loaded
// (match_prefix + get_into, one master round trip), the rest is "computed" and stored (put_from).
//
// Requests come from Mooncake's FAST'25 conversation trace when it is present (../shared/traces), or
// from a synthetic generator of multi-turn conversations sharing a system prompt (said so in the
// output). Every loaded block is checked: it must carry the hash id it was stored under.
//
// Output: a progress line every 2 s, then a table, then one JSON line (last). Exit status 0 only if
// no request failed, no block was corrupt and every process stopped cleanly. Every child is stopped
// on the way out, on failure too (and the kernel kills them if this process is killed).
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "src/child_process.hpp"
#include "yutu/json_int.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/store/client.hpp"

namespace {

using namespace std::chrono_literals;
using clk = std::chrono::steady_clock;
using yutu::task;
using yutu::tools::child_process;

std::atomic<bool> g_stop{false};
extern "C" void on_signal(int) { g_stop.store(true); }

constexpr const char* usage =
    "usage: yutu-cluster [options]\n"
    "  Starts yutu-metadata, yutu-master and storage nodes on loopback, replays a KVCache workload\n"
    "  (prefix sharing, as an LLM server issues it) through a store client, reports, stops everything.\n"
    "  --duration SECONDS     stop issuing requests after this (default 20)\n"
    "  --requests N           at most N requests (default: the whole trace, within the duration)\n"
    "  --block-size SIZE      bytes of KVCache per 512-token block (default 256KiB)\n"
    "  --nodes N              storage nodes (default 2)\n"
    "  --node-memory SIZE     memory each node contributes (default 1GiB)\n"
    "  --replicas N           replicas per block (default 1)\n"
    "  --concurrency N        requests in flight (default 8)\n"
    "  --threads N            the client engine's threads; the requests run on them (default 2)\n"
    "  --replica-cache MS     reuse a block's replica list for up to MS ms without asking the master\n"
    "                         (client_config::replica_cache_max_age; 0 = off; default 2000: the keys\n"
    "                         are content hashes, written once)\n"
    "  --put-reservation SIZE replicas each client thread keeps allocated ahead, per block size\n"
    "                         (client_config::put_reservation_bytes; 0 = off): a put of missed\n"
    "                         blocks then takes one master round trip instead of two (default 32MiB)\n"
    "  --defer-commit         reserved puts return once written and commit in the background\n"
    "                         (client_config::defer_put_commit): a put waits for no master round\n"
    "                         trip; a block is readable about one round trip after its put\n"
    "  --nontemporal-threshold SIZE\n"
    "                         shm puts of at least SIZE use streaming stores (client_config::engine.\n"
    "                         nontemporal_write_threshold; 0 = always memcpy; default 64KiB)\n"
    "  --transports LIST      client transports, e.g. tcp (default: local,shm,tcp)\n"
    "  --trace FILE           a Mooncake trace (.jsonl); default: conversation_trace.jsonl from\n"
    "                         $YUTU_TRACES, ../shared/traces, or next to the repository\n"
    "  --synthetic            use the synthetic generator even when a trace is present\n"
    "  --model NAME           key prefix (default model)\n"
    "  --bin-dir DIR          where yutu-metadata, yutu-master, yutu-node are (default: next to this)\n"
    "  --verbose              copy the children's stdout to stderr\n"
    "  --help                 this text\n";

struct options {
  double duration_s = 20;
  std::size_t requests = 0;
  std::uint64_t block_size = 256 * 1024;
  std::size_t nodes = 2;
  std::uint64_t node_memory = 1ull << 30;
  std::size_t replicas = 1;
  std::size_t concurrency = 8;
  std::size_t threads = 2;
  std::size_t replica_cache_ms = 2000;
  std::uint64_t put_reservation = 32ull << 20;
  std::uint64_t nontemporal = yutu::store::client_config{}.engine.nontemporal_write_threshold;
  std::vector<std::string> transports;
  std::string trace;
  bool synthetic = false;
  bool defer_commit = false;
  std::string model = "model";
  std::string bin_dir;
  bool verbose = false;
};

struct request {
  std::vector<std::uint64_t> hash_ids;
};

// --- the workload source ---

std::string find_trace(const options& o) {
  if (!o.trace.empty()) return o.trace;
  std::vector<std::string> dirs;
  if (const char* e = std::getenv("YUTU_TRACES")) dirs.emplace_back(e);
  dirs.emplace_back("../shared/traces");
  auto self = yutu::tools::self_dir();
  if (!self.empty()) {
    dirs.push_back(self + "/../../../shared/traces");  // <repo>/build/<dir>/yutu-cluster
    dirs.push_back(self + "/../../shared/traces");
  }
  dirs.emplace_back("/work/shared/traces");
  for (auto& d : dirs) {
    std::string f = d + "/conversation_trace.jsonl";
    if (::access(f.c_str(), R_OK) == 0) return f;
  }
  return {};
}

bool load_trace(const std::string& path, std::vector<request>& out) {
  std::ifstream in(path);
  if (!in) return false;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, false);
    if (j.is_discarded() || !j.contains("hash_ids") || !j["hash_ids"].is_array()) return false;
    request r;
    auto ids = yutu::json_ints<std::uint64_t>(j["hash_ids"]);
    if (!ids) return false;  // a float or a negative id: not a trace of ours
    r.hash_ids = std::move(*ids);
    if (!r.hash_ids.empty()) out.push_back(std::move(r));
  }
  return !out.empty();
}

// Multi-turn conversations over a shared system prompt: each turn re-sends the whole conversation
// so far plus a few new blocks, so its leading blocks are the previous turn's.
std::vector<request> synthetic(std::size_t count) {
  std::mt19937_64 rng(42);
  const std::size_t system_blocks = 4, live = 64;
  std::uint64_t next_id = system_blocks;
  std::vector<std::vector<std::uint64_t>> convs(live);
  std::vector<request> out;
  for (std::size_t i = 0; i < count; ++i) {
    auto& c = convs[rng() % live];
    if (c.empty() || c.size() > 160 || rng() % 8 == 0) {
      c.clear();
      for (std::uint64_t b = 0; b < system_blocks; ++b) c.push_back(b);
    }
    std::size_t grow = 1 + rng() % 6;
    for (std::size_t k = 0; k < grow; ++k) c.push_back(next_id++);
    out.push_back(request{c});
  }
  return out;
}

// --- statistics ---

struct shared_state {
  const options* opt = nullptr;
  yutu::store::client* store = nullptr;
  const std::vector<request>* reqs = nullptr;
  std::size_t limit = 0;
  std::atomic<std::size_t> next{0};
  clk::time_point deadline;
  std::size_t max_blocks = 0;

  std::atomic<std::uint64_t> done{0}, blocks{0}, hits{0}, read_bytes{0}, write_bytes{0};
  std::atomic<std::uint64_t> errors{0}, corrupt{0}, put_dups{0}, put_full{0};
  std::mutex lat_mu;
  std::vector<double> get_ms, put_ms;
  std::mutex err_mu;
  std::vector<std::string> first_errors;

  void error(std::string what) {
    errors.fetch_add(1);
    std::lock_guard lk(err_mu);
    if (first_errors.size() < 5) first_errors.push_back(std::move(what));
  }
};

double pct(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  std::size_t i = static_cast<std::size_t>(p * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

void stamp(std::byte* block, std::uint64_t size, std::uint64_t id) {
  std::uint64_t tail = id ^ 0x5bd1e9955bd1e995ull;
  std::memcpy(block, &id, sizeof id);
  std::memcpy(block + size - sizeof tail, &tail, sizeof tail);
}
bool stamped(const std::byte* block, std::uint64_t size, std::uint64_t id) {
  std::uint64_t a, b;
  std::memcpy(&a, block, sizeof a);
  std::memcpy(&b, block + size - sizeof b, sizeof b);
  return a == id && b == (id ^ 0x5bd1e9955bd1e995ull);
}

// One request slot: pulls requests until the trace, the request budget or the time runs out.
task<void> worker(shared_state& s, std::byte* arena) {
  const std::uint64_t bs = s.opt->block_size;
  std::vector<std::string> keys;
  std::vector<void*> dsts;
  std::vector<const void*> srcs;
  std::vector<std::uint64_t> sizes;
  for (;;) {
    if (g_stop.load() || clk::now() >= s.deadline) co_return;
    std::size_t idx = s.next.fetch_add(1);
    if (idx >= s.limit) co_return;
    const request& rq = (*s.reqs)[idx];
    const std::size_t n = std::min(rq.hash_ids.size(), s.max_blocks);
    keys.clear();
    dsts.clear();
    sizes.assign(n, bs);
    for (std::size_t i = 0; i < n; ++i) {
      keys.push_back(fmt::format("{}@tp0@{}", s.opt->model, rq.hash_ids[i]));
      dsts.push_back(arena + i * bs);
    }
    // Load the cached prefix.
    auto t0 = clk::now();
    auto hit = co_await s.store->load_prefix(keys, dsts, sizes);
    auto t1 = clk::now();
    if (!hit) {
      s.error(fmt::format("load_prefix: {}", hit.error().message()));
      s.done.fetch_add(1);
      continue;
    }
    std::size_t h = *hit;
    for (std::size_t i = 0; i < h; ++i)
      if (!stamped(arena + i * bs, bs, rq.hash_ids[i])) s.corrupt.fetch_add(1);
    // "Compute" the rest of the prompt's KVCache, then store it.
    srcs.clear();
    for (std::size_t i = h; i < n; ++i) {
      stamp(arena + i * bs, bs, rq.hash_ids[i]);
      srcs.push_back(arena + i * bs);
    }
    double put_ms = -1;
    if (h < n) {
      auto t2 = clk::now();
      auto res = co_await s.store->batch_put_from(std::span(keys).subspan(h), srcs, std::span(sizes).subspan(h));
      put_ms = std::chrono::duration<double, std::milli>(clk::now() - t2).count();
      std::uint64_t written = 0;
      for (auto& r : res) {
        if (r) {
          written += bs;
        } else if (r.error() == yutu::errc::object_already_exists) {
          s.put_dups.fetch_add(1);  // another request in flight stored the same block first
        } else if (r.error() == yutu::errc::no_available_handle) {
          s.put_full.fetch_add(1);  // nothing evictable right now: a cache may skip a block
        } else {
          s.error(fmt::format("put: {}", r.error().message()));
        }
      }
      s.write_bytes.fetch_add(written);
    }
    s.blocks.fetch_add(n);
    s.hits.fetch_add(h);
    s.read_bytes.fetch_add(h * bs);
    {
      std::lock_guard lk(s.lat_mu);
      if (h > 0) s.get_ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      if (put_ms >= 0) s.put_ms.push_back(put_ms);
    }
    s.done.fetch_add(1);
  }
}

task<void> run_slots(shared_state& s, std::vector<std::byte*> arenas) {
  std::vector<task<void>> ws;
  for (auto* a : arenas) ws.push_back(worker(s, a));
  co_await yutu::when_all(std::move(ws));
}

bool parse_count(const std::string& v, std::size_t& out) {
  char* end = nullptr;
  unsigned long long x = std::strtoull(v.c_str(), &end, 10);
  if (v.empty() || *end != '\0') return false;
  out = static_cast<std::size_t>(x);
  return true;
}

struct cluster {
  std::vector<std::unique_ptr<child_process>> procs;  // metadata, master, nodes: stopped in reverse
  std::string metadata, master;
  bool ok = true;

  ~cluster() { stop(); }
  bool stop() {
    for (auto it = procs.rbegin(); it != procs.rend(); ++it) {
      auto& p = **it;
      if (p.pid() <= 0) continue;
      p.stop(std::chrono::milliseconds(5000));
      if (!p.exited_cleanly()) {
        std::fprintf(stderr, "yutu-cluster: %s did not stop cleanly (wait status %d)\n", p.name().c_str(),
                     p.status());
        ok = false;
      }
    }
    procs.clear();
    return ok;
  }
};

std::string after(const std::string& line, const std::string& marker) {
  auto at = line.find(marker);
  if (at == std::string::npos) return {};
  auto s = line.substr(at + marker.size());
  while (!s.empty() && (s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string v;
    auto value = [&](const char* name) {
      std::string n = name;
      if (a == n) {
        if (i + 1 >= argc) return false;
        v = argv[++i];
        return true;
      }
      if (a.rfind(n + "=", 0) == 0) {
        v = a.substr(n.size() + 1);
        return true;
      }
      return false;
    };
    auto bad = [&](const char* flag) {
      std::fprintf(stderr, "yutu-cluster: bad value '%s' for %s\n", v.c_str(), flag);
      std::exit(2);
    };
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    } else if (a == "--verbose") {
      o.verbose = true;
    } else if (a == "--synthetic") {
      o.synthetic = true;
    } else if (a == "--defer-commit") {
      o.defer_commit = true;
    } else if (value("--duration")) {
      char* end = nullptr;
      o.duration_s = std::strtod(v.c_str(), &end);
      if (v.empty() || *end != '\0' || !(o.duration_s > 0)) bad("--duration");
    } else if (value("--requests")) {
      if (!parse_count(v, o.requests)) bad("--requests");
    } else if (value("--block-size")) {
      auto s = yutu::store::parse_size(v);
      if (!s || *s < 64) bad("--block-size");
      o.block_size = *s;
    } else if (value("--node-memory")) {
      auto s = yutu::store::parse_size(v);
      if (!s || *s == 0) bad("--node-memory");
      o.node_memory = *s;
    } else if (value("--nodes")) {
      if (!parse_count(v, o.nodes) || o.nodes == 0) bad("--nodes");
    } else if (value("--replicas")) {
      if (!parse_count(v, o.replicas) || o.replicas == 0) bad("--replicas");
    } else if (value("--concurrency")) {
      if (!parse_count(v, o.concurrency) || o.concurrency == 0) bad("--concurrency");
    } else if (value("--threads")) {
      if (!parse_count(v, o.threads) || o.threads == 0 || o.threads > 64) bad("--threads");
    } else if (value("--replica-cache")) {
      if (!parse_count(v, o.replica_cache_ms) || o.replica_cache_ms > 3'600'000) bad("--replica-cache");
    } else if (value("--put-reservation")) {
      auto s = yutu::store::parse_size(v);
      if (!s) bad("--put-reservation");
      o.put_reservation = *s;
    } else if (value("--nontemporal-threshold")) {
      auto s = yutu::store::parse_size(v);
      if (!s) bad("--nontemporal-threshold");
      o.nontemporal = *s;
    } else if (value("--transports")) {
      o.transports.clear();
      std::size_t from = 0;
      while (from <= v.size()) {
        auto comma = v.find(',', from);
        auto t = v.substr(from, comma == std::string::npos ? std::string::npos : comma - from);
        if (!t.empty()) o.transports.push_back(t);
        if (comma == std::string::npos) break;
        from = comma + 1;
      }
    } else if (value("--trace")) {
      o.trace = v;
    } else if (value("--model")) {
      o.model = v;
    } else if (value("--bin-dir")) {
      o.bin_dir = v;
    } else {
      std::fprintf(stderr, "yutu-cluster: unknown or incomplete argument '%s'\n%s", argv[i], usage);
      return 2;
    }
  }
  if (o.bin_dir.empty()) o.bin_dir = yutu::tools::self_dir();
  o.threads = std::min(o.threads, o.concurrency);
  if (o.defer_commit && o.put_reservation == 0) {
    std::fprintf(stderr, "yutu-cluster: --defer-commit needs --put-reservation above 0 (only reserved puts defer)\n");
    return 2;
  }

  struct sigaction sa {};
  sa.sa_handler = on_signal;
  sigemptyset(&sa.sa_mask);
  ::sigaction(SIGINT, &sa, nullptr);
  ::sigaction(SIGTERM, &sa, nullptr);

  // The workload first: a bad trace path should not cost a cluster start.
  std::vector<request> reqs;
  std::string source;
  if (!o.synthetic) {
    std::string path = find_trace(o);
    if (!path.empty()) {
      if (!load_trace(path, reqs)) {
        std::fprintf(stderr, "yutu-cluster: cannot read the trace %s\n", path.c_str());
        return 1;
      }
      source = path.substr(path.rfind('/') + 1);
      std::printf("workload: %zu requests from %s\n", reqs.size(), path.c_str());
    } else {
      std::printf("workload: no trace found (looked for conversation_trace.jsonl in $YUTU_TRACES, "
                  "../shared/traces, next to the repository): using the synthetic generator\n");
    }
  }
  if (reqs.empty()) {
    reqs = synthetic(o.requests ? o.requests : 20000);
    source = "synthetic";
    std::printf("workload: %zu synthetic requests (multi-turn conversations over a shared system prompt)\n",
                reqs.size());
  }
  const std::size_t limit = o.requests ? std::min(o.requests, reqs.size()) : reqs.size();
  std::size_t max_blocks = 0;
  for (std::size_t i = 0; i < limit; ++i) max_blocks = std::max(max_blocks, reqs[i].hash_ids.size());

  // --- the cluster ---
  cluster cl;
  auto spawn = [&](const std::string& name, std::vector<std::string> args) -> child_process* {
    auto p = std::make_unique<child_process>();
    std::string exe = o.bin_dir + "/" + name;
    if (!p->start(exe, args)) {
      std::fprintf(stderr, "yutu-cluster: cannot start %s\n", exe.c_str());
      return nullptr;
    }
    cl.procs.push_back(std::move(p));
    return cl.procs.back().get();
  };
  auto ready = [&](child_process* p, const std::string& marker, std::chrono::milliseconds wait) {
    if (p->wait_for_line(marker, wait).empty()) {
      std::fprintf(stderr, "yutu-cluster: %s (pid %d) did not become ready; see its messages above\n",
                   p->name().c_str(), static_cast<int>(p->pid()));
      return false;
    }
    p->drain(o.verbose);
    return true;
  };
  auto t_start = clk::now();
  auto* md = spawn("yutu-metadata", {"--host", "127.0.0.1", "--port", "0"});
  if (!md || !ready(md, "listening on", 10s)) return 1;
  cl.metadata = "http://" + after(md->lines().back(), "listening on ") + "/metadata";
  auto* ms = spawn("yutu-master", {"--rpc-address", "127.0.0.1", "--rpc-port", "0", "--http-address", "127.0.0.1",
                                   "--http-port", "0"});
  if (!ms || !ready(ms, "rpc listening on", 10s)) return 1;
  cl.master = after(ms->lines().back(), "rpc listening on ");
  // The nodes start together: each pre-faults its memory, which takes a while for large ones.
  std::vector<child_process*> nodes;
  for (std::size_t i = 0; i < o.nodes; ++i) {
    auto* n = spawn("yutu-node", {"--master", cl.master, "--metadata", cl.metadata, "--memory",
                                  std::to_string(o.node_memory), "--host", "127.0.0.1"});
    if (!n) return 1;
    nodes.push_back(n);
  }
  for (auto* n : nodes)
    if (!ready(n, "ready", 60s)) return 1;
  std::printf("cluster: metadata %s, master %s, %zu nodes x %.2f GiB, up in %.2f s\n", cl.metadata.c_str(),
              cl.master.c_str(), o.nodes, static_cast<double>(o.node_memory) / (1ull << 30),
              std::chrono::duration<double>(clk::now() - t_start).count());

  // --- the serving client ---
  yutu::store::client_config cc;
  cc.local_hostname = "127.0.0.1";
  cc.metadata = cl.metadata;
  cc.master = cl.master;
  cc.transports = o.transports;
  cc.replica_defaults.replica_num = o.replicas;
  // The request slots run on the engine's own threads, where the client's connections to the master
  // and to the nodes live: no thread hop per call. The replica cache lives there too.
  cc.engine_threads = o.threads;
  cc.replica_cache_max_age = std::chrono::milliseconds(o.replica_cache_ms);
  cc.put_reservation_bytes = o.put_reservation;
  cc.defer_put_commit = o.defer_commit;
  cc.engine.nontemporal_write_threshold = o.nontemporal;
  auto store = yutu::store::client::create(cc);
  if (!store) {
    std::fprintf(stderr, "yutu-cluster: the client cannot start: %s\n", store.error().message().c_str());
    return 1;
  }

  const std::size_t slots = o.concurrency;
  const std::uint64_t arena_size = static_cast<std::uint64_t>(max_blocks) * o.block_size;
  std::vector<std::unique_ptr<std::byte[]>> arenas;
  for (std::size_t i = 0; i < slots; ++i) {
    arenas.emplace_back(new std::byte[arena_size]);
    std::memset(arenas.back().get(), 0x5a, arena_size);  // fault the pages in before timing
    if (auto r = (*store)->register_buffer(arenas.back().get(), arena_size); !r) {
      std::fprintf(stderr, "yutu-cluster: register_buffer: %s\n", r.error().message().c_str());
      return 1;
    }
  }

  shared_state s;
  s.opt = &o;
  s.store = store->get();
  s.reqs = &reqs;
  s.limit = limit;
  s.max_blocks = max_blocks;
  auto t0 = clk::now();
  s.deadline = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(o.duration_s));
  std::vector<std::thread> drivers;
  for (std::size_t t = 0; t < o.threads; ++t) {
    std::vector<std::byte*> mine;
    for (std::size_t i = t; i < slots; i += o.threads) mine.push_back(arenas[i].get());
    // Slot group t runs on engine thread t; this plain thread only waits for it.
    drivers.emplace_back([&s, mine, t, eng = &(*store)->engine()] { eng->reactors().block_on(t, run_slots(s, mine)); });
  }
  // Progress, every 2 s, until the drivers finish.
  std::atomic<bool> drivers_done{false};
  std::thread joiner([&] {
    for (auto& d : drivers) d.join();
    drivers_done.store(true);
  });
  auto last = t0;
  std::uint64_t last_bytes = 0;
  while (!drivers_done.load()) {
    std::this_thread::sleep_for(50ms);
    auto now = clk::now();
    if (now - last < 2s) continue;
    std::uint64_t bytes = s.read_bytes.load() + s.write_bytes.load();
    double el = std::chrono::duration<double>(now - t0).count();
    double blocks = static_cast<double>(s.blocks.load());
    std::printf("[%5.1fs] %6llu requests, %7.1f req/s, hit %5.1f%%, %6.2f GiB/s now, errors %llu\n", el,
                static_cast<unsigned long long>(s.done.load()), static_cast<double>(s.done.load()) / el,
                blocks > 0 ? 100.0 * static_cast<double>(s.hits.load()) / blocks : 0.0,
                static_cast<double>(bytes - last_bytes) / (1ull << 30) /
                    std::chrono::duration<double>(now - last).count(),
                static_cast<unsigned long long>(s.errors.load()));
    std::fflush(stdout);
    last = now;
    last_bytes = bytes;
  }
  joiner.join();
  const double elapsed = std::chrono::duration<double>(clk::now() - t0).count();

  // The hit ratio an infinitely large cache would have had on the same requests, in the same order.
  std::unordered_set<std::uint64_t> seen;
  std::uint64_t ideal_hits = 0, ideal_blocks = 0;
  const std::size_t processed = std::min<std::size_t>(s.done.load(), limit);
  for (std::size_t i = 0; i < processed; ++i) {
    const auto& ids = reqs[i].hash_ids;
    std::size_t k = 0;
    while (k < ids.size() && seen.count(ids[k])) ++k;
    ideal_hits += k;
    ideal_blocks += ids.size();
    for (auto id : ids) seen.insert(id);
  }

  // Deferred commits the master refused: a block another request had stored first is a duplicate,
  // as a refused put would have been; anything else is an error.
  if (auto failed = yutu::sync_wait((*store)->flush()); !failed) {
    s.error(fmt::format("flush: {}", failed.error().message()));
  } else {
    for (const auto& f : *failed) {
      if (f.error == yutu::errc::object_already_exists) {
        s.put_dups.fetch_add(1);
        s.write_bytes.fetch_sub(o.block_size);
      } else {
        s.error(fmt::format("deferred commit of {}: {}", f.key, f.error.message()));
      }
    }
  }
  auto st = (*store)->stats();
  auto& eng = (*store)->engine();
  std::uint64_t shm_bytes = eng.counters("shm").bytes, tcp_bytes = eng.counters("tcp").bytes;
  auto cr = yutu::sync_wait((*store)->close());
  if (!cr) std::fprintf(stderr, "yutu-cluster: closing the client: %s\n", cr.error().message().c_str());
  store->reset();
  for (auto& a : arenas) a.reset();
  bool clean = cl.stop();

  const double gib = static_cast<double>(1ull << 30);
  const double rb = static_cast<double>(s.read_bytes.load()), wb = static_cast<double>(s.write_bytes.load());
  const double hit_ratio =
      s.blocks.load() ? static_cast<double>(s.hits.load()) / static_cast<double>(s.blocks.load()) : 0.0;
  const double ideal = ideal_blocks ? static_cast<double>(ideal_hits) / static_cast<double>(ideal_blocks) : 0.0;
  const double rps = static_cast<double>(s.done.load()) / elapsed;
  std::vector<double> get_ms, put_ms;
  {
    std::lock_guard lk(s.lat_mu);
    get_ms = s.get_ms;
    put_ms = s.put_ms;
  }
  std::printf("\n%-28s %s\n", "workload", source.c_str());
  std::printf("%-28s %zu nodes x %.2f GiB, %zu replica(s), block %llu KiB, %zu in flight on %zu threads\n",
              "cluster", o.nodes, static_cast<double>(o.node_memory) / gib, o.replicas,
              static_cast<unsigned long long>(o.block_size / 1024), o.concurrency, o.threads);
  std::printf("%-28s %llu in %.2f s: %.1f req/s\n", "requests", static_cast<unsigned long long>(s.done.load()),
              elapsed, rps);
  std::printf("%-28s %.3f GiB/s (read %.3f, written %.3f)\n", "throughput", (rb + wb) / gib / elapsed,
              rb / gib / elapsed, wb / gib / elapsed);
  std::printf("%-28s p50 %.3f ms, p99 %.3f ms (%zu requests with hits)\n", "get latency (prefix load)",
              pct(get_ms, 0.5), pct(get_ms, 0.99), get_ms.size());
  std::printf("%-28s p50 %.3f ms, p99 %.3f ms (%zu requests with misses)\n", "put latency (misses stored)",
              pct(put_ms, 0.5), pct(put_ms, 0.99), put_ms.size());
  std::printf("%-28s %.1f%% of %llu blocks (an unbounded cache: %.1f%%)\n", "prefix hit ratio", 100 * hit_ratio,
              static_cast<unsigned long long>(s.blocks.load()), 100 * ideal);
  std::printf("%-28s shm %.2f GiB, tcp %.2f GiB; failovers %llu\n", "bytes by transport",
              static_cast<double>(shm_bytes) / gib, static_cast<double>(tcp_bytes) / gib,
              static_cast<unsigned long long>(st.failovers));
  std::printf("%-28s %llu of %llu blocks read with a cached replica list (no master call; max age %zu ms)\n",
              "replica cache", static_cast<unsigned long long>(st.replica_cache_hits),
              static_cast<unsigned long long>(s.hits.load()), o.replica_cache_ms);
  std::printf("%-28s %llu of %llu blocks put into a reservation (%s; %llu MiB a thread)\n",
              "put reservations", static_cast<unsigned long long>(st.reserved_puts),
              static_cast<unsigned long long>(st.puts),
              o.defer_commit ? "committed in the background" : "one master round trip",
              static_cast<unsigned long long>(o.put_reservation >> 20));
  std::printf("%-28s errors %llu, corrupt blocks %llu, duplicate puts %llu, puts refused (full) %llu, clean stop %s\n",
              "health", static_cast<unsigned long long>(s.errors.load()),
              static_cast<unsigned long long>(s.corrupt.load()), static_cast<unsigned long long>(s.put_dups.load()),
              static_cast<unsigned long long>(s.put_full.load()), clean ? "yes" : "no");
  for (auto& e : s.first_errors) std::printf("  error: %s\n", e.c_str());

  nlohmann::json j;
  j["bench"] = "yutu-cluster";
  j["workload"] = source;
  j["nodes"] = o.nodes;
  j["node_memory_bytes"] = o.node_memory;
  j["replicas"] = o.replicas;
  j["block_size"] = o.block_size;
  j["concurrency"] = o.concurrency;
  j["threads"] = o.threads;
  j["replica_cache_ms"] = o.replica_cache_ms;
  j["replica_cache_hits"] = st.replica_cache_hits;
  j["put_reservation_bytes"] = o.put_reservation;
  j["reserved_puts"] = st.reserved_puts;
  j["defer_commit"] = o.defer_commit;
  j["requests"] = s.done.load();
  j["duration_s"] = elapsed;
  j["req_per_s"] = rps;
  j["gib_per_s"] = (rb + wb) / gib / elapsed;
  j["read_gib_per_s"] = rb / gib / elapsed;
  j["write_gib_per_s"] = wb / gib / elapsed;
  j["get_p50_ms"] = pct(get_ms, 0.5);
  j["get_p99_ms"] = pct(get_ms, 0.99);
  j["put_p50_ms"] = pct(put_ms, 0.5);
  j["put_p99_ms"] = pct(put_ms, 0.99);
  j["hit_ratio"] = hit_ratio;
  j["ideal_hit_ratio"] = ideal;
  j["blocks"] = s.blocks.load();
  j["errors"] = s.errors.load();
  j["corrupt"] = s.corrupt.load();
  j["duplicate_puts"] = s.put_dups.load();
  j["full_puts"] = s.put_full.load();
  j["shm_bytes"] = shm_bytes;
  j["tcp_bytes"] = tcp_bytes;
  j["clean_stop"] = clean;
  std::printf("%s\n", j.dump().c_str());
  return (s.errors.load() == 0 && s.corrupt.load() == 0 && clean) ? 0 : 1;
}
