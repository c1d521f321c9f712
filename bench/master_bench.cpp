// master_bench: the master's metadata operations per second through RPC on loopback, shaped like
// Mooncake's master benchmark: 4 KiB objects, batched (128 keys per call) put (start + end) and
// replica lookup, and single-key put and lookup.
//
//   master_bench                  the suite: an in-process master (master_state behind rpc_server),
//                                 --clients client processes (this binary re-executed), each phase
//                                 run by every client at once
//   master_bench --client ADDR    one client process, driven by its parent over stdin/stdout
//
// Reference column: Mooncake's master measured on this machine (235k batched puts/s, 111k batched
// lookups/s, 14k single puts/s, 46k single lookups/s); the target is twice that. Rates count keys:
// a batched call of 128 keys counts 128, a put counts once for its start and end. The last line of
// stdout is one JSON object.
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "yutu/coro/when_all.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/store/master_state.hpp"
#include "yutu/store/rpc_client.hpp"
#include "yutu/store/rpc_server.hpp"

extern char** environ;

namespace {

using namespace yutu;
using clk = std::chrono::steady_clock;
using json = nlohmann::json;

constexpr std::uint64_t object_size = 4096;
constexpr std::size_t batch = 128;

struct options {
  std::string client_of;  // --client ADDR: run as a client process
  std::size_t id = 0;
  std::size_t clients = 2;
  std::size_t master_threads = 2;
  std::size_t connections = 2;  // per client
  std::size_t batch_workers = 4;   // concurrent batched calls per client
  std::size_t single_workers = 64;  // concurrent single-key calls per client
  double seconds = 2.0;
  std::string only;  // --only PHASE: that phase (after batch_put, which the lookups need)
};

struct phase_def {
  const char* name;
  const char* label;
  double mooncake;  // keys/s on this machine
};
constexpr phase_def phases[] = {
    {"batch_put", "batched put (start+end), keys/s", 235000},
    {"batch_get", "batched replica lookup, keys/s", 111000},
    {"single_put", "single put (start+end), puts/s", 14000},
    {"single_get", "single replica lookup, lookups/s", 46000},
};

// --- client process ---

struct client_state {
  store::rpc_master_client* m;
  std::string me;
  std::uint64_t next_key = 0;  // keys put so far: "<me>-<n>", n < next_key
  std::uint64_t errors = 0;
};

std::string key_of(const client_state& c, std::uint64_t n) { return c.me + "-" + std::to_string(n); }

task<std::uint64_t> batch_put_worker(client_state& c, clk::time_point until) {
  std::uint64_t done = 0;
  const store::replicate_config cfg;
  const std::vector<std::uint64_t> sizes(batch, object_size);
  while (clk::now() < until) {
    std::vector<std::string> keys;
    keys.reserve(batch);
    for (std::size_t i = 0; i < batch; ++i) keys.push_back(key_of(c, c.next_key++));
    auto started = co_await c.m->batch_put_start(c.me, keys, sizes, cfg);
    for (auto& r : started) c.errors += !r;
    auto ended = co_await c.m->batch_put_end(c.me, std::move(keys));
    for (auto& r : ended) c.errors += !r;
    done += batch;
  }
  co_return done;
}

task<std::uint64_t> batch_get_worker(client_state& c, clk::time_point until, std::uint64_t seed) {
  std::uint64_t done = 0, x = seed * 0x9E3779B97F4A7C15ull + 1;
  const std::uint64_t have = c.next_key;
  while (clk::now() < until) {
    std::vector<std::string> keys;
    keys.reserve(batch);
    for (std::size_t i = 0; i < batch; ++i) {
      x ^= x << 13, x ^= x >> 7, x ^= x << 17;
      keys.push_back(key_of(c, x % have));
    }
    auto lists = co_await c.m->batch_get_replica_list(std::move(keys));
    for (auto& r : lists) c.errors += !r;
    done += batch;
  }
  co_return done;
}

task<std::uint64_t> single_put_worker(client_state& c, clk::time_point until) {
  std::uint64_t done = 0;
  const store::replicate_config cfg;
  while (clk::now() < until) {
    std::string key = key_of(c, c.next_key++);
    auto started = co_await c.m->put_start(c.me, key, object_size, cfg);
    c.errors += !started;
    auto ended = co_await c.m->put_end(c.me, std::move(key));
    c.errors += !ended;
    ++done;
  }
  co_return done;
}

task<std::uint64_t> single_get_worker(client_state& c, clk::time_point until, std::uint64_t seed) {
  std::uint64_t done = 0, x = seed * 0x9E3779B97F4A7C15ull + 1;
  const std::uint64_t have = c.next_key;
  while (clk::now() < until) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    auto list = co_await c.m->get_replica_list(key_of(c, x % have));
    c.errors += !list;
    ++done;
  }
  co_return done;
}

