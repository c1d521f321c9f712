// Metadata back ends: the connection-string factory, base64, the in-process store, the HTTP server and
// its client on loopback (keys that need escaping, large values, 400 / 405 / 413, a stalled client,
// unreachable and silent servers), and etcd through its JSON gateway against a real etcd started as a
// child process (leases kept alive, expiring after the holder died, revoked on close, re-granted
// after etcd lost them; several endpoints). The etcd cases skip, saying so, when /usr/bin/etcd is
// absent.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/io_test_util.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/http.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/transfer/detail/base64.hpp"
#include "yutu/transfer/metadata.hpp"
#include "yutu/transfer/metadata_server.hpp"

using namespace std::chrono_literals;
using yutu::result;
using yutu::task;
using yutu::te_errc;
using yutu::io::address;
using steady = yutu::io::clock;
using yutu::io::reactor;
using yutu::io::tcp_stream;
using yutu::test::spawn;
using yutu::transfer::make_metadata_store;
using yutu::transfer::metadata_options;
using yutu::transfer::metadata_server;
using yutu::transfer::metadata_store;
using yutu::transfer::put_options;

namespace {

// A loopback port nothing listens on (bound, read, closed: a small window for reuse, fine in tests).
std::uint16_t dead_port() {
  auto l = yutu::io::tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(l.has_value());
  return l->local_address().port();
}

std::unique_ptr<metadata_store> store_for(const std::string& conn, metadata_options o = {}) {
  auto s = make_metadata_store(conn, o);
  REQUIRE(s.has_value());
  REQUIRE(*s != nullptr);
  return std::move(*s);
}

// Sends raw bytes and reads until EOF (or 5 s).
task<std::string> raw_exchange(address to, std::string bytes) {
  auto s = co_await tcp_stream::connect(to);
  REQUIRE(s.has_value());
  if (!bytes.empty()) REQUIRE((co_await s->send_all(std::as_bytes(std::span(bytes.data(), bytes.size())))).has_value());
  std::string got;
  std::vector<std::byte> buf(16 * 1024);
  for (;;) {
    auto n = co_await s->recv(buf).with_timeout(5s);
    if (!n || *n == 0) break;
    got.append(reinterpret_cast<const char*>(buf.data()), *n);
  }
  co_return got;
}

std::string all_bytes() {
  std::string s;
  for (int i = 0; i < 256; ++i) s += static_cast<char>(i);
  return s;
}

}  // namespace

TEST_CASE("make_metadata_store reads Mooncake's connection strings") {
  CHECK(store_for("")->describe() == "memory");
  CHECK(store_for("memory")->describe() == "memory");
  auto p2p = make_metadata_store("P2PHANDSHAKE");
  REQUIRE(p2p.has_value());
  CHECK(*p2p == nullptr);
  auto p2p_short = make_metadata_store("p2p");  // the engine's shorthand means the same here
  REQUIRE(p2p_short.has_value());
  CHECK(*p2p_short == nullptr);
  CHECK(store_for("http://127.0.0.1:8080/metadata")->describe() == "http://127.0.0.1:8080/metadata");
  CHECK(store_for("http://127.0.0.1:8080")->describe() == "http://127.0.0.1:8080/metadata");
  CHECK(store_for("etcd://127.0.0.1:2379;127.0.0.1:22379")->describe() == "etcd://127.0.0.1:2379;127.0.0.1:22379");
  CHECK(store_for("127.0.0.1:2379")->describe() == "etcd://127.0.0.1:2379");
  auto redis = make_metadata_store("redis://127.0.0.1:6379");
  REQUIRE_FALSE(redis.has_value());
  CHECK(redis.error() == yutu::errc::not_supported);
  for (const char* bad : {"foo://x:1", "http://", "etcd://", "etcd://;", "http://127.0.0.1:notaport/metadata"}) {
    CAPTURE(bad);
    auto s = make_metadata_store(bad);
    REQUIRE_FALSE(s.has_value());
    CHECK(s.error() == yutu::errc::invalid_params);
  }
}

