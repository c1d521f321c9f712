// yutu-master: the store master as a process, Mooncake's mooncake_master counterpart. It serves the
// master's state machine (master_state) over the store RPC protocol and an admin HTTP endpoint:
// /metrics (Prometheus), /health, /role, /query_key?key=K, /get_all_segments.
//
// Flags keep Mooncake's names and defaults (dashes or underscores both work), and --config FILE
// reads the same keys from a JSON object; flags given on the command line override the file.
// SIGINT/SIGTERM stop it cleanly: the listeners close, requests being handled are answered, the
// process exits 0. Signals arrive through a signalfd polled on the main reactor, so nothing runs in
// a signal handler.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "yutu/coro/async_scope.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/http.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/store/master_state.hpp"
#include "yutu/store/rpc_server.hpp"

namespace {

using namespace yutu;

struct flag {
  const char* name;
  const char* value;  // the default, then what was set
  const char* help;
};

// Every flag, with Mooncake's default. `value` points into `storage` once set.
struct flags {
  std::vector<flag> list = {
      {"rpc-address", "0.0.0.0", "address the RPC server listens on"},
      {"rpc-port", "50051", "RPC port (0 picks a free one)"},
      {"rpc-threads", "4", "reactor threads serving RPC connections"},
      {"http-address", "0.0.0.0", "address the admin HTTP server listens on"},
      {"http-port", "9003", "admin HTTP port: /metrics /health /role /query_key /get_all_segments (0 picks a free one)"},
      {"default-kv-lease-ttl", "10000", "lease a lookup takes on an object, ms"},
      {"default-kv-soft-pin-ttl", "1800000", "soft pin of objects put with with_soft_pin, ms"},
      {"eviction-high-watermark-ratio", "0.90", "a segment fuller than this triggers eviction"},
      {"eviction-ratio", "0.05", "fraction of the capacity one eviction round frees"},
      {"client-ttl", "10", "a client silent this long is expired and its segments unmounted, s"},
      {"placement", "random", "replica placement: random | free_ratio_first | local_first"},
      {"config", "", "JSON file with the same keys (flags override it)"},
  };
  std::deque<std::string> storage;  // grows without moving what `value` points at

  flag* find(std::string_view name) {
    std::string n(name);
    for (char& c : n)
      if (c == '_') c = '-';
    for (auto& f : list)
      if (n == f.name) return &f;
    return nullptr;
  }
  void set(flag& f, std::string v) {
    storage.push_back(std::move(v));
    f.value = storage.back().c_str();
  }
  std::string get(std::string_view name) { return find(name)->value; }
};

void print_usage(flags& fl, std::FILE* to) {
  std::fputs("usage: yutu-master [--FLAG VALUE | --FLAG=VALUE]...\n"
             "  The store master: metadata, allocation and leases over RPC, admin HTTP.\n",
             to);
  for (auto& f : fl.list)
    std::fprintf(to, "  --%-31s %s (default: %s)\n", f.name, f.help, *f.value ? f.value : "none");
  std::fputs("  --help                            this text\n", to);
}

std::optional<long long> parse_int(const std::string& s, long long lo, long long hi) {
  char* end = nullptr;
  errno = 0;
  long long v = std::strtoll(s.c_str(), &end, 10);
  if (s.empty() || *end != '\0' || errno != 0 || v < lo || v > hi) return std::nullopt;
  return v;
}
std::optional<double> parse_ratio(const std::string& s) {
  char* end = nullptr;
  double v = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0' || !std::isfinite(v) || v < 0 || v > 1) return std::nullopt;
  return v;
}

// Applies a --config file: every key must be a known flag; values may be strings, numbers or bools.
bool load_config(flags& fl, const std::string& path) {
  std::ifstream in(path);
  if (!in) {
    std::fprintf(stderr, "yutu-master: cannot open config '%s': %s\n", path.c_str(), std::strerror(errno));
    return false;
  }
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    std::fprintf(stderr, "yutu-master: config '%s' is not a JSON object\n", path.c_str());
    return false;
  }
  for (auto& [k, v] : j.items()) {
    flag* f = fl.find(k);
    if (!f || std::string_view(f->name) == "config") {
      std::fprintf(stderr, "yutu-master: unknown key '%s' in config '%s'\n", k.c_str(), path.c_str());
      return false;
    }
    if (v.is_string())
      fl.set(*f, v.get<std::string>());
    else if (v.is_number_integer() || v.is_number_unsigned() || v.is_number_float() || v.is_boolean())
      fl.set(*f, v.dump());
    else {
      std::fprintf(stderr, "yutu-master: key '%s' in config '%s' needs a string or a number\n", k.c_str(),
                   path.c_str());
      return false;
    }
  }
  return true;
}

