// The RDMA transport's logic apart from verbs: topology from fixture sysfs trees, the priority matrix
// and its JSON override, slicing, the endpoint and QP state machines, the handshake codec, GID choice,
// MTU negotiation and the retry policy.
#include <doctest/doctest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <random>

#include "yutu/transfer/config.hpp"
#include "yutu/transfer/rdma/endpoint.hpp"
#include "yutu/transfer/rdma/retry.hpp"
#include "yutu/transfer/rdma/slicer.hpp"
#include "yutu/transfer/rdma/topology.hpp"

using namespace yutu::transfer::rdma;
using yutu::te_errc;
namespace fs = std::filesystem;

namespace {

// A fixture sysfs tree: devices under devices/pci..., class/infiniband/<nic>/device linking to them,
// bus/pci/devices/<bdf> links for GPUs, devices/system/node/nodeN.
struct sysfs_fixture {
  fs::path root;
  sysfs_fixture() {
    root = fs::temp_directory_path() / ("yutu_sysfs_" + std::to_string(::getpid()) + "_" +
                                        std::to_string(std::random_device{}()));
    fs::create_directories(root);
  }
  ~sysfs_fixture() {
    std::error_code ec;
    fs::remove_all(root, ec);
  }
  static void write(const fs::path& p, const std::string& s) {
    fs::create_directories(p.parent_path());
    std::ofstream(p) << s << "\n";
  }
  fs::path device(const std::string& pci_rel, int numa) {
    fs::path d = root / "devices" / pci_rel;
    fs::create_directories(d);
    write(d / "numa_node", std::to_string(numa));
    return d;
  }
  void nic(const std::string& name, const std::string& pci_rel, int numa) {
    fs::path d = device(pci_rel, numa);
    fs::path cls = root / "class" / "infiniband" / name;
    fs::create_directories(cls);
    fs::create_directory_symlink(d, cls / "device");
  }
  void gpu(const std::string& pci_rel, int numa, const std::string& vendor = "0x10de",
           const std::string& cls = "0x030200") {
    fs::path d = device(pci_rel, numa);
    write(d / "vendor", vendor);
    write(d / "class", cls);
    fs::path bus = root / "bus" / "pci" / "devices";
    fs::create_directories(bus);
    fs::create_directory_symlink(d, bus / d.filename());
  }
  void nodes(int n) {
    for (int i = 0; i < n; ++i) fs::create_directories(root / "devices" / "system" / "node" / ("node" + std::to_string(i)));
  }
};

}  // namespace

TEST_CASE("pci paths and distances") {
  auto p = pci_path_of("/sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0");
  REQUIRE(p.size() == 3);
  CHECK(p[0] == "pci0000:00");
  CHECK(p[2] == "0000:01:00.0");
  CHECK(pci_path_of("/nowhere/x").empty());
  std::vector<std::string> a{"pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:00.0"};
  std::vector<std::string> b{"pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0"};
  std::vector<std::string> c{"pci0000:00", "0000:00:02.0", "0000:05:00.0"};
  std::vector<std::string> d{"pci0000:80", "0000:80:01.0"};
  CHECK(pci_distance(a, b) == 2);
  CHECK(pci_distance(a, c) == 5);
  CHECK(pci_distance(a, b) < pci_distance(a, c));
  CHECK(pci_distance(a, d) > 1000);
}