task<std::uint64_t> run_phase(client_state& c, std::string phase, std::size_t workers, clk::time_point until) {
  std::vector<task<std::uint64_t>> ts;
  for (std::size_t w = 0; w < workers; ++w) {
    if (phase == "batch_put") ts.push_back(batch_put_worker(c, until));
    if (phase == "batch_get") ts.push_back(batch_get_worker(c, until, w + 1));
    if (phase == "single_put") ts.push_back(single_put_worker(c, until));
    if (phase == "single_get") ts.push_back(single_get_worker(c, until, w + 1));
  }
  // Named, not a range-for over the co_await: g++ 12 destroys that temporary too early.
  std::vector<std::uint64_t> counts = co_await when_all(std::move(ts));
  std::uint64_t total = 0;
  for (std::uint64_t n : counts) total += n;
  co_return total;
}

int client_main(const options& o) {
  store::rpc_client_options co;
  co.connections = o.connections;
  auto m = store::rpc_master_client::create(o.client_of, co);
  if (!m) {
    std::printf("error %s\n", m.error().message().c_str());
    return 1;
  }
  store::rpc_master_client& mc = **m;
  client_state c{&mc, fmt::format("bench-client-{}", o.id)};
  store::segment_info seg{fmt::format("{}/seg", c.me), c.me, "127.0.0.1", 0x100000000ull * (o.id + 1),
                          std::uint64_t{1} << 40, "tcp"};
  auto mounted = mc.pool().block_on(0, mc.mount_segment(c.me, seg));
  if (!mounted) {
    std::printf("error mount: %s\n", mounted.error().message().c_str());
    return 1;
  }
  std::printf("ready\n");
  std::fflush(stdout);
  char line[256];
  while (std::fgets(line, sizeof line, stdin)) {
    char phase[64];
    double seconds = 0;
    if (std::sscanf(line, "%63s %lf", phase, &seconds) != 2) break;
    std::string p = phase;
    std::size_t workers = p.starts_with("batch") ? o.batch_workers : o.single_workers;
    c.errors = 0;
    auto t0 = clk::now();
    auto until = t0 + std::chrono::duration_cast<clk::duration>(std::chrono::duration<double>(seconds));
    std::uint64_t n = mc.pool().block_on(0, run_phase(c, p, workers, until));
    double took = std::chrono::duration<double>(clk::now() - t0).count();
    std::printf("%llu %.6f %llu\n", static_cast<unsigned long long>(n), took,
                static_cast<unsigned long long>(c.errors));
    std::fflush(stdout);
  }
  return 0;
}

// --- parent: master and driver ---

struct child {
  pid_t pid = -1;
  std::FILE* to = nullptr;
  std::FILE* from = nullptr;

  bool start(const std::vector<std::string>& args) {
    int in[2], out[2];
    // CLOEXEC: a later child must not inherit this one's pipe ends (its stdin would never see EOF).
    if (::pipe2(in, O_CLOEXEC) != 0 || ::pipe2(out, O_CLOEXEC) != 0) return false;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid, "/proc/self/exe", &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    if (rc != 0) return false;
    to = ::fdopen(in[1], "w");
    from = ::fdopen(out[0], "r");
    return true;
  }
  std::string line() {
    char buf[512];
    if (!std::fgets(buf, sizeof buf, from)) return {};
    std::string s(buf);
    if (!s.empty() && s.back() == '\n') s.pop_back();
    return s;
  }
  void send(const std::string& s) {
    std::fputs((s + "\n").c_str(), to);
    std::fflush(to);
  }
  int finish() {
    if (to) std::fclose(to), to = nullptr;
    int status = -1;
    if (pid > 0) ::waitpid(pid, &status, 0), pid = -1;
    if (from) std::fclose(from), from = nullptr;
    return status;
  }
};

