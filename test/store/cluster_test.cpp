// The store as separate processes on loopback: yutu-metadata, yutu-master and yutu-node storage nodes
// (found through YUTU_TEST_METADATA_EXE, YUTU_TEST_MASTER_EXE, YUTU_TEST_NODE_EXE, set by meson), with clients in this process.
// A node killed during puts and gets with two replicas (no completed object lost, failures typed, no
// hang, puts recover once the master expires the node), eviction under memory pressure, same-key puts
// from two clients, deferred commits while the master is frozen, a node frozen past the client TTL
// that re-mounts, and a node's clean SIGTERM.
#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "src/child_process.hpp"
#include "transfer/peer_util.hpp"
#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/store/client.hpp"
#include "yutu/store/rpc_client.hpp"

using namespace std::chrono_literals;
using yutu::errc;
using yutu::result;
using yutu::task;
using yutu::te_errc;
using yutu::store::client;
using yutu::store::client_config;
using yutu::test::fill_pattern;
using yutu::tools::child_process;

namespace {

constexpr std::uint64_t kib = 1024;
constexpr std::uint64_t mib = 1024 * 1024;

std::string exe(const char* var) {
  const char* p = std::getenv(var);
  return p ? p : "";
}
bool have_binaries() {
  return !exe("YUTU_TEST_METADATA_EXE").empty() && !exe("YUTU_TEST_MASTER_EXE").empty() && !exe("YUTU_TEST_NODE_EXE").empty();
}

std::string after(const std::string& line, const std::string& marker) {
  auto at = line.find(marker);
  return at == std::string::npos ? std::string() : line.substr(at + marker.size());
}

std::vector<std::byte> value_of(std::size_t i, std::size_t size) {
  std::vector<std::byte> v(size);
  fill_pattern(v.data(), size, static_cast<unsigned>(i) + 1);
  return v;
}

// Errors a put or get may report while a node dies: the transfer's, typed. Never internal_error.
bool expected_failure(const std::error_code& ec) {
  return ec == te_errc::peer_unreachable || ec == te_errc::stale_segment || ec == te_errc::no_transport ||
         ec == te_errc::handshake_socket || ec == te_errc::address_not_registered || ec == errc::segment_not_found ||
         ec == errc::transfer_fail || yutu::is_timeout(ec);
}

struct cluster {
  child_process metadata_proc, master_proc;
  std::vector<std::unique_ptr<child_process>> nodes;
  std::string metadata, master;

  explicit cluster(std::size_t n_nodes, std::uint64_t memory, int client_ttl_s = 2, int lease_ms = 10000) {
    REQUIRE(metadata_proc.start(exe("YUTU_TEST_METADATA_EXE"), {"--host", "127.0.0.1", "--port", "0"}));
    auto l = metadata_proc.wait_for_line("listening on", 10s);
    REQUIRE(!l.empty());
    metadata_proc.drain(false);
    metadata = "http://" + after(l, "listening on ") + "/metadata";
    REQUIRE(master_proc.start(exe("YUTU_TEST_MASTER_EXE"), {"--rpc-address", "127.0.0.1", "--rpc-port", "0", "--http-address",
                                                   "127.0.0.1", "--http-port", "0", "--client-ttl",
                                                   std::to_string(client_ttl_s), "--default-kv-lease-ttl",
                                                   std::to_string(lease_ms)}));
    l = master_proc.wait_for_line("rpc listening on", 10s);
    REQUIRE(!l.empty());
    master_proc.drain(false);
    master = after(l, "rpc listening on ");
    for (std::size_t i = 0; i < n_nodes; ++i) add_node(memory);
    for (auto& n : nodes) REQUIRE(!n->wait_for_line("ready", 30s).empty());
    for (auto& n : nodes) n->drain(false);
  }
  void add_node(std::uint64_t memory) {
    auto n = std::make_unique<child_process>();
    REQUIRE(n->start(exe("YUTU_TEST_NODE_EXE"), {"--master", master, "--metadata", metadata, "--memory",
                                        std::to_string(memory), "--host", "127.0.0.1"}));
    nodes.push_back(std::move(n));
  }
  ~cluster() {
    for (auto& n : nodes) n->stop(3s);
    master_proc.stop(3s);
    metadata_proc.stop(3s);
  }

