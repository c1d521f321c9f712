// The yutu-master binary as a child process (found through YUTU_TEST_MASTER_EXE, set by meson): --help, a
// --config file overridden by flags, admin HTTP (/health, /metrics, /query_key, /get_all_segments), a
// put and a lookup over RPC, and a clean exit (status 0) on SIGTERM.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "yutu/io/address.hpp"
#include "yutu/io/http.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/store/rpc_client.hpp"

extern char** environ;

using namespace std::chrono_literals;
using namespace yutu;

namespace {

std::string master_exe() {
  const char* p = std::getenv("YUTU_TEST_MASTER_EXE");
  REQUIRE_MESSAGE(p, "YUTU_TEST_MASTER_EXE is not set (run through meson test)");
  return p;
}

// A child process whose stdout we read line by line.
class child {
 public:
  explicit child(const std::vector<std::string>& args) {
    int out[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::string exe = master_exe();
    std::vector<char*> argv{exe.data()};
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(out[1]);
    REQUIRE(rc == 0);
    out_ = out[0];
  }
  ~child() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_ >= 0) ::close(out_);
  }
  child(const child&) = delete;
  child& operator=(const child&) = delete;

  // The next stdout line, or "" on EOF or after `wait`.
  std::string line(std::chrono::milliseconds wait = 10s) {
    auto deadline = std::chrono::steady_clock::now() + wait;
    for (;;) {
      if (auto nl = buf_.find('\n'); nl != std::string::npos) {
        std::string l = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        return l;
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left <= 0ms) return {};
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) return {};
      char b[512];
      ssize_t n = ::read(out_, b, sizeof b);
      if (n <= 0) return {};
      buf_.append(b, static_cast<std::size_t>(n));
    }
  }
  // Everything until EOF.
  std::string rest() {
    std::string all = std::exchange(buf_, {});
    for (;;) {
      pollfd p{out_, POLLIN, 0};
      if (::poll(&p, 1, 5000) <= 0) break;
      char b[512];
      ssize_t n = ::read(out_, b, sizeof b);
      if (n <= 0) break;
      all.append(b, static_cast<std::size_t>(n));
    }
    return all;
  }

  // The exit status within `wait`, or -1 (still running).
  int wait_exit(std::chrono::milliseconds wait) {
    auto deadline = std::chrono::steady_clock::now() + wait;
    for (;;) {
      int status = 0;
      pid_t r = ::waitpid(pid_, &status, WNOHANG);
      if (r == pid_) {
        pid_ = -1;
        return status;
      }
      if (std::chrono::steady_clock::now() > deadline) return -1;
      std::this_thread::sleep_for(10ms);  // polling a child process: there is no ring to wait on here
    }
  }
  pid_t pid() const { return pid_; }

 private:
  pid_t pid_ = -1;
  int out_ = -1;
  std::string buf_;
};

// "yutu-master: rpc listening on 127.0.0.1:4242" -> "127.0.0.1:4242".
std::string after(const std::string& line, const std::string& marker) {
  auto at = line.find(marker);
  REQUIRE_MESSAGE(at != std::string::npos, line);
  return line.substr(at + marker.size());
}

struct listening {
  std::string rpc, http;
};
listening read_addresses(child& c) {
  listening l;
  l.rpc = after(c.line(), "rpc listening on ");
  l.http = after(c.line(), "admin http listening on ");
  return l;
}

result<io::http_response> get(const std::string& where, const std::string& target) {
  io::reactor r;
  io::http_request req{io::http_verb::get, target, 11};
  return r.block_on(io::http_fetch(io::address::parse(where).value(), std::move(req), 5000ms));
}

std::string tmp_file(const std::string& content) {
  std::string path = "/tmp/yutu-master-test-" + std::to_string(::getpid()) + ".json";
  std::ofstream(path) << content;
  return path;
}

const std::vector<std::string> local_ports{"--rpc-address", "127.0.0.1", "--rpc-port", "0",
                                           "--http-address", "127.0.0.1", "--http-port", "0"};