TEST_CASE("base64 (RFC 4648 vectors, every byte, malformed input)") {
  using yutu::transfer::detail::base64_decode;
  using yutu::transfer::detail::base64_encode;
  const std::pair<const char*, const char*> vectors[] = {{"", ""},         {"f", "Zg=="},         {"fo", "Zm8="},
                                                         {"foo", "Zm9v"},  {"foob", "Zm9vYg=="},  {"fooba", "Zm9vYmE="},
                                                         {"foobar", "Zm9vYmFy"}};
  for (auto [plain, enc] : vectors) {
    CHECK(base64_encode(plain) == enc);
    CHECK(base64_decode(enc) == std::string(plain));
  }
  const std::string bytes = all_bytes();
  for (std::size_t n = 0; n <= bytes.size(); n += 37) CHECK(base64_decode(base64_encode(bytes.substr(0, n))) == bytes.substr(0, n));
  CHECK(base64_decode(base64_encode(bytes)) == bytes);
  for (const char* bad : {"Zg=", "Zh==", "Zm9=", "Z===", "Zm9v!A==", "=AAA", "Zg==Zg==", "Zm 9"}) {
    CAPTURE(bad);
    CHECK_FALSE(base64_decode(bad).has_value());
  }
}

TEST_CASE("memory store: one map per process") {
  reactor r;
  auto a = store_for("memory");
  auto b = store_for("");
  auto body = [&]() -> task<void> {
    CHECK((co_await a->get("mem/missing")).value() == std::nullopt);
    REQUIRE((co_await a->put("mem/k", "v1")).has_value());
    CHECK((co_await b->get("mem/k")).value() == "v1");  // another store, the same map
    REQUIRE((co_await b->put("mem/k", "v2", put_options{.lease_ttl = 1s})).has_value());
    CHECK((co_await a->get("mem/k")).value() == "v2");
    REQUIRE((co_await a->remove("mem/k")).has_value());
    REQUIRE((co_await a->remove("mem/k")).has_value());  // removing a missing key is fine
    CHECK((co_await b->get("mem/k")).value() == std::nullopt);
    REQUIRE((co_await a->close()).has_value());
  };
  auto t = body();
  r.block_on(std::move(t));
}

// --- HTTP server and client ---

namespace {

task<void> serve_in_background(metadata_server& s, int* done) {
  spawn(s.serve(), done);
  co_return;
}

struct http_fixture {
  reactor r;
  std::optional<metadata_server> srv;
  int served = 0;
  explicit http_fixture(yutu::transfer::metadata_server_options o = {}) {
    auto s = metadata_server::bind(address::ipv4_loopback(0), o);
    REQUIRE(s.has_value());
    srv.emplace(std::move(*s));
    r.block_on(serve_in_background(*srv, &served));
  }
  std::string url() const { return "http://" + srv->local_address().to_string() + "/metadata"; }
  ~http_fixture() {
    srv->stop();
    r.run_until_empty();
    CHECK(served == 1);
  }
};

}  // namespace

TEST_CASE("http store against the metadata server: get, put, remove, escaping, large values") {
  http_fixture f;
  auto store = store_for(f.url());
  CHECK(store->describe() == f.url());
  auto body = [&]() -> task<void> {
    CHECK((co_await store->get("missing")).value() == std::nullopt);
    const std::string key = yutu::transfer::ram_key("host/a&b=c d+e%f?g#h");
    REQUIRE((co_await store->put(key, "{\"v\":1}")).has_value());
    CHECK((co_await store->get(key)).value() == "{\"v\":1}");
    CHECK((co_await store->get(yutu::transfer::ram_key("host/a"))).value() == std::nullopt);  // not cut at '&'
    REQUIRE((co_await store->put(key, "{\"v\":2}")).has_value());
    CHECK((co_await store->get(key)).value() == "{\"v\":2}");
    CHECK(f.srv->size() == 1);

    std::string large(4 << 20, '\0');
    for (std::size_t i = 0; i < large.size(); ++i) large[i] = static_cast<char>(i * 131 + (i >> 12));
    REQUIRE((co_await store->put("large", large)).has_value());
    auto got = co_await store->get("large");
    REQUIRE(got.has_value());
    REQUIRE(got->has_value());
    CHECK(**got == large);
    REQUIRE((co_await store->put("binary", all_bytes())).has_value());
    CHECK((co_await store->get("binary")).value() == all_bytes());
    REQUIRE((co_await store->put("empty", "")).has_value());
    CHECK((co_await store->get("empty")).value() == std::string());

    REQUIRE((co_await store->remove(key)).has_value());
    REQUIRE((co_await store->remove(key)).has_value());  // 404 on DELETE is not an error
    CHECK((co_await store->get(key)).value() == std::nullopt);
    CHECK(f.srv->size() == 3);
  };
  auto t = body();
  f.r.block_on(std::move(t));
}

