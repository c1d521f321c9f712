// A software double of the ibverbs subset yutu calls, linked only into tests.
//
// One fake_fabric is a switch with NICs on it: every engine of a test process opens the same devices
// and their queue pairs reach each other by QP number. It keeps real semantics where the transport
// depends on them: protection domains own memory regions with lkeys, rkeys and access flags (a work
// request is checked against them, on both sides, and bounds-checked); the RC state machine
// (RESET->INIT->RTR->RTS, error flushes); completion queues with a capacity, and a completion channel
// whose fd is a real eventfd, written when an armed CQ gets a completion; READ and WRITE executed as
// copies when posted; selective signalling (a completion for signalled work requests and for every
// one in error). Faults are injectable: fail the next N work requests through a device, take a device
// down, or stall a device (work requests never complete until the QP is moved to error).
#pragma once

#include <atomic>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "yutu/transfer/rdma/verbs.hpp"

namespace yutu::test {

class fake_fabric final : public transfer::rdma::verbs {
 public:
  struct device_spec {
    std::string name;
    transfer::rdma::mtu active_mtu = transfer::rdma::mtu::m4096;
    std::uint64_t max_mr_size = 1ull << 40;
    bool active = true;
  };
  explicit fake_fabric(std::vector<device_spec> devices);
  ~fake_fabric() override;

  // --- fault injection (any thread) ---
  // The next `n` work requests posted through `device` (as initiator) complete with `status`.
  void fail_next(const std::string& device, int n, transfer::rdma::wc_status status);
  // Every work request that touches `device` (either end) fails with retry_exc_err.
  void set_down(const std::string& device, bool down);
  // Work requests posted through `device` are held, never completing until the QP goes to error.
  void set_stalled(const std::string& device, bool stalled);

  // --- observation ---
  struct stats {
    std::uint64_t posted = 0, completed_ok = 0, completed_err = 0, bytes = 0, post_calls = 0;
  };
  stats device_stats(const std::string& device) const;
  // Objects alive now (contexts, PDs, MRs, CQs, channels, QPs): zero after every engine is gone.
  std::size_t live_objects() const;
  std::size_t live_qps() const;
  bool cq_overflowed() const { return overflow_.load(); }
  // The MTU each QP pair was moved to RTR with (the last one).
  transfer::rdma::mtu last_rtr_mtu() const;
  // QPs ever created.
  std::uint64_t qps_created() const;

  // --- verbs ---
  std::string_view name() const noexcept override { return "fake"; }
  result<std::vector<std::string>> device_names() override;
  std::string sysfs_path(const std::string& device) override { return "/nonexistent/" + device; }
  result<transfer::rdma::context*> open_device(const std::string& name) override;
  void close_device(transfer::rdma::context*) noexcept override;
  result<transfer::rdma::device_attr> query_device(transfer::rdma::context*) override;
  result<transfer::rdma::port_attr> query_port(transfer::rdma::context*, std::uint8_t port) override;
  result<transfer::rdma::gid_entry> query_gid(transfer::rdma::context*, std::uint8_t port, int index) override;
  result<transfer::rdma::protection_domain*> alloc_pd(transfer::rdma::context*) override;
  void dealloc_pd(transfer::rdma::protection_domain*) noexcept override;
  result<transfer::rdma::mr_handle> reg_mr(transfer::rdma::protection_domain*, void* addr, std::uint64_t length,
                                           unsigned access) override;
  result<transfer::rdma::mr_handle> reg_dmabuf_mr(transfer::rdma::protection_domain*, std::uint64_t, std::uint64_t,
                                                  std::uint64_t, int, unsigned) override;
  void dereg_mr(transfer::rdma::memory_region*) noexcept override;
  result<transfer::rdma::completion_channel*> create_comp_channel(transfer::rdma::context*) override;
  void destroy_comp_channel(transfer::rdma::completion_channel*) noexcept override;
  int channel_fd(transfer::rdma::completion_channel*) noexcept override;
  result<transfer::rdma::completion_queue*> create_cq(transfer::rdma::context*, int cqe,
                                                      transfer::rdma::completion_channel*) override;
  void destroy_cq(transfer::rdma::completion_queue*) noexcept override;
  result<void> req_notify_cq(transfer::rdma::completion_queue*) override;
  result<transfer::rdma::completion_queue*> get_cq_event(transfer::rdma::completion_channel*) override;
  void ack_cq_events(transfer::rdma::completion_queue*, unsigned n) noexcept override;
  int poll_cq(transfer::rdma::completion_queue*, std::span<transfer::rdma::work_completion> out) noexcept override;
  result<transfer::rdma::queue_pair*> create_rc_qp(transfer::rdma::protection_domain*, transfer::rdma::completion_queue*,
                                                   transfer::rdma::completion_queue*,
                                                   const transfer::rdma::qp_caps&) override;
  void destroy_qp(transfer::rdma::queue_pair*) noexcept override;
  std::uint32_t qp_num(transfer::rdma::queue_pair*) noexcept override;
  result<void> modify_to_init(transfer::rdma::queue_pair*, const transfer::rdma::qp_local&) override;
  result<void> modify_to_rtr(transfer::rdma::queue_pair*, const transfer::rdma::qp_local&,
                             const transfer::rdma::qp_remote&) override;
  result<void> modify_to_rts(transfer::rdma::queue_pair*, const transfer::rdma::qp_local&) override;
  result<void> modify_to_error(transfer::rdma::queue_pair*) override;
  result<transfer::rdma::qp_state> query_qp_state(transfer::rdma::queue_pair*) override;
  result<void> post_send(transfer::rdma::queue_pair*, std::span<const transfer::rdma::send_wr> wrs) override;

  struct dev;
  struct ctx;
  struct pd;
  struct mr;
  struct channel;
  struct cq;
  struct qp;

 private:
  void complete_locked(cq& c, const transfer::rdma::work_completion& wc);
  void flush_locked(qp& q);
  transfer::rdma::wc_status execute_locked(qp& q, const transfer::rdma::send_wr& w);

  mutable std::mutex mu_;
  std::vector<device_spec> specs_;
  std::map<std::string, int> fail_next_count_;
  std::map<std::string, transfer::rdma::wc_status> fail_next_status_;
  std::set<std::string> down_, stalled_;
  std::map<std::string, stats> stats_;
  std::map<std::uint32_t, qp*> qps_;
  std::set<void*> live_;
  std::uint32_t next_qpn_ = 0x100;
  std::uint32_t next_key_ = 0x1000;
  std::uint64_t qps_created_ = 0;
  std::atomic<bool> overflow_{false};
  transfer::rdma::mtu last_mtu_ = transfer::rdma::mtu::m256;
};

}  // namespace yutu::test