task<void> put_and_get(store::master_service& m) {
  store::segment_info seg{"proc-test/0x100000", "proc-test", "127.0.0.1", 0x100000, 64 << 20, "tcp"};
  REQUIRE(co_await m.mount_segment("client-a", seg));
  const store::replicate_config one;  // named: g++ 12 mishandles braced temporaries in co_await
  auto reps = co_await m.put_start("client-a", "obj", 4096, one);
  REQUIRE(reps);
  REQUIRE(reps->size() == 1);
  CHECK((*reps)[0].engine_segment == "proc-test");
  REQUIRE(co_await m.put_end("client-a", "obj"));
  auto list = co_await m.get_replica_list("obj");
  REQUIRE(list);
  CHECK(list->size == 4096);
  REQUIRE(list->replicas.size() == 1);
  CHECK(list->replicas[0].addr == (*reps)[0].addr);
  CHECK(list->replicas[0].status == store::replica_status::complete);
  CHECK(list->lease_ttl == 10000ms);
}

}  // namespace

TEST_CASE("--help lists every flag with Mooncake's defaults") {
  child c({"--help"});
  std::string text = c.rest();
  CHECK(c.wait_exit(5s) == 0);
  for (const char* want : {"--rpc-port", "50051", "--http-port", "9003", "--rpc-threads", "--default-kv-lease-ttl",
                           "10000", "--eviction-high-watermark-ratio", "0.90", "--eviction-ratio", "0.05",
                           "--client-ttl", "--default-kv-soft-pin-ttl", "1800000", "--placement", "random",
                           "--config"})
    CHECK_MESSAGE(text.find(want) != std::string::npos, want);
}

TEST_CASE("a bad flag or config value is refused with status 2; flags override the config file") {
  child bad({"--no-such-flag", "1"});
  CHECK(bad.wait_exit(5s) == (2 << 8));
  std::string cfg = tmp_file(R"({"placement": "nowhere", "client_ttl": 5, "rpc-threads": 2})");
  {
    std::vector<std::string> args = local_ports;
    args.insert(args.end(), {"--config", cfg});
    child c(args);
    CHECK(c.wait_exit(5s) == (2 << 8));
  }
  {
    std::vector<std::string> args = local_ports;
    args.insert(args.end(), {"--placement", "free_ratio_first", "--config", cfg});
    child c(args);
    auto where = read_addresses(c);
    std::string summary = c.line();
    CHECK(summary.find("2 rpc threads") != std::string::npos);
    CHECK(summary.find("placement free_ratio_first") != std::string::npos);
    CHECK(summary.find("client ttl 5 s") != std::string::npos);
    ::kill(c.pid(), SIGINT);
    CHECK(c.wait_exit(5s) == 0);
  }
  std::remove(cfg.c_str());
}

TEST_CASE("yutu-master: admin HTTP, a put and a lookup over RPC, clean exit on SIGTERM") {
  std::vector<std::string> args = local_ports;
  args.insert(args.end(), {"--rpc-threads", "2"});
  child c(args);
  auto where = read_addresses(c);

  auto health = get(where.http, "/health");
  REQUIRE(health);
  CHECK(health->result() == io::http_status::ok);
  CHECK(health->body() == "OK\n");

  {
    auto client = store::rpc_master_client::create(where.rpc).value();
    REQUIRE(client->pool().block_on(0, client->connect()));
    client->pool().block_on(0, put_and_get(*client));
  }

  auto metrics = get(where.http, "/metrics");
  REQUIRE(metrics);
  CHECK(metrics->result() == io::http_status::ok);
  const std::string& m = metrics->body();
  CHECK(m.find("master_rpc_requests_total{op=\"put_start\"} 1") != std::string::npos);
  CHECK(m.find("master_rpc_connections_accepted_total") != std::string::npos);
  CHECK(m.find("master_key_count") != std::string::npos);

  auto q = get(where.http, "/query_key?key=obj");
  REQUIRE(q);
  CHECK(q->result() == io::http_status::ok);
  CHECK(q->body().find("\"found\":true") != std::string::npos);
  auto miss = get(where.http, "/query_key?key=absent");
  REQUIRE(miss);
  CHECK(miss->result() == io::http_status::not_found);
  auto segs = get(where.http, "/get_all_segments");
  REQUIRE(segs);
  CHECK(segs->body().find("proc-test/0x100000") != std::string::npos);

  auto t0 = std::chrono::steady_clock::now();
  REQUIRE(::kill(c.pid(), SIGTERM) == 0);
  int status = c.wait_exit(5s);
  REQUIRE(status != -1);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
  CHECK(std::chrono::steady_clock::now() - t0 < 3s);
}