TEST_CASE("metadata server: bad requests, oversized values, a stalled client") {
  yutu::transfer::metadata_server_options o;
  o.max_value_size = 1 << 20;
  o.request_timeout = 300ms;
  http_fixture f(o);
  const address at = f.srv->local_address();
  auto store = store_for(f.url());
  int stalled_done = 0;
  std::string stalled_got;
  auto stalled = [&]() -> task<void> {
    stalled_got = co_await raw_exchange(at, "PUT /metadata?key=s HTTP/1.1\r\nContent-Length: 10\r\n\r\nabc");
  };
  auto body = [&]() -> task<void> {
    spawn(stalled(), &stalled_done);
    std::string no_key = co_await raw_exchange(at, "GET /metadata HTTP/1.1\r\nConnection: close\r\n\r\n");
    CHECK(no_key.starts_with("HTTP/1.1 400 "));
    std::string bad_escape = co_await raw_exchange(at, "GET /metadata?key=%zz HTTP/1.1\r\nConnection: close\r\n\r\n");
    CHECK(bad_escape.starts_with("HTTP/1.1 400 "));
    std::string garbage = co_await raw_exchange(at, "\x01\x02 garbage\r\n\r\n");
    CHECK(garbage.starts_with("HTTP/1.1 400 "));
    std::string post = co_await raw_exchange(at, "POST /metadata?key=k HTTP/1.1\r\nConnection: close\r\n\r\n");
    CHECK(post.starts_with("HTTP/1.1 405 "));
    std::string other = co_await raw_exchange(at, "GET /other?key=k HTTP/1.1\r\nConnection: close\r\n\r\n");
    CHECK(other.starts_with("HTTP/1.1 404 "));
    std::string big =
        co_await raw_exchange(at, "PUT /metadata?key=k HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n" + std::string(1000, 'x'));
    CHECK(big.starts_with("HTTP/1.1 413 "));
    // Through the store: the server's refusal is a metadata error, and nothing was stored.
    auto r = co_await store->put("too-big", std::string((1 << 20) + 1, 'x'));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error() == te_errc::metadata_error);
    CHECK((co_await store->get("too-big")).value() == std::nullopt);
    // The stalled client still holds its connection; others are served meanwhile.
    CHECK(stalled_done == 0);
    REQUIRE((co_await store->put("k", "v")).has_value());
    CHECK((co_await store->get("k")).value() == "v");
    CHECK(stalled_done == 0);
  };
  auto t = body();
  f.r.block_on(std::move(t));
  auto t0 = steady::now();
  while (stalled_done == 0 && steady::now() - t0 < 5s) f.r.run_once();
  CHECK(stalled_done == 1);
  CHECK(stalled_got.starts_with("HTTP/1.1 408 "));
}