  std::unique_ptr<client> connect(std::size_t replicas, std::vector<std::string> transports = {"tcp"}) {
    client_config c;
    c.master = master;
    c.metadata = metadata;
    c.transports = std::move(transports);
    c.replica_defaults.replica_num = replicas;
    c.transfer_deadline = 3s;
    c.rpc_timeout = 3s;
    c.engine_threads = 1;
    auto r = client::create(c);
    REQUIRE(r);
    return std::move(*r);
  }
  std::unique_ptr<yutu::store::rpc_master_client> master_client() {
    auto m = yutu::store::rpc_master_client::create(master);
    REQUIRE(m);
    return std::move(*m);
  }
};

struct load_stats {
  std::vector<std::size_t> written;  // indices whose put completed
  std::atomic<std::size_t> attempts{0};
  std::atomic<bool> finished{false};
  std::size_t put_failed = 0, get_ok = 0, get_failed = 0, unexpected = 0;
  std::vector<std::string> unexpected_errors;
};

task<void> writer(client& c, std::size_t first, std::size_t count, std::size_t size, load_stats& st) {
  for (std::size_t i = first; i < first + count; ++i) {
    auto v = value_of(i, size);
    auto r = co_await c.put("w" + std::to_string(i), v);
    st.attempts.fetch_add(1);
    if (r) {
      st.written.push_back(i);
    } else {
      ++st.put_failed;
      if (!expected_failure(r.error())) {
        ++st.unexpected;
        st.unexpected_errors.push_back("put: " + r.error().message());
      }
    }
  }
  st.finished.store(true);
}

// Reads every key `rounds` times, or, with `until`, until that writer finished.
task<void> reader(client& c, const std::vector<std::size_t>& keys, std::size_t rounds, std::size_t size,
                  load_stats& st, const load_stats* until = nullptr) {
  for (std::size_t round = 0; until ? !until->finished.load() : round < rounds; ++round)
    for (std::size_t i : keys) {
      auto r = co_await c.get("w" + std::to_string(i));
      if (r && *r == value_of(i, size)) {
        ++st.get_ok;
      } else {
        ++st.get_failed;
        ++st.unexpected;
        st.unexpected_errors.push_back("get: " + (r ? std::string("wrong bytes") : r.error().message()));
      }
    }
}

}  // namespace

namespace {

void kill_during_load(std::vector<std::string> transports) {
  cluster cl(3, 32 * mib);
  auto c = cl.connect(2, std::move(transports));
  yutu::io::reactor r;
  const std::size_t size = 64 * kib;

  load_stats before;
  r.block_on(writer(*c, 0, 100, size, before));
  REQUIRE(before.written.size() == 100);

  // Puts of new keys and gets of the first hundred run while node 0 is killed, a third of the way in.
  load_stats during, reads;
  std::thread killer([&] {
    while (during.attempts.load() < 100) std::this_thread::sleep_for(1ms);
    cl.nodes[0]->kill_now();
  });
  auto t0 = std::chrono::steady_clock::now();
  r.block_on(yutu::when_all(writer(*c, 1000, 300, size, during), reader(*c, before.written, 0, size, reads, &during)));
  killer.join();
  CHECK(std::chrono::steady_clock::now() - t0 < 60s);  // bounded by deadlines, not a hang
  for (auto& e : during.unexpected_errors) MESSAGE(e);
  for (auto& e : reads.unexpected_errors) MESSAGE(e);
  CHECK(during.unexpected == 0);
  CHECK(reads.unexpected == 0);  // a surviving replica serves every read
  CHECK(reads.get_ok >= 100);
  CHECK(c->stats().failovers > 0);
  CHECK(during.put_failed > 0);  // puts that placed a replica on the dead node, until it expired
  MESSAGE("puts during the kill: " << during.written.size() << " completed, " << during.put_failed << " failed");

  // Every completed object is still readable, with its bytes.
  load_stats after;
  r.block_on(reader(*c, before.written, 1, size, after));
  r.block_on(reader(*c, during.written, 1, size, after));
  CHECK(after.get_failed == 0);
  CHECK(after.get_ok == before.written.size() + during.written.size());

  // Once the master expires the dead node (client TTL 2 s), every put succeeds again.
  const auto until = std::chrono::steady_clock::now() + 15s;
  std::size_t streak = 0, i = 5000;
  while (streak < 20 && std::chrono::steady_clock::now() < until) {
    const std::size_t k = i++;
    auto p = r.block_on(c->put("w" + std::to_string(k), value_of(k, size)));
    streak = p ? streak + 1 : 0;
    if (!p) std::this_thread::sleep_for(50ms);
  }
  CHECK(streak == 20);
}

}  // namespace

