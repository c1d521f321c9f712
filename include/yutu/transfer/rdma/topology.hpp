// Where the RDMA NICs sit, and which NICs serve which memory: the priority matrix.
//
// A NIC's NUMA node and PCI path come from sysfs (/sys/class/infiniband/<dev>/device/numa_node and
// the realpath of that device link), read under a root that tests point at fixture trees. For each
// location (`cpu:N` = NUMA node N, `cuda:N` = GPU N) the matrix lists the preferred NICs (same NUMA
// node; for a GPU, the NICs nearest on the PCIe tree) and the others as a fallback tier. A JSON
// document in Mooncake's format ({"cpu:0": [["mlx5_0"], ["mlx5_1"]]}) overrides it. The matrix is
// published in the segment descriptor, so a peer picks our NIC for its requests too.
#pragma once

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "yutu/error.hpp"
#include "yutu/transfer/types.hpp"

namespace yutu::transfer::rdma {

struct pci_device {
  std::string name;                   // a NIC's ibverbs name, or "cuda:N" for a GPU
  int numa_node = -1;                 // -1: unknown (treated as node 0)
  std::vector<std::string> pci_path;  // from the root complex down: {"pci0000:00", "0000:00:01.0", ...}
};

// Components of a sysfs device path below "devices/": "/sys/devices/pci0000:00/0000:00:01.0/x" ->
// {"pci0000:00", "0000:00:01.0", "x"}. Empty when the path is not under a devices/ folder.
std::vector<std::string> pci_path_of(std::string_view realpath);
// Hops between two devices on the PCI tree (through their deepest common ancestor); a large number
// when they share no root.
int pci_distance(const std::vector<std::string>& a, const std::vector<std::string>& b) noexcept;

// Reads one NIC under `sysfs_root` (normally "/sys"): class/infiniband/<dev>/device.
result<pci_device> read_nic(const std::string& sysfs_root, const std::string& dev);
// NVIDIA GPUs (vendor 0x10de, display class) under bus/pci/devices, in PCI bus id order: the order
// CUDA numbers them with CUDA_DEVICE_ORDER=PCI_BUS_ID. Named "cuda:0", "cuda:1", ...
std::vector<pci_device> read_gpus(const std::string& sysfs_root);
// NUMA nodes (devices/system/node/nodeN); at least 1.
int numa_node_count(const std::string& sysfs_root);

struct nic_tiers {
  std::vector<std::string> preferred;
  std::vector<std::string> available;
  friend bool operator==(const nic_tiers&, const nic_tiers&) = default;
};
// Location string ("cpu:0", "cuda:1") -> tiers.
using priority_matrix = std::map<std::string, nic_tiers>;

priority_matrix build_priority_matrix(const std::vector<pci_device>& nics, const std::vector<pci_device>& gpus,
                                      int numa_nodes);
// Mooncake's format. Names must be among `known` (an unknown NIC is a typo: invalid_argument).
result<priority_matrix> parse_priority_matrix(std::string_view json, const std::vector<std::string>& known);
std::string to_json(const priority_matrix& m);
// The tiers for `where`; a location the matrix lacks gets every NIC as preferred.
nic_tiers tiers_for(const priority_matrix& m, const location& where, const std::vector<std::string>& all);

}  // namespace yutu::transfer::rdma