TEST_CASE("remote stores fail fast and typed when the server is unreachable or silent") {
  reactor r;
  const std::uint16_t dead = dead_port();
  // Accepts connections (the kernel does, from the backlog) but never answers.
  auto silent = yutu::io::tcp_listener::bind(address::ipv4_loopback(0));
  REQUIRE(silent.has_value());
  const std::uint16_t mute = silent->local_address().port();
  metadata_options o;
  o.deadline = 300ms;
  auto body = [&]() -> task<void> {
    for (std::string conn : {"http://127.0.0.1:" + std::to_string(dead) + "/metadata",
                             "etcd://127.0.0.1:" + std::to_string(dead)}) {
      CAPTURE(conn);
      auto s = store_for(conn, o);
      auto t0 = steady::now();
      auto g = co_await s->get("k");
      REQUIRE_FALSE(g.has_value());
      CHECK(g.error() == te_errc::metadata_error);
      auto p = co_await s->put("k", "v");
      REQUIRE_FALSE(p.has_value());
      CHECK(p.error() == te_errc::metadata_error);
      CHECK(steady::now() - t0 < 250ms);  // refused at once, not after the deadline
    }
    for (std::string conn : {"http://127.0.0.1:" + std::to_string(mute) + "/metadata",
                             "etcd://127.0.0.1:" + std::to_string(mute)}) {
      CAPTURE(conn);
      auto s = store_for(conn, o);
      auto t0 = steady::now();
      auto g = co_await s->get("k");
      auto took = steady::now() - t0;
      REQUIRE_FALSE(g.has_value());
      CHECK(g.error() == std::errc::timed_out);
      CHECK(took >= 250ms);
      CHECK(took < 2s);
    }
  };
  auto t = body();
  r.block_on(std::move(t));
}

// --- etcd ---

namespace {

const char* const etcd_binary = "/usr/bin/etcd";

// A throwaway single-node etcd on loopback ports, killed (and its data removed) on destruction.
class etcd_process {
 public:
  etcd_process() {
    char tmpl[] = "/tmp/yutu-etcd-XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    client_port_ = dead_port();
    peer_port_ = dead_port();
    const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
    const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
    std::vector<std::string> args = {etcd_binary,
                                     "--name=yutu-test",
                                     "--data-dir=" + dir_ + "/data",
                                     "--listen-client-urls=" + client,
                                     "--advertise-client-urls=" + client,
                                     "--listen-peer-urls=" + peer,
                                     "--initial-advertise-peer-urls=" + peer,
                                     "--initial-cluster=yutu-test=" + peer};
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const std::string log = dir_ + "/etcd.log";
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      // Dies with the test, even if the test crashes before the destructor runs.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
      }
      ::execv(etcd_binary, argv.data());
      ::_exit(127);
    }
  }
  ~etcd_process() {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      int status = 0;
      auto t0 = steady::now();
      while (::waitpid(pid_, &status, WNOHANG) == 0) {
        if (steady::now() - t0 > 5s) {
          ::kill(pid_, SIGKILL);
          ::waitpid(pid_, &status, 0);
          break;
        }
        ::usleep(10000);
      }
    }
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  etcd_process(const etcd_process&) = delete;
  etcd_process& operator=(const etcd_process&) = delete;

  address client_address() const { return address::ipv4_loopback(client_port_); }
  std::string endpoint() const { return "127.0.0.1:" + std::to_string(client_port_); }
  bool alive() const { return ::waitpid(pid_, nullptr, WNOHANG) == 0; }
  // SIGSTOP / SIGCONT: a server that accepts (the kernel does) but never answers. A stop takes
  // effect in each thread when it next runs, so it waits until every thread of etcd is stopped:
  // on a loaded machine, a request sent right after kill() was once answered (CI, 2026-12-07).
  void freeze(bool on) const {
    ::kill(pid_, on ? SIGSTOP : SIGCONT);
    if (!on) return;
    const auto t0 = steady::now();
    while (!all_stopped() && steady::now() - t0 < 5s) ::usleep(1000);
  }
  bool all_stopped() const {
    std::error_code ec;
    for (const auto& t : std::filesystem::directory_iterator("/proc/" + std::to_string(pid_) + "/task", ec)) {
      std::ifstream in(t.path() / "stat");
      std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      // The state follows the command name, which is in parentheses and may contain spaces.
      const auto close = stat.rfind(')');
      if (close == std::string::npos || close + 2 >= stat.size()) return false;
      const char state = stat[close + 2];
      if (state != 'T' && state != 't') return false;
    }
    return !ec;
  }
  std::string log() const {
    std::ifstream in(dir_ + "/etcd.log");
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Polls /health until etcd answers (a child process has no other way to say it is ready).
  task<bool> wait_ready() {
    auto t0 = steady::now();
    while (steady::now() - t0 < 20s) {
      if (!alive()) co_return false;
      yutu::io::http_request req{yutu::io::http_verb::get, "/health", 11};
      auto r = co_await yutu::io::http_fetch(client_address(), std::move(req), 1s);
      if (r && r->result() == yutu::io::http_status::ok && r->body().find("true") != std::string::npos) co_return true;
      (void)co_await yutu::io::sleep_for(100ms);
    }
    co_return false;
  }

 private:
  std::string dir_;
  std::uint16_t client_port_ = 0, peer_port_ = 0;
  pid_t pid_ = -1;
};