TEST_CASE("a node killed during puts and gets (tcp): two replicas keep every completed object; puts recover") {
  if (!have_binaries()) {
    MESSAGE("YUTU_TEST_METADATA_EXE / YUTU_TEST_MASTER_EXE / YUTU_TEST_NODE_EXE not set (run through meson test): skipped");
    return;
  }
  kill_during_load({"tcp"});
}

TEST_CASE("a node killed during puts and gets (shared memory): the same") {
  if (!have_binaries()) return;
  kill_during_load({"local", "shm", "tcp"});
}

TEST_CASE("eviction under memory pressure: puts keep succeeding, older objects make room") {
  if (!have_binaries()) return;
  cluster cl(2, 16 * mib);
  auto c = cl.connect(1);
  yutu::io::reactor r;
  const std::size_t size = 256 * kib, count = 200;  // 50 MiB into 32 MiB
  std::size_t failed = 0;
  for (std::size_t i = 0; i < count; ++i) {
    auto p = r.block_on(c->put("e" + std::to_string(i), value_of(i, size)));
    if (!p) {
      ++failed;
      MESSAGE("put " << i << ": " << p.error().message());
    }
  }
  CHECK(failed == 0);
  std::vector<std::string> keys;
  for (std::size_t i = 0; i < count; ++i) keys.push_back("e" + std::to_string(i));
  auto ex = r.block_on(c->batch_exist(keys));
  std::size_t present = 0;
  for (auto& e : ex) present += e && *e;
  CHECK(present < count);
  CHECK(present * size <= 32 * mib);
  CHECK_FALSE(ex[0].value());  // the oldest went first
  for (std::size_t i = count - 5; i < count; ++i) CHECK(r.block_on(c->get(keys[i])).value() == value_of(i, size));
}

TEST_CASE("same-key puts from two clients: one wins, the others are told it exists") {
  if (!have_binaries()) return;
  cluster cl(2, 16 * mib);
  auto a = cl.connect(2);
  auto b = cl.connect(2, {"local", "shm", "tcp"});
  yutu::io::reactor r;
  std::vector<std::vector<std::byte>> values;  // outlive the lazy tasks that read them
  for (std::size_t i = 0; i < 16; ++i) values.push_back(value_of(i, 100 * kib));
  std::vector<task<result<void>>> puts;
  for (std::size_t i = 0; i < 16; ++i) puts.push_back((i % 2 ? a : b)->put("same", values[i]));
  auto res = r.block_on(yutu::when_all(std::move(puts)));
  std::size_t won = 0, exists = 0, winner = 0;
  for (std::size_t i = 0; i < res.size(); ++i) {
    if (res[i]) {
      ++won;
      winner = i;
    } else if (res[i].error() == errc::object_already_exists) {
      ++exists;
    } else {
      MESSAGE("unexpected: " << res[i].error().message());
    }
  }
  CHECK(won == 1);
  CHECK(exists == 15);
  CHECK(r.block_on(a->get("same")).value() == value_of(winner, 100 * kib));
  CHECK(r.block_on(b->get("same")).value() == value_of(winner, 100 * kib));
}

task<result<void>> put_on_engine(client& c, std::string key, std::span<const std::byte> v) {
  co_await c.engine().schedule();
  co_return co_await c.put(std::move(key), v);
}

// A client of `cl` over tcp, one engine thread, keeping 16 reservations of 64 KiB.
client_config reserving_client(const cluster& cl, std::chrono::milliseconds rpc_timeout) {
  client_config cc;
  cc.master = cl.master;
  cc.metadata = cl.metadata;
  cc.transports = {"tcp"};
  cc.engine_threads = 1;
  cc.transfer_deadline = 3s;
  cc.rpc_timeout = rpc_timeout;
  cc.put_reservation_bytes = 1 * mib;
  return cc;
}