TEST_CASE("topology from a fixture sysfs tree: NUMA tiers, GPU switch affinity, override") {
  sysfs_fixture fx;
  fx.nodes(2);
  // Node 0: a switch with mlx5_0 and GPU 0 behind it; mlx5_1 on another root port of node 0.
  fx.nic("mlx5_0", "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0", 0);
  fx.gpu("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0", 0);
  fx.nic("mlx5_1", "pci0000:00/0000:00:02.0/0000:05:00.0", 0);
  // Node 1: mlx5_2 behind a switch with GPU 1; an NVIDIA audio function that is not a GPU.
  fx.nic("mlx5_2", "pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:00.0", 1);
  fx.gpu("pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:01.0", 1);
  fx.gpu("pci0000:80/0000:80:01.0/0000:81:00.0/0000:82:01.1", 1, "0x10de", "0x040300");
  const std::string root = fx.root.string();

  CHECK(numa_node_count(root) == 2);
  std::vector<pci_device> nics;
  for (auto n : {"mlx5_0", "mlx5_1", "mlx5_2"}) {
    auto d = read_nic(root, n);
    REQUIRE(d);
    nics.push_back(*d);
  }
  CHECK(nics[2].numa_node == 1);
  CHECK(nics[0].pci_path.size() == 4);
  CHECK(read_nic(root, "mlx5_9").error() == te_errc::device_not_found);
  auto gpus = read_gpus(root);
  REQUIRE(gpus.size() == 2);
  CHECK(gpus[0].name == "cuda:0");
  CHECK(gpus[1].numa_node == 1);

  auto m = build_priority_matrix(nics, gpus, numa_node_count(root));
  CHECK(m["cpu:0"] == nic_tiers{{"mlx5_0", "mlx5_1"}, {"mlx5_2"}});
  CHECK(m["cpu:1"] == nic_tiers{{"mlx5_2"}, {"mlx5_0", "mlx5_1"}});
  CHECK(m["cuda:0"] == nic_tiers{{"mlx5_0"}, {"mlx5_1", "mlx5_2"}});
  CHECK(m["cuda:1"] == nic_tiers{{"mlx5_2"}, {"mlx5_0", "mlx5_1"}});

  // Round trip through JSON (the published form), then an override in Mooncake's format.
  std::vector<std::string> known{"mlx5_0", "mlx5_1", "mlx5_2"};
  auto back = parse_priority_matrix(to_json(m), known);
  REQUIRE(back);
  CHECK(*back == m);
  auto o = parse_priority_matrix(R"({"cpu:0": [["mlx5_1"], ["mlx5_0"]]})", known);
  REQUIRE(o);
  CHECK(tiers_for(*o, yutu::transfer::location{yutu::transfer::location::kind::cpu, 0}, known) ==
        nic_tiers{{"mlx5_1"}, {"mlx5_0"}});
  // A location the override lacks: every NIC preferred.
  CHECK(tiers_for(*o, yutu::transfer::location{yutu::transfer::location::kind::cuda, 3}, known).preferred == known);
  CHECK(!parse_priority_matrix(R"({"cpu:0": [["mlx5_7"]]})", known));
  CHECK(!parse_priority_matrix(R"({"disk:0": [["mlx5_0"]]})", known));
  CHECK(!parse_priority_matrix(R"({"cpu:0": []})", known));
  CHECK(!parse_priority_matrix("[1,2]", known));
}

TEST_CASE("a NUMA node without NICs prefers all of them") {
  std::vector<pci_device> nics{{"a", 0, {}}, {"b", -1, {}}};
  auto m = build_priority_matrix(nics, {}, 2);
  CHECK(m["cpu:0"].preferred == std::vector<std::string>{"a", "b"});
  CHECK(m["cpu:1"].preferred == std::vector<std::string>{"a", "b"});
  CHECK(m["cpu:1"].available.empty());
}

