// NIC and GPU placement from sysfs, and the NIC priority matrix built from it or read from JSON.
#include "yutu/transfer/rdma/topology.hpp"

#include <algorithm>
#include <climits>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>

namespace yutu::transfer::rdma {
namespace fs = std::filesystem;
namespace {

std::string read_line(const fs::path& p) {
  std::ifstream f(p);
  std::string s;
  std::getline(f, s);
  return s;
}

int read_int(const fs::path& p, int dflt) {
  std::string s = read_line(p);
  if (s.empty()) return dflt;
  try {
    return std::stoi(s, nullptr, 0);
  } catch (...) {
    return dflt;
  }
}

// The resolved path of a sysfs link, or the empty string.
std::string resolve(const fs::path& p) {
  std::error_code ec;
  auto r = fs::canonical(p, ec);
  return ec ? std::string() : r.string();
}

}  // namespace

std::vector<std::string> pci_path_of(std::string_view realpath) {
  std::vector<std::string> out;
  auto pos = realpath.find("/devices/");
  if (pos == std::string_view::npos) return out;
  std::string_view rest = realpath.substr(pos + 9);
  while (!rest.empty()) {
    auto slash = rest.find('/');
    std::string_view comp = rest.substr(0, slash);
    if (!comp.empty()) out.emplace_back(comp);
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  return out;
}

int pci_distance(const std::vector<std::string>& a, const std::vector<std::string>& b) noexcept {
  if (a.empty() || b.empty() || a[0] != b[0]) return INT_MAX / 2;
  std::size_t common = 0;
  while (common < a.size() && common < b.size() && a[common] == b[common]) ++common;
  return static_cast<int>(a.size() - common + b.size() - common);
}

result<pci_device> read_nic(const std::string& sysfs_root, const std::string& dev) {
  fs::path base = fs::path(sysfs_root) / "class" / "infiniband" / dev / "device";
  std::error_code ec;
  if (!fs::exists(base, ec)) return fail(te_errc::device_not_found);
  pci_device d;
  d.name = dev;
  d.numa_node = read_int(base / "numa_node", -1);
  d.pci_path = pci_path_of(resolve(base));
  return d;
}

std::vector<pci_device> read_gpus(const std::string& sysfs_root) {
  std::vector<std::pair<std::string, fs::path>> found;
  std::error_code ec;
  fs::path bus = fs::path(sysfs_root) / "bus" / "pci" / "devices";
  for (const auto& e : fs::directory_iterator(bus, ec)) {
    if (read_line(e.path() / "vendor") != "0x10de") continue;
    // 0x03xxxx: display controllers (VGA 0x0300, 3D 0x0302); NVIDIA's audio and USB functions are not.
    if (read_line(e.path() / "class").rfind("0x03", 0) != 0) continue;
    found.emplace_back(e.path().filename().string(), e.path());
  }
  std::sort(found.begin(), found.end());
  std::vector<pci_device> out;
  for (std::size_t i = 0; i < found.size(); ++i) {
    pci_device g;
    g.name = "cuda:" + std::to_string(i);
    g.numa_node = read_int(found[i].second / "numa_node", -1);
    g.pci_path = pci_path_of(resolve(found[i].second));
    out.push_back(std::move(g));
  }
  return out;
}

int numa_node_count(const std::string& sysfs_root) {
  int n = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(fs::path(sysfs_root) / "devices" / "system" / "node", ec)) {
    auto name = e.path().filename().string();
    if (name.size() > 4 && name.rfind("node", 0) == 0 && std::isdigit(static_cast<unsigned char>(name[4]))) ++n;
  }
  return std::max(n, 1);
}

priority_matrix build_priority_matrix(const std::vector<pci_device>& nics, const std::vector<pci_device>& gpus,
                                      int numa_nodes) {
  priority_matrix m;
  auto node_of = [](const pci_device& d) { return d.numa_node < 0 ? 0 : d.numa_node; };
  for (int n = 0; n < numa_nodes; ++n) {
    nic_tiers t;
    for (const auto& nic : nics) (node_of(nic) == n ? t.preferred : t.available).push_back(nic.name);
    // No NIC on this node: every NIC is equally far.
    if (t.preferred.empty()) std::swap(t.preferred, t.available);
    m["cpu:" + std::to_string(n)] = std::move(t);
  }
  for (const auto& g : gpus) {
    // Nearest on the PCIe tree first (behind the same switch); NUMA node breaks no ties on purpose:
    // the switch path is what GPUDirect traffic takes.
    int best = INT_MAX;
    for (const auto& nic : nics) best = std::min(best, pci_distance(g.pci_path, nic.pci_path));
    nic_tiers t;
    for (const auto& nic : nics) {
      bool near = pci_distance(g.pci_path, nic.pci_path) == best && best < INT_MAX / 2;
      // Without PCI paths (no shared root anywhere), fall back to the NUMA node.
      if (best >= INT_MAX / 2) near = node_of(nic) == node_of(g);
      (near ? t.preferred : t.available).push_back(nic.name);
    }
    if (t.preferred.empty()) std::swap(t.preferred, t.available);
    m[g.name] = std::move(t);
  }
  return m;
}

result<priority_matrix> parse_priority_matrix(std::string_view json, const std::vector<std::string>& known) {
  auto j = nlohmann::json::parse(json, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return fail(te_errc::invalid_argument);
  std::set<std::string> names(known.begin(), known.end());
  priority_matrix m;
  for (auto it = j.begin(); it != j.end(); ++it) {
    auto loc = location::parse(it.key());
    if (!loc || loc->type == location::kind::any) return fail(te_errc::invalid_argument);
    const auto& v = it.value();
    if (!v.is_array() || v.empty() || v.size() > 2) return fail(te_errc::invalid_argument);
    nic_tiers t;
    for (std::size_t tier = 0; tier < v.size(); ++tier) {
      if (!v[tier].is_array()) return fail(te_errc::invalid_argument);
      for (const auto& n : v[tier]) {
        if (!n.is_string() || !names.count(n.get<std::string>())) return fail(te_errc::invalid_argument);
        (tier == 0 ? t.preferred : t.available).push_back(n.get<std::string>());
      }
    }
    if (t.preferred.empty()) return fail(te_errc::invalid_argument);
    m[loc->to_string()] = std::move(t);
  }
  return m;
}

std::string to_json(const priority_matrix& m) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [loc, t] : m) j[loc] = nlohmann::json::array({t.preferred, t.available});
  return j.dump();
}

nic_tiers tiers_for(const priority_matrix& m, const location& where, const std::vector<std::string>& all) {
  location w = where;
  if (w.type == location::kind::any) w = location{location::kind::cpu, 0};
  if (auto it = m.find(w.to_string()); it != m.end()) return it->second;
  return nic_tiers{all, {}};
}

}  // namespace yutu::transfer::rdma