TEST_CASE("deferred commits while the master is frozen: flush reports typed errors by the RPC deadline") {
  if (!have_binaries()) return;
  // A TTL the freeze stays under: this is about commits, not about expiry (the test after the
  // next covers a node expired while a client held reservations on it).
  cluster cl(1, 64 * mib, /*client_ttl_s=*/10);
  client_config cc = reserving_client(cl, 1s);
  cc.defer_put_commit = true;
  auto cr = client::create(cc);
  REQUIRE(cr);
  auto& c = **cr;
  std::vector<std::vector<std::byte>> values;
  for (std::size_t i = 0; i < 8; ++i) values.push_back(value_of(i, 64 * kib));
  REQUIRE(yutu::sync_wait(put_on_engine(c, "a", values[0])));  // and 16 reservations
  REQUIRE(yutu::sync_wait(c.flush()).value().empty());

  // The master stops answering: puts into reservations still return (the node is alive), their
  // commits cannot land, and flush() gives them up at the RPC deadline with a typed error.
  cl.master_proc.signal(SIGSTOP);
  for (std::size_t i = 1; i <= 5; ++i)
    REQUIRE(yutu::sync_wait(put_on_engine(c, "b" + std::to_string(i), values[i])));
  const auto t0 = std::chrono::steady_clock::now();
  auto failed = yutu::sync_wait(c.flush()).value();
  const auto waited = std::chrono::steady_clock::now() - t0;
  cl.master_proc.signal(SIGCONT);
  CHECK(waited < 4s);
  REQUIRE(failed.size() == 5);
  std::set<std::string> keys;
  for (const auto& f : failed) {
    keys.insert(f.key);
    CHECK_MESSAGE((f.error == errc::rpc_timeout || f.error == errc::rpc_fail || yutu::is_timeout(f.error)),
                  f.error.message());
  }
  CHECK(keys == std::set<std::string>{"b1", "b2", "b3", "b4", "b5"});
  CHECK(c.stats().deferred_commit_failures == 5);

  // Thawed: a lost answer means committed or not, as for a put_end; never another object's bytes.
  for (std::size_t i = 1; i <= 5; ++i) {
    auto g = yutu::sync_wait(c.get("b" + std::to_string(i)));
    if (g) CHECK(*g == values[i]);
    else CHECK(g.error() == errc::object_not_found);
  }
  // And the client goes on: a new put commits.
  REQUIRE(yutu::sync_wait(put_on_engine(c, "c", values[6])));
  const auto after_thaw = yutu::sync_wait(c.flush()).value();
  for (const auto& f : after_thaw) FAIL_CHECK(f.key << ": " << f.error.message());
  CHECK(yutu::sync_wait(c.get("c")).value() == values[6]);
  REQUIRE(yutu::sync_wait(c.close()));
}

TEST_CASE("a node frozen past the client TTL is expired, then re-mounts; SIGTERM unmounts and exits 0") {
  if (!have_binaries()) return;
  cluster cl(3, 16 * mib, 1, 1500);
  auto c = cl.connect(3);
  auto m = cl.master_client();
  yutu::io::reactor r;
  REQUIRE(r.block_on(c->put("three", value_of(1, 4096))));
  CHECK(yutu::sync_wait(m->get_replica_list("three")).value().replicas.size() == 3);

  cl.nodes[1]->signal(SIGSTOP);
  // Expired after 1 s of silence: its replicas are dropped, the object keeps the other two.
  std::size_t replicas = 3;
  for (int i = 0; i < 100 && replicas == 3; ++i) {
    std::this_thread::sleep_for(50ms);
    auto rl = yutu::sync_wait(m->get_replica_list("three"));
    REQUIRE(rl);
    replicas = rl->replicas.size();
  }
  CHECK(replicas == 2);
  REQUIRE(r.block_on(c->put("two", value_of(2, 4096))));
  CHECK(yutu::sync_wait(m->get_replica_list("two")).value().replicas.size() == 2);

  cl.nodes[1]->signal(SIGCONT);
  // Its next heartbeat is told to re-mount, and new objects get three replicas again (not where the
  // leases taken on "three" while its replica was there may still read: that range is held back).
  bool back = false;
  for (int i = 0; i < 200 && !back; ++i) {
    std::this_thread::sleep_for(50ms);
    std::string k = "again" + std::to_string(i);
    REQUIRE(r.block_on(c->put(k, value_of(3, 4096))));
    back = yutu::sync_wait(m->get_replica_list(k)).value().replicas.size() == 3;
  }
  CHECK(back);
  CHECK(r.block_on(c->get("three")).value() == value_of(1, 4096));

  // A storage node stopped with SIGTERM unmounts first (its replicas go at once) and exits 0.
  cl.nodes[2]->signal(SIGTERM);
  REQUIRE(cl.nodes[2]->wait_for_exit(10s));
  CHECK(cl.nodes[2]->exited_cleanly());
  CHECK(yutu::sync_wait(m->get_replica_list("three")).value().replicas.size() == 1);  // node 0's
  CHECK(r.block_on(c->get("three")).value() == value_of(1, 4096));
}