std::string host_port(const std::string& host, long long port) {
  return host.find(':') != std::string::npos && host.front() != '[' ? fmt::format("[{}]:{}", host, port)
                                                                     : fmt::format("{}:{}", host, port);
}

// Waits for SIGINT/SIGTERM, then stops both servers.
task<void> stop_on_signal(int sfd, store::rpc_server& rpc, io::http_server& http) {
  auto ready = co_await io::poll(sfd, POLLIN);
  if (ready) {
    signalfd_siginfo si{};
    if (::read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si))
      std::fprintf(stderr, "yutu-master: %s, stopping\n", ::strsignal(static_cast<int>(si.ssi_signo)));
  }
  rpc.stop();
  http.stop();
}

// Client expiry, abandoned puts and deferred frees run even when no call arrives.
task<void> maintenance(store::master_state& st, std::chrono::milliseconds every) {
  for (;;) {
    auto r = co_await io::sleep_for(every);
    if (!r) co_return;
    st.tick();
  }
}

task<io::http_response> admin(store::master_state* st, store::rpc_server* rpc, const io::http_request& req) {
  using io::http_status;
  std::string_view target(req.target().data(), req.target().size());
  std::string_view path = io::target_path(target);
  if (req.method() != io::http_verb::get && req.method() != io::http_verb::head)
    co_return io::make_response(http_status::method_not_allowed, "method not allowed\n");
  if (path == "/health") co_return io::make_response(http_status::ok, "OK\n");
  if (path == "/role") co_return io::make_response(http_status::ok, "leader\n");
  if (path == "/metrics")
    co_return io::make_response(http_status::ok, st->metrics_text() + rpc->metrics_text(),
                                "text/plain; version=0.0.4");
  if (path == "/get_all_segments") co_return io::make_response(http_status::ok, st->segments_json(), "application/json");
  if (path == "/query_key") {
    auto key = io::query_param(target, "key");
    if (!key || key->empty()) co_return io::make_response(http_status::bad_request, "missing key\n");
    std::string body = st->query_key_json(*key);
    bool found = nlohmann::json::parse(body, nullptr, false).value("found", false);
    co_return io::make_response(found ? http_status::ok : http_status::not_found, std::move(body), "application/json");
  }
  co_return io::make_response(http_status::not_found, "not found\n");
}

task<void> run(int sfd, store::master_state& st, std::chrono::milliseconds tick_every, store::rpc_server& rpc,
               io::http_server& http, io::reactor_pool& pool) {
  async_scope scope;
  scope.spawn(stop_on_signal(sfd, rpc, http));
  scope.spawn(maintenance(st, tick_every));
  auto handler = [&st, &rpc](const io::http_request& req) { return admin(&st, &rpc, req); };
  async_scope servers;
  servers.spawn(rpc.serve(st, pool).with_stop_token(std::stop_token{}));
  servers.spawn(http.serve(handler).with_stop_token(std::stop_token{}));
  co_await servers.join();   // both end after a signal (or a fatal accept error)
  rpc.stop();
  http.stop();
  scope.request_stop();
  co_await scope.join();
}

}  // namespace