// One raw call to etcd's gateway, for the test to look behind the store's back.
task<nlohmann::json> etcd_raw(address at, std::string path, nlohmann::json body) {
  yutu::io::http_request req{yutu::io::http_verb::post, path, 11};
  req.body() = body.dump();
  auto r = co_await yutu::io::http_fetch(at, std::move(req), 2s);
  REQUIRE(r.has_value());
  co_return nlohmann::json::parse(r->body());
}

nlohmann::json range_body(const std::string& key) {
  return nlohmann::json{{"key", yutu::transfer::detail::base64_encode(key)}};
}
nlohmann::json revoke_body(const std::string& id) { return nlohmann::json{{"ID", id}}; }

// Waits (polling, up to `limit`) until `key` is absent; returns how long that took, or nullopt.
task<std::optional<steady::duration>> wait_absent(metadata_store& s, std::string key, steady::duration limit) {
  auto t0 = steady::now();
  while (steady::now() - t0 < limit) {
    auto g = co_await s.get(key);
    REQUIRE(g.has_value());
    if (!g->has_value()) co_return steady::now() - t0;
    (void)co_await yutu::io::sleep_for(100ms);
  }
  co_return std::nullopt;
}

}  // namespace

TEST_CASE("etcd store against a real etcd") {
  if (::access(etcd_binary, X_OK) != 0) {
    MESSAGE("SKIPPED: /usr/bin/etcd is not installed (apt-get install etcd-server); the etcd back end is untested");
    return;
  }
  etcd_process etcd;
  reactor r;
  auto ready_task = etcd.wait_ready();
  const bool ready = r.block_on(std::move(ready_task));
  if (!ready) FAIL("etcd did not become healthy:\n" << etcd.log());

  const std::string conn = "etcd://" + etcd.endpoint();
  auto reader = store_for(conn);
  CHECK(reader->describe() == conn);

  SUBCASE("get, put, remove") {
    auto body = [&]() -> task<void> {
      CHECK((co_await reader->get("missing")).value() == std::nullopt);
      const std::string key = yutu::transfer::rpc_meta_key("node/a&b c");
      REQUIRE((co_await reader->put(key, "{\"port\":1}")).has_value());
      CHECK((co_await reader->get(key)).value() == "{\"port\":1}");
      REQUIRE((co_await reader->put(key, all_bytes())).has_value());
      CHECK((co_await reader->get(key)).value() == all_bytes());
      REQUIRE((co_await reader->put("empty", "")).has_value());
      CHECK((co_await reader->get("empty")).value() == std::string());
      REQUIRE((co_await reader->remove(key)).has_value());
      REQUIRE((co_await reader->remove(key)).has_value());
      CHECK((co_await reader->get(key)).value() == std::nullopt);
      // Several endpoints: a dead one first is skipped.
      auto multi = store_for("etcd://127.0.0.1:" + std::to_string(dead_port()) + ";" + etcd.endpoint());
      REQUIRE((co_await multi->put("multi", "m")).has_value());
      CHECK((co_await multi->get("multi")).value() == "m");
      CHECK((co_await reader->get("multi")).value() == "m");
    };
    auto t = body();
    r.block_on(std::move(t));
  }

  SUBCASE("a leased key outlives its TTL while its holder lives, and expires after it died") {
    metadata_options o;
    o.revoke_lease_on_close = false;  // behave like a process that died: no revoke
    auto holder = store_for(conn, o);
    auto body = [&]() -> task<void> {
      REQUIRE((co_await holder->put("leased", "alive", put_options{.lease_ttl = 2s})).has_value());
      (void)co_await yutu::io::sleep_for(3500ms);  // longer than the TTL: only keepalives save it
      CHECK((co_await reader->get("leased")).value() == "alive");
      holder.reset();
      CHECK((co_await reader->get("leased")).value() == "alive");  // not revoked: the TTL must pass
      auto gone = co_await wait_absent(*reader, "leased", 6s);
      REQUIRE(gone.has_value());
      CHECK(*gone < 3s);
    };
    auto t = body();
    r.block_on(std::move(t));
    r.run_until_empty();  // the holder's keepalive loop has ended
  }

  SUBCASE("destroying or closing the holder revokes its lease at once") {
    auto body = [&]() -> task<void> {
      auto a = store_for(conn);
      REQUIRE((co_await a->put("revoked-a", "1", put_options{.lease_ttl = 30s})).has_value());
      REQUIRE((co_await a->put("revoked-a2", "2", put_options{.lease_ttl = 30s})).has_value());
      a.reset();
      auto gone = co_await wait_absent(*reader, "revoked-a", 3s);
      REQUIRE(gone.has_value());
      CHECK((co_await reader->get("revoked-a2")).value() == std::nullopt);

      auto b = store_for(conn);
      REQUIRE((co_await b->put("revoked-b", "1", put_options{.lease_ttl = 30s})).has_value());
      REQUIRE((co_await b->close()).has_value());
      CHECK((co_await reader->get("revoked-b")).value() == std::nullopt);
    };
    auto t = body();
    r.block_on(std::move(t));
    r.run_until_empty();
  }

  SUBCASE("a lease etcd lost is granted again and the keys put back") {
    auto holder = store_for(conn);
    auto body = [&]() -> task<void> {
      REQUIRE((co_await holder->put("phoenix", "v", put_options{.lease_ttl = 2s})).has_value());
      auto range = co_await etcd_raw(etcd.client_address(), "/v3/kv/range", range_body("phoenix"));
      const std::string lease = range["kvs"][0]["lease"].get<std::string>();
      (void)co_await etcd_raw(etcd.client_address(), "/v3/lease/revoke", revoke_body(lease));
      CHECK((co_await reader->get("phoenix")).value() == std::nullopt);
      // The next keepalive (TTL/3) finds the lease gone and re-publishes.
      auto t0 = steady::now();
      std::optional<std::string> back;
      while (!back && steady::now() - t0 < 4s) {
        (void)co_await yutu::io::sleep_for(100ms);
        back = (co_await reader->get("phoenix")).value();
      }
      CHECK(back == "v");
      REQUIRE((co_await holder->close()).has_value());
      CHECK((co_await reader->get("phoenix")).value() == std::nullopt);
    };
    auto t = body();
    r.block_on(std::move(t));
    holder.reset();
    r.run_until_empty();
  }

  SUBCASE("a frozen etcd is a timeout within the deadline, and service resumes after") {
    metadata_options o;
    o.deadline = 500ms;
    auto s = store_for(conn, o);
    auto body = [&]() -> task<void> {
      REQUIRE((co_await s->put("before", "x")).has_value());
      etcd.freeze(true);
      auto t0 = steady::now();
      auto g = co_await s->get("before");
      auto took = steady::now() - t0;
      etcd.freeze(false);
      REQUIRE_FALSE(g.has_value());
      CHECK(g.error() == std::errc::timed_out);
      CHECK(took >= 450ms);
      CHECK(took < 2s);
      CHECK((co_await s->get("before")).value() == "x");
    };
    auto t = body();
    r.block_on(std::move(t));
  }
}
