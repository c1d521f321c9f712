// The subset of ibverbs the RDMA transport calls, as an interface.
//
// The transport never calls libibverbs directly: it takes a `verbs` object. make_ibverbs() returns the
// real one (src/transfer/rdma/ibverbs.cpp, built only when rdma-core is found); tests inject a
// software double (test/transfer/rdma/fake_verbs.hpp) that implements the same calls with copies, so
// the whole transport runs end to end on machines without RDMA hardware. The types here mirror
// ibverbs' without including <infiniband/verbs.h>, so nothing outside the real implementation
// depends on rdma-core. Enum values keep ibverbs' numbers (IBV_WC_*, IBV_ACCESS_*, IBV_MTU_*).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "yutu/error.hpp"

namespace yutu::transfer::rdma {

// Opaque handles: the real implementation casts ibv_* pointers to these, the double its own objects.
struct context;
struct protection_domain;
struct memory_region;
struct completion_channel;
struct completion_queue;
struct queue_pair;

using gid = std::array<std::uint8_t, 16>;

enum access : unsigned {
  access_local_write = 1,   // IBV_ACCESS_LOCAL_WRITE
  access_remote_write = 2,  // IBV_ACCESS_REMOTE_WRITE
  access_remote_read = 4,   // IBV_ACCESS_REMOTE_READ
};

// IBV_MTU_256 .. IBV_MTU_4096.
enum class mtu : std::uint8_t { m256 = 1, m512 = 2, m1024 = 3, m2048 = 4, m4096 = 5 };
std::uint32_t mtu_bytes(mtu m) noexcept;

enum class link_layer : std::uint8_t { infiniband = 1, ethernet = 2 };
enum class gid_type : std::uint8_t { ib = 0, roce_v1 = 1, roce_v2 = 2 };

// ibv_wc_status numbers that the transport tells apart.
enum class wc_status : std::uint32_t {
  success = 0,
  loc_len_err = 1,
  loc_qp_op_err = 2,
  loc_prot_err = 4,
  wr_flush_err = 5,
  rem_access_err = 10,
  rem_op_err = 11,
  retry_exc_err = 12,
  rnr_retry_exc_err = 13,
  fatal_err = 19,
  resp_timeout_err = 20,
  general_err = 21,
};
const char* to_string(wc_status s) noexcept;

enum class qp_state : std::uint8_t { reset = 0, init = 1, rtr = 2, rts = 3, sqd = 4, sqe = 5, error = 6 };

struct device_attr {
  std::uint64_t max_mr_size = 0;
  int max_qp_wr = 0;
  int max_cqe = 0;
  int max_qp_rd_atom = 0;
  std::uint8_t phys_port_cnt = 0;
};

struct port_attr {
  bool active = false;
  std::uint16_t lid = 0;
  mtu active_mtu = mtu::m1024;
  link_layer link = link_layer::infiniband;
  int gid_table_len = 0;
};

struct gid_entry {
  int index = 0;
  gid value{};
  gid_type type = gid_type::ib;
};

struct mr_handle {
  memory_region* mr = nullptr;
  std::uint32_t lkey = 0;
  std::uint32_t rkey = 0;
};

struct qp_caps {
  std::uint32_t max_send_wr = 256;
  std::uint32_t max_recv_wr = 1;
  std::uint32_t max_send_sge = 1;
};

// What the remote side of an RC connection told us in the handshake.
struct qp_remote {
  std::uint32_t qp_num = 0;
  std::uint32_t psn = 0;
  std::uint16_t lid = 0;
  gid gid_value{};
  mtu path_mtu = mtu::m1024;
  bool use_gid = false;  // RoCE, or IB across subnets
};

struct qp_local {
  std::uint8_t port = 1;
  int gid_index = 0;
  std::uint32_t psn = 0;
  unsigned access = access_local_write | access_remote_read | access_remote_write;
  std::uint8_t timeout = 14;    // 4.096 us * 2^14 = 67 ms per try
  std::uint8_t retry_cnt = 7;
  std::uint8_t rnr_retry = 7;
  std::uint8_t max_rd_atomic = 16;
};

enum class wr_opcode : std::uint8_t { rdma_write = 0, rdma_read = 4 };  // IBV_WR_*

struct send_wr {
  std::uint64_t wr_id = 0;
  wr_opcode op = wr_opcode::rdma_write;
  std::uint64_t local_addr = 0;
  std::uint32_t length = 0;
  std::uint32_t lkey = 0;
  std::uint64_t remote_addr = 0;
  std::uint32_t rkey = 0;
  bool signaled = false;
};

struct work_completion {
  std::uint64_t wr_id = 0;
  wc_status status = wc_status::success;
  std::uint32_t vendor_err = 0;
  std::uint32_t byte_len = 0;
};

class verbs {
 public:
  virtual ~verbs() = default;