TEST_CASE("slices: size, short tail merged, never across a region boundary") {
  const std::uint64_t K = 1024;
  region_grid one{0x10000, 0x10000 + 100 * K * K, 0};
  // Exact multiple.
  auto s = plan_slices(256 * K, 64 * K, 0x10000, one, 0x10000, one);
  REQUIRE(s.size() == 4);
  CHECK(s[3] == slice{192 * K, 64 * K});
  // 65 KiB: the 1 KiB tail joins the first slice.
  s = plan_slices(65 * K, 64 * K, 0x10000, one, 0x10000, one);
  REQUIRE(s.size() == 1);
  CHECK(s[0].length == 65 * K);
  // 100 KiB: a 36 KiB tail is over half a slice: its own slice.
  s = plan_slices(100 * K, 64 * K, 0x10000, one, 0x10000, one);
  REQUIRE(s.size() == 2);
  CHECK(s[1] == slice{64 * K, 36 * K});

  // Local regions of 100 KiB (a split registration), remote regions of 70 KiB, odd offsets.
  region_grid local{0, 1000 * K, 100 * K};
  region_grid remote{5 * K, 5 * K + 1000 * K, 70 * K};
  std::mt19937_64 rng(42);
  for (int iter = 0; iter < 2000; ++iter) {
    std::uint64_t la = rng() % (500 * K), ra = 5 * K + rng() % (500 * K);
    std::uint64_t len = 1 + rng() % (400 * K);
    std::uint64_t ss = 1 + rng() % (80 * K);
    auto sl = plan_slices(len, ss, la, local, ra, remote);
    std::uint64_t off = 0;
    for (const auto& x : sl) {
      REQUIRE(x.offset == off);
      REQUIRE(x.length > 0);
      REQUIRE(x.length < ss + ss / 2 + 1);
      // Same region at both ends of the slice, on both sides.
      REQUIRE(local.index(la + x.offset) == local.index(la + x.offset + x.length - 1));
      REQUIRE(remote.index(ra + x.offset) == remote.index(ra + x.offset + x.length - 1));
      off += x.length;
    }
    REQUIRE(off == len);
  }
}

TEST_CASE("qp transitions: RESET->INIT->RTR->RTS, error and reset from anywhere") {
  CHECK(valid_transition(qp_state::reset, qp_state::init));
  CHECK(valid_transition(qp_state::init, qp_state::rtr));
  CHECK(valid_transition(qp_state::rtr, qp_state::rts));
  CHECK_FALSE(valid_transition(qp_state::reset, qp_state::rtr));
  CHECK_FALSE(valid_transition(qp_state::init, qp_state::rts));
  CHECK_FALSE(valid_transition(qp_state::error, qp_state::rts));
  CHECK(valid_transition(qp_state::rts, qp_state::error));
  CHECK(valid_transition(qp_state::error, qp_state::reset));
}

TEST_CASE("endpoint state machine: one connect at a time, failure leads to reconnect, closed is final") {
  endpoint_fsm e;
  CHECK(e.state() == endpoint_state::idle);
  CHECK_FALSE(e.connected());
  CHECK(e.begin_connect());
  CHECK_FALSE(e.begin_connect());
  CHECK(e.connected());
  CHECK(e.usable());
  CHECK(e.generation() == 1);
  CHECK(e.fail());
  CHECK_FALSE(e.usable());
  CHECK(e.begin_connect());
  CHECK(e.fail());  // the handshake failed
  CHECK(e.begin_connect());
  CHECK(e.connected());
  CHECK(e.generation() == 2);
  e.close();
  CHECK_FALSE(e.begin_connect());
  CHECK_FALSE(e.fail());
}

TEST_CASE("handshake codec round-trips and rejects malformed input") {
  handshake_msg m;
  m.status = -201;
  m.src_incarnation = 0x1234567890abcdefull;
  m.dst_incarnation = 77;
  m.src_segment = "prefill-0";
  m.src_nic = "mlx5_0";
  m.dst_nic = "mlx5_3";
  m.lid = 12;
  m.gid_value[15] = 9;
  m.path_mtu = mtu::m4096;
  m.use_gid = true;
  m.qps = {{0x11, 0x22}, {0x33, 0xffffff}};
  auto bytes = encode(m);
  auto back = decode_handshake(bytes);
  REQUIRE(back);
  CHECK(*back == m);
  // Every truncation fails; trailing bytes fail; a bad magic, MTU or PSN fails.
  for (std::size_t n = 0; n < bytes.size(); ++n) CHECK(!decode_handshake(std::string_view(bytes).substr(0, n)));
  CHECK(decode_handshake(bytes + "x").error() == te_errc::handshake_invalid_message);
  auto bad = bytes;
  bad[0] ^= 1;
  CHECK(!decode_handshake(bad));
  bad = bytes;
  bad[6] = 9;  // mtu
  CHECK(!decode_handshake(bad));
  bad = bytes;
  bad[5] = 17;  // more QPs than allowed
  CHECK(!decode_handshake(bad));
  m.qps[0].psn = 1u << 24;
  CHECK(!decode_handshake(encode(m)));
  // Random garbage never crashes and rarely parses.
  std::mt19937 rng(1);
  for (int i = 0; i < 2000; ++i) {
    std::string g(rng() % 120, '\0');
    for (auto& c : g) c = static_cast<char>(rng());
    (void)decode_handshake(g);
  }
}