int main(int argc, char** argv) {
  flags fl;
  // --config first, so the command line overrides the file whatever the order.
  std::vector<std::pair<flag*, std::string>> given;
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "--help" || a == "-h") {
      print_usage(fl, stdout);
      return 0;
    }
    if (!a.starts_with("--")) {
      std::fprintf(stderr, "yutu-master: unexpected argument '%s'\n", argv[i]);
      print_usage(fl, stderr);
      return 2;
    }
    a.remove_prefix(2);
    std::string value;
    auto eq = a.find('=');
    flag* f = fl.find(a.substr(0, eq));
    if (!f) {
      std::fprintf(stderr, "yutu-master: unknown flag '%s'\n", argv[i]);
      print_usage(fl, stderr);
      return 2;
    }
    if (eq != std::string_view::npos) {
      value = std::string(a.substr(eq + 1));
    } else if (i + 1 < argc) {
      value = argv[++i];
    } else {
      std::fprintf(stderr, "yutu-master: flag '--%s' needs a value\n", f->name);
      return 2;
    }
    given.emplace_back(f, std::move(value));
  }
  for (auto& [f, v] : given)
    if (std::string_view(f->name) == "config" && !load_config(fl, v)) return 2;
  for (auto& [f, v] : given) fl.set(*f, v);

  auto rpc_port = parse_int(fl.get("rpc-port"), 0, 65535);
  auto http_port = parse_int(fl.get("http-port"), 0, 65535);
  auto threads = parse_int(fl.get("rpc-threads"), 1, 1024);
  auto lease = parse_int(fl.get("default-kv-lease-ttl"), 1, 1ll << 40);
  auto soft_pin = parse_int(fl.get("default-kv-soft-pin-ttl"), 1, 1ll << 40);
  auto client_ttl = parse_int(fl.get("client-ttl"), 1, 1ll << 30);
  auto high = parse_ratio(fl.get("eviction-high-watermark-ratio"));
  auto ratio = parse_ratio(fl.get("eviction-ratio"));
  struct check {
    bool ok;
    const char* name;
  };
  for (check c : {check{rpc_port.has_value(), "rpc-port"}, check{http_port.has_value(), "http-port"},
                  check{threads.has_value(), "rpc-threads"}, check{lease.has_value(), "default-kv-lease-ttl"},
                  check{soft_pin.has_value(), "default-kv-soft-pin-ttl"}, check{client_ttl.has_value(), "client-ttl"},
                  check{high.has_value(), "eviction-high-watermark-ratio"},
                  check{ratio.has_value(), "eviction-ratio"}}) {
    if (!c.ok) {
      std::fprintf(stderr, "yutu-master: bad value '%s' for --%s\n", fl.get(c.name).c_str(), c.name);
      return 2;
    }
  }
  auto rpc_at = io::address::parse(host_port(fl.get("rpc-address"), *rpc_port));
  auto http_at = io::address::parse(host_port(fl.get("http-address"), *http_port));
  if (!rpc_at || !http_at) {
    std::fprintf(stderr, "yutu-master: bad listen address\n");
    return 2;
  }

  store::master_config cfg;
  cfg.default_kv_lease_ttl = std::chrono::milliseconds(*lease);
  cfg.default_kv_soft_pin_ttl = std::chrono::milliseconds(*soft_pin);
  cfg.client_ttl = std::chrono::seconds(*client_ttl);
  cfg.eviction_high_watermark_ratio = *high;
  cfg.eviction_ratio = *ratio;
  cfg.placement_strategy = fl.get("placement");
  std::unique_ptr<store::master_state> st;
  try {
    st = std::make_unique<store::master_state>(cfg);
  } catch (const std::invalid_argument& e) {
    std::fprintf(stderr, "yutu-master: bad configuration: %s\n", e.what());
    return 2;
  }

  // Blocked before any thread starts, so every thread inherits the mask and only the signalfd sees
  // the signals.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  if (::pthread_sigmask(SIG_BLOCK, &mask, nullptr) != 0) {
    std::perror("yutu-master: pthread_sigmask");
    return 1;
  }
  int sfd = ::signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) {
    std::perror("yutu-master: signalfd");
    return 1;
  }

  auto rpc = store::rpc_server::bind(*rpc_at);
  if (!rpc) {
    std::fprintf(stderr, "yutu-master: cannot listen for RPC on %s: %s\n", rpc_at->to_string().c_str(),
                 rpc.error().message().c_str());
    return 1;
  }
  auto http = io::http_server::bind(*http_at);
  if (!http) {
    std::fprintf(stderr, "yutu-master: cannot listen for HTTP on %s: %s\n", http_at->to_string().c_str(),
                 http.error().message().c_str());
    return 1;
  }
  std::printf("yutu-master: rpc listening on %s\n", rpc->local_address().to_string().c_str());
  std::printf("yutu-master: admin http listening on %s\n", http->local_address().to_string().c_str());
  std::printf("yutu-master: %lld rpc threads, placement %s, lease %lld ms, client ttl %lld s\n", *threads,
              cfg.placement_strategy.c_str(), *lease, *client_ttl);
  std::fflush(stdout);

  {
    io::reactor_pool pool(static_cast<std::size_t>(*threads));
    io::reactor r;
    r.block_on(run(sfd, *st, cfg.maintenance_interval, *rpc, *http, pool));
    pool.stop_and_join();
  }
  ::close(sfd);
  std::fprintf(stderr, "yutu-master: stopped\n");
  return 0;
}