  // "real ibverbs" or "fake", for logs.
  virtual std::string_view name() const noexcept = 0;
  // Device names as ibverbs lists them (mlx5_0, rxe0, ...).
  virtual result<std::vector<std::string>> device_names() = 0;
  // Where the device's sysfs tree is (/sys/class/infiniband/<name>), for topology.
  virtual std::string sysfs_path(const std::string& device) = 0;

  virtual result<context*> open_device(const std::string& name) = 0;
  virtual void close_device(context*) noexcept = 0;
  virtual result<device_attr> query_device(context*) = 0;
  virtual result<port_attr> query_port(context*, std::uint8_t port) = 0;
  virtual result<gid_entry> query_gid(context*, std::uint8_t port, int index) = 0;

  virtual result<protection_domain*> alloc_pd(context*) = 0;
  virtual void dealloc_pd(protection_domain*) noexcept = 0;
  virtual result<mr_handle> reg_mr(protection_domain*, void* addr, std::uint64_t length, unsigned access) = 0;
  // GPU memory exported as a dma-buf (ibv_reg_dmabuf_mr); not_supported where the library lacks it.
  virtual result<mr_handle> reg_dmabuf_mr(protection_domain*, std::uint64_t offset, std::uint64_t length,
                                          std::uint64_t iova, int fd, unsigned access) = 0;
  virtual void dereg_mr(memory_region*) noexcept = 0;

  virtual result<completion_channel*> create_comp_channel(context*) = 0;
  virtual void destroy_comp_channel(completion_channel*) noexcept = 0;
  virtual int channel_fd(completion_channel*) noexcept = 0;
  virtual result<completion_queue*> create_cq(context*, int cqe, completion_channel*) = 0;
  virtual void destroy_cq(completion_queue*) noexcept = 0;
  virtual result<void> req_notify_cq(completion_queue*) = 0;
  // Takes one event from the channel (non-blocking fd: would_block when none) and returns its CQ.
  virtual result<completion_queue*> get_cq_event(completion_channel*) = 0;
  virtual void ack_cq_events(completion_queue*, unsigned n) noexcept = 0;
  // Fills `out` with up to out.size() completions; returns how many (negative errno on failure).
  virtual int poll_cq(completion_queue*, std::span<work_completion> out) noexcept = 0;

  virtual result<queue_pair*> create_rc_qp(protection_domain*, completion_queue* send_cq,
                                           completion_queue* recv_cq, const qp_caps&) = 0;
  virtual void destroy_qp(queue_pair*) noexcept = 0;
  virtual std::uint32_t qp_num(queue_pair*) noexcept = 0;
  virtual result<void> modify_to_init(queue_pair*, const qp_local&) = 0;
  virtual result<void> modify_to_rtr(queue_pair*, const qp_local&, const qp_remote&) = 0;
  virtual result<void> modify_to_rts(queue_pair*, const qp_local&) = 0;
  // Moves a QP to the error state: every outstanding work request completes with wr_flush_err.
  virtual result<void> modify_to_error(queue_pair*) = 0;
  virtual result<qp_state> query_qp_state(queue_pair*) = 0;
  // Posts `wrs` as one linked list (one doorbell).
  virtual result<void> post_send(queue_pair*, std::span<const send_wr> wrs) = 0;
};

// The real libibverbs, or device_not_found when yutu was built without rdma-core.
result<std::shared_ptr<verbs>> make_ibverbs();

}  // namespace yutu::transfer::rdma