TEST_CASE("MTU is the minimum of both sides") {
  CHECK(negotiate_mtu(mtu::m4096, mtu::m1024) == mtu::m1024);
  CHECK(negotiate_mtu(mtu::m2048, mtu::m4096) == mtu::m2048);
  CHECK(mtu_bytes(mtu::m4096) == 4096);
  CHECK(mtu_bytes(mtu::m256) == 256);
}

TEST_CASE("GID choice: RoCE v2 matching the bound address, overridable; IB index 0") {
  auto v4 = gid_of_address("10.1.2.3");
  REQUIRE(v4);
  CHECK(to_string(*v4) == "0000:0000:0000:0000:0000:ffff:0a01:0203");
  CHECK(!gid_of_address("0.0.0.0"));
  CHECK(!gid_of_address("127.0.0.1"));
  CHECK(!gid_of_address("::1"));
  CHECK(!gid_of_address("host.example"));
  CHECK(gid_of_address("fe80::1"));

  gid link_local{};
  link_local[0] = 0xfe;
  link_local[1] = 0x80;
  link_local[15] = 1;
  auto other = *gid_of_address("10.9.9.9");
  std::vector<gid_entry> table{
      {0, link_local, gid_type::roce_v1}, {1, link_local, gid_type::roce_v2},
      {2, other, gid_type::roce_v1},      {3, other, gid_type::roce_v2},
      {4, *v4, gid_type::roce_v1},        {5, *v4, gid_type::roce_v2},
  };
  CHECK(*choose_gid(table, link_layer::ethernet, std::nullopt, v4) == 5);
  // Not bound to a NIC address: the first v2 IPv4 entry.
  CHECK(*choose_gid(table, link_layer::ethernet, std::nullopt, std::nullopt) == 3);
  CHECK(*choose_gid(table, link_layer::ethernet, 2, v4) == 2);
  CHECK(choose_gid(table, link_layer::ethernet, 9, v4).error() == te_errc::device_not_found);
  // Only RoCE v1 entries: the first non-zero one.
  std::vector<gid_entry> v1only{{0, gid{}, gid_type::roce_v1}, {1, link_local, gid_type::roce_v1}};
  CHECK(*choose_gid(v1only, link_layer::ethernet, std::nullopt, std::nullopt) == 1);
  CHECK(!choose_gid(std::vector<gid_entry>{{0, gid{}, gid_type::roce_v2}}, link_layer::ethernet, std::nullopt,
                    std::nullopt));
  CHECK(*choose_gid(table, link_layer::infiniband, std::nullopt, std::nullopt) == 0);
}