TEST_CASE("a lone node expired while a client held reservations on it takes puts again once it re-mounts") {
  if (!have_binaries()) return;
  // The client's reservations are puts in flight on the node: their ranges are held back after the
  // re-mount, the rest of the node is not (before, the whole node took no replica for 30 s).
  cluster cl(1, 16 * mib, /*client_ttl_s=*/1);
  auto cr = client::create(reserving_client(cl, 3s));
  REQUIRE(cr);
  auto& c = **cr;
  REQUIRE(yutu::sync_wait(put_on_engine(c, "a", value_of(0, 64 * kib))));  // and 16 reservations
  REQUIRE(yutu::sync_wait(put_on_engine(c, "b", value_of(0, 64 * kib))));
  CHECK(c.stats().reserved_puts == 1);  // "b", into one of them

  cl.nodes[0]->signal(SIGSTOP);
  std::this_thread::sleep_for(2500ms);  // expired after 1 s of silence
  cl.nodes[0]->signal(SIGCONT);
  const auto thawed = std::chrono::steady_clock::now();
  std::size_t streak = 0, i = 0;
  std::vector<std::size_t> stored;
  while (streak < 10 && std::chrono::steady_clock::now() - thawed < 20s) {
    const std::size_t k = ++i;
    auto p = yutu::sync_wait(put_on_engine(c, "k" + std::to_string(k), value_of(k, 64 * kib)));
    if (p) {
      stored.push_back(k);
      ++streak;
    } else {
      streak = 0;
      std::this_thread::sleep_for(100ms);
    }
  }
  const auto took = std::chrono::steady_clock::now() - thawed;
  MESSAGE("puts succeed again " << std::chrono::duration_cast<std::chrono::milliseconds>(took).count()
                                << " ms after the thaw, " << i << " tries");
  REQUIRE(streak == 10);
  CHECK(took < 10s);  // the node's heartbeat and re-mount; put_start_timeout (30 s) is far off
  for (std::size_t k : stored) CHECK(yutu::sync_wait(c.get("k" + std::to_string(k))).value() == value_of(k, 64 * kib));
  REQUIRE(yutu::sync_wait(c.close()));
}

TEST_CASE("yutu-node --protocol rdma without a usable NIC exits 1 at once instead of serving nothing") {
  if (!have_binaries()) return;
  // No machine has a NIC of that name, so this holds with or without RDMA hardware: the node stops
  // before it mounts memory no other host could reach (and before it looks for the master).
  child_process n;
  REQUIRE(n.start(exe("YUTU_TEST_NODE_EXE"), {"--protocol", "rdma", "--rdma-devices", "no_such_nic0", "--metadata",
                                             "P2PHANDSHAKE", "--master", "127.0.0.1:1", "--master-wait", "0",
                                             "--memory", "16MiB"}));
  REQUIRE(n.wait_for_exit(20s));
  CHECK(WIFEXITED(n.status()));
  CHECK(WEXITSTATUS(n.status()) == 1);
}

TEST_CASE("yutu-node: --help, and a bad flag or size is refused") {
  if (!have_binaries()) return;
  child_process h;
  REQUIRE(h.start(exe("YUTU_TEST_NODE_EXE"), {"--help"}));
  CHECK_FALSE(h.wait_for_line("usage", 5s).empty());
  REQUIRE(h.wait_for_exit(5s));
  CHECK(h.exited_cleanly());
  using args_t = std::vector<std::string>;
  for (args_t args : {args_t{"--memory", "lots", "--master", "127.0.0.1:1"}, args_t{"--frobnicate"}, args_t{},
                      args_t{"--protocol", "udp", "--master", "127.0.0.1:1"},
                      args_t{"--rdma-devices", ",", "--master", "127.0.0.1:1"},
                      args_t{"--rdma-devices", "", "--master", "127.0.0.1:1"}}) {
    CAPTURE(args.size());
    child_process b;
    REQUIRE(b.start(exe("YUTU_TEST_NODE_EXE"), args));
    REQUIRE(b.wait_for_exit(5s));
    CHECK(WIFEXITED(b.status()));
    CHECK(WEXITSTATUS(b.status()) == 2);
  }
}