int suite(const options& o) {
  store::master_config mc;
  store::master_state state(mc);
  io::reactor_pool pool(o.master_threads);
  auto srv = store::rpc_server::bind(io::address::ipv4_loopback(0));
  if (!srv) {
    std::fprintf(stderr, "master_bench: bind: %s\n", srv.error().message().c_str());
    return 1;
  }
  pool.spawn(0, srv->serve(state, pool));
  std::string where = srv->local_address().to_string();

  std::vector<child> clients(o.clients);
  for (std::size_t i = 0; i < o.clients; ++i) {
    std::vector<std::string> args{"master_bench", "--client", where, "--id", std::to_string(i),
                                  "--connections", std::to_string(o.connections),
                                  "--batch-workers", std::to_string(o.batch_workers),
                                  "--single-workers", std::to_string(o.single_workers)};
    if (!clients[i].start(args) || clients[i].line() != "ready") {
      std::fprintf(stderr, "master_bench: client %zu did not start\n", i);
      return 1;
    }
  }

  std::printf("master_bench: master on %s (%zu rpc threads), %zu client processes x %zu connections, "
              "%zu batched / %zu single calls in flight per client, %.1f s per phase, %llu B objects\n",
              where.c_str(), o.master_threads, o.clients, o.connections, o.batch_workers, o.single_workers,
              o.seconds, static_cast<unsigned long long>(object_size));
  std::printf("%-36s %14s %14s %8s\n", "operation", "yutu", "mooncake", "ratio");
  json out{{"bench", "master_bench"},
           {"clients", o.clients},
           {"master_threads", o.master_threads},
           {"object_size", object_size},
           {"batch", batch}};
  json results = json::object(), refs = json::object(), ratios = json::object();
  std::uint64_t errors = 0;
  for (const phase_def& p : phases) {
    if (!o.only.empty() && o.only != p.name && std::string_view(p.name) != "batch_put") continue;
    for (auto& c : clients) c.send(fmt::format("{} {}", p.name, o.seconds));
    double rate = 0;
    for (auto& c : clients) {
      unsigned long long n = 0, errs = 0;
      double took = 0;
      std::string l = c.line();
      if (std::sscanf(l.c_str(), "%llu %lf %llu", &n, &took, &errs) != 3 || took <= 0) {
        std::fprintf(stderr, "master_bench: bad report '%s'\n", l.c_str());
        return 1;
      }
      rate += static_cast<double>(n) / took;  // the clients run at the same time: rates add up
      errors += errs;
    }
    std::printf("%-36s %14.0f %14.0f %8.2f\n", p.label, rate, p.mooncake, rate / p.mooncake);
    std::fflush(stdout);
    results[p.name] = std::round(rate);
    refs[p.name] = p.mooncake;
    ratios[p.name] = std::round(rate / p.mooncake * 100) / 100;
  }
  for (auto& c : clients) c.finish();
  auto st = srv->stats();
  srv->stop();
  pool.stop_and_join();
  std::printf("errors: %llu; master: %llu keys, %llu RPC frames\n", static_cast<unsigned long long>(errors),
              static_cast<unsigned long long>(state.metrics().key_count),
              static_cast<unsigned long long>(st.requests));
  out["ops_per_s"] = results;
  out["mooncake_ops_per_s"] = refs;
  out["ratio"] = ratios;
  out["errors"] = errors;
  std::printf("%s\n", out.dump().c_str());
  return errors == 0 ? 0 : 1;
}

bool parse(int argc, char** argv, options& o) {
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto next = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--client") o.client_of = next();
    else if (a == "--id") o.id = std::stoul(next());
    else if (a == "--clients") o.clients = std::stoul(next());
    else if (a == "--master-threads") o.master_threads = std::stoul(next());
    else if (a == "--connections") o.connections = std::stoul(next());
    else if (a == "--batch-workers") o.batch_workers = std::stoul(next());
    else if (a == "--single-workers") o.single_workers = std::stoul(next());
    else if (a == "--seconds") o.seconds = std::stod(next());
    else if (a == "--quick") o.seconds = 0.3;
    else if (a == "--only") o.only = next();
    else {
      std::fprintf(stderr,
                   "usage: master_bench [--clients N] [--master-threads N] [--connections N] [--batch-workers N]\n"
                   "                    [--single-workers N] [--seconds S] [--quick] [--only PHASE]\n");
      return false;
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  options o;
  try {
    if (!parse(argc, argv, o)) return 2;
  } catch (const std::exception&) {
    std::fprintf(stderr, "master_bench: bad number\n");
    return 2;
  }
  ::signal(SIGPIPE, SIG_IGN);
  if (!o.client_of.empty()) return client_main(o);
  return suite(o);
}