TEST_CASE("rail health: pause after repeated errors, probe after the pause, rotation skips paused rails") {
  retry_policy p;
  p.error_threshold = 3;
  p.error_window = std::chrono::milliseconds(1000);
  p.pause = std::chrono::milliseconds(5000);
  using ms = std::chrono::milliseconds;
  rail_health::clock::time_point t0{};
  rail_health r;
  r.on_error(p, t0);
  r.on_error(p, t0 + ms(100));
  CHECK(r.usable(t0 + ms(100)));
  // Errors outside the window do not count.
  r.on_error(p, t0 + ms(1500));
  CHECK(r.usable(t0 + ms(1500)));
  r.on_error(p, t0 + ms(1600));
  r.on_error(p, t0 + ms(1700));
  CHECK(r.current(t0 + ms(1700)) == rail_health::state::paused);
  CHECK(r.pauses() == 1);
  CHECK(r.current(t0 + ms(6700)) == rail_health::state::probing);
  // A failed probe pauses again at once.
  r.on_error(p, t0 + ms(6800));
  CHECK(r.current(t0 + ms(6800)) == rail_health::state::paused);
  CHECK(r.pauses() == 2);
  r.on_success();
  CHECK(r.current(t0 + ms(6800)) == rail_health::state::healthy);

  std::vector<rail_health> rails(3);
  CHECK(*pick_rail(rails, 1, 0, t0) == 1);
  CHECK(*pick_rail(rails, 1, 1, t0) == 2);
  CHECK(*pick_rail(rails, 1, 2, t0) == 0);
  for (int i = 0; i < 3; ++i) rails[2].on_error(p, t0);
  CHECK(*pick_rail(rails, 1, 1, t0) == 0);
  for (int i = 0; i < 3; ++i) rails[0].on_error(p, t0);
  for (int i = 0; i < 3; ++i) rails[1].on_error(p, t0);
  CHECK(!pick_rail(rails, 0, 0, t0));
  CHECK(pick_rail(rails, 0, 0, t0 + ms(6000)));
  CHECK(!pick_rail({}, 0, 0, t0));
}

TEST_CASE("rdma options from JSON and from YUTU_RDMA_* variables, malformed values rejected") {
  auto c = yutu::transfer::engine_config::from_json(
      R"({"transports": ["rdma", "tcp"], "rdma": {"devices": ["mlx5_0", "mlx5_1"], "slice_size": 131072,
          "priority_matrix": {"cpu:0": [["mlx5_1"], ["mlx5_0"]]}, "gid_index": 3, "busy_poll": true,
          "op_timeout_ms": 250, "max_retries": 2}})");
  REQUIRE(c);
  CHECK(c->rdma.devices == std::vector<std::string>{"mlx5_0", "mlx5_1"});
  CHECK(c->rdma.slice_size == 131072);
  CHECK(c->rdma.gid_index == 3);
  CHECK(c->rdma.busy_poll);
  CHECK(c->rdma.op_timeout == std::chrono::milliseconds(250));
  CHECK(c->rdma.retry.max_retries == 2);
  auto m = parse_priority_matrix(c->rdma.priority_matrix, {"mlx5_0", "mlx5_1"});
  REQUIRE(m);
  CHECK((*m)["cpu:0"].preferred == std::vector<std::string>{"mlx5_1"});
  CHECK(!yutu::transfer::engine_config::from_json(R"({"rdma": {"slice_size": 0}})"));
  CHECK(!yutu::transfer::engine_config::from_json(R"({"rdma": {"slice_size": 4294967296}})"));

  ::setenv("YUTU_RDMA_DEVICES", "rxe0,rxe1", 1);
  ::setenv("YUTU_RDMA_SLICE_SIZE", "32768", 1);
  ::setenv("YUTU_RDMA_BUSY_POLL", "0", 1);
  ::setenv("YUTU_RDMA_GID_INDEX", "1", 1);
  REQUIRE(c->apply_env());
  CHECK(c->rdma.devices == std::vector<std::string>{"rxe0", "rxe1"});
  CHECK(c->rdma.slice_size == 32768);
  CHECK_FALSE(c->rdma.busy_poll);
  CHECK(c->rdma.gid_index == 1);
  ::setenv("YUTU_RDMA_BUSY_POLL", "yes", 1);
  CHECK_FALSE(c->apply_env());
  ::setenv("YUTU_RDMA_BUSY_POLL", "1", 1);
  ::setenv("YUTU_RDMA_SLICE_SIZE", "0", 1);
  CHECK_FALSE(c->apply_env());
  for (auto v : {"YUTU_RDMA_DEVICES", "YUTU_RDMA_SLICE_SIZE", "YUTU_RDMA_BUSY_POLL", "YUTU_RDMA_GID_INDEX"}) ::unsetenv(v);
}
