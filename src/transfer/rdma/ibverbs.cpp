// The verbs interface over the real libibverbs (built only when rdma-core is found).
//
// A thin mapping: handles are the ibv_* pointers themselves; errors are errno values. Work requests
// are posted as one linked list per call (one doorbell). The completion channel's fd is made
// non-blocking so the reactor can poll it and get_cq_event never blocks a reactor thread.
#include <fcntl.h>
#include <infiniband/verbs.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "yutu/transfer/rdma/verbs.hpp"

namespace yutu::transfer::rdma {
namespace {

template <class T, class U>
T* as(U* p) {
  return reinterpret_cast<T*>(p);
}
tl::unexpected<std::error_code> errno_error(int e) { return fail(std::error_code(e ? e : EIO, std::system_category())); }

class ibverbs final : public verbs {
 public:
  std::string_view name() const noexcept override { return "ibverbs"; }

  result<std::vector<std::string>> device_names() override {
    int n = 0;
    ibv_device** list = ::ibv_get_device_list(&n);
    if (!list) return errno_error(errno);
    std::vector<std::string> out;
    for (int i = 0; i < n; ++i) out.emplace_back(::ibv_get_device_name(list[i]));
    ::ibv_free_device_list(list);
    return out;
  }
  std::string sysfs_path(const std::string& device) override { return "/sys/class/infiniband/" + device; }

  result<context*> open_device(const std::string& want) override {
    int n = 0;
    ibv_device** list = ::ibv_get_device_list(&n);
    if (!list) return errno_error(errno);
    ibv_context* c = nullptr;
    for (int i = 0; i < n && !c; ++i)
      if (want == ::ibv_get_device_name(list[i])) c = ::ibv_open_device(list[i]);
    int e = errno;
    ::ibv_free_device_list(list);
    if (!c) return e ? errno_error(e) : fail(te_errc::device_not_found);
    // The async event fd too, so nothing ever blocks on it.
    ::fcntl(c->async_fd, F_SETFL, ::fcntl(c->async_fd, F_GETFL) | O_NONBLOCK);
    return as<context>(c);
  }
  void close_device(context* c) noexcept override { ::ibv_close_device(as<ibv_context>(c)); }

  result<device_attr> query_device(context* c) override {
    ibv_device_attr a{};
    if (int e = ::ibv_query_device(as<ibv_context>(c), &a)) return errno_error(e);
    device_attr d;
    d.max_mr_size = a.max_mr_size;
    d.max_qp_wr = a.max_qp_wr;
    d.max_cqe = a.max_cqe;
    d.max_qp_rd_atom = a.max_qp_rd_atom;
    d.phys_port_cnt = a.phys_port_cnt;
    return d;
  }
  result<port_attr> query_port(context* c, std::uint8_t port) override {
    ibv_port_attr a{};
    if (int e = ::ibv_query_port(as<ibv_context>(c), port, &a)) return errno_error(e);
    port_attr p;
    p.active = a.state == IBV_PORT_ACTIVE;
    p.lid = a.lid;
    p.active_mtu = static_cast<mtu>(a.active_mtu);
    p.link = a.link_layer == IBV_LINK_LAYER_ETHERNET ? link_layer::ethernet : link_layer::infiniband;
    p.gid_table_len = a.gid_tbl_len;
    return p;
  }
  result<gid_entry> query_gid(context* c, std::uint8_t port, int index) override {
    ibv_gid_entry g{};
    if (int e = ::ibv_query_gid_ex(as<ibv_context>(c), port, static_cast<std::uint32_t>(index), &g, 0))
      return errno_error(e);
    gid_entry out;
    out.index = index;
    std::memcpy(out.value.data(), g.gid.raw, 16);
    out.type = g.gid_type == IBV_GID_TYPE_ROCE_V2   ? gid_type::roce_v2
               : g.gid_type == IBV_GID_TYPE_ROCE_V1 ? gid_type::roce_v1
                                                    : gid_type::ib;
    return out;
  }

  result<protection_domain*> alloc_pd(context* c) override {
    ibv_pd* p = ::ibv_alloc_pd(as<ibv_context>(c));
    if (!p) return errno_error(errno);
    return as<protection_domain>(p);
  }
  void dealloc_pd(protection_domain* p) noexcept override { ::ibv_dealloc_pd(as<ibv_pd>(p)); }

  result<mr_handle> reg_mr(protection_domain* p, void* addr, std::uint64_t length, unsigned access) override {
    ibv_mr* m = ::ibv_reg_mr(as<ibv_pd>(p), addr, length, static_cast<int>(access));
    if (!m) return errno_error(errno);
    return mr_handle{as<memory_region>(m), m->lkey, m->rkey};
  }
  result<mr_handle> reg_dmabuf_mr(protection_domain* p, std::uint64_t offset, std::uint64_t length,
                                  std::uint64_t iova, int fd, unsigned access) override {
    ibv_mr* m = ::ibv_reg_dmabuf_mr(as<ibv_pd>(p), offset, length, iova, fd, static_cast<int>(access));
    if (!m) return errno_error(errno);
    return mr_handle{as<memory_region>(m), m->lkey, m->rkey};
  }
  void dereg_mr(memory_region* m) noexcept override { ::ibv_dereg_mr(as<ibv_mr>(m)); }

  result<completion_channel*> create_comp_channel(context* c) override {
    ibv_comp_channel* ch = ::ibv_create_comp_channel(as<ibv_context>(c));
    if (!ch) return errno_error(errno);
    ::fcntl(ch->fd, F_SETFL, ::fcntl(ch->fd, F_GETFL) | O_NONBLOCK);
    return as<completion_channel>(ch);
  }
  void destroy_comp_channel(completion_channel* ch) noexcept override {
    ::ibv_destroy_comp_channel(as<ibv_comp_channel>(ch));
  }
  int channel_fd(completion_channel* ch) noexcept override { return as<ibv_comp_channel>(ch)->fd; }
  result<completion_queue*> create_cq(context* c, int cqe, completion_channel* ch) override {
    ibv_cq* q = ::ibv_create_cq(as<ibv_context>(c), cqe, nullptr, as<ibv_comp_channel>(ch), 0);
    if (!q) return errno_error(errno);
    return as<completion_queue>(q);
  }
  void destroy_cq(completion_queue* q) noexcept override { ::ibv_destroy_cq(as<ibv_cq>(q)); }
  result<void> req_notify_cq(completion_queue* q) override {
    if (int e = ::ibv_req_notify_cq(as<ibv_cq>(q), 0)) return errno_error(e);
    return ok();
  }
  result<completion_queue*> get_cq_event(completion_channel* ch) override {
    ibv_cq* q = nullptr;
    void* ctx = nullptr;
    if (::ibv_get_cq_event(as<ibv_comp_channel>(ch), &q, &ctx)) return errno_error(errno);
    return as<completion_queue>(q);
  }
  void ack_cq_events(completion_queue* q, unsigned n) noexcept override { ::ibv_ack_cq_events(as<ibv_cq>(q), n); }
  int poll_cq(completion_queue* q, std::span<work_completion> out) noexcept override {
    ibv_wc wc[32];
    int want = static_cast<int>(std::min<std::size_t>(out.size(), 32));
    int n = ::ibv_poll_cq(as<ibv_cq>(q), want, wc);
    for (int i = 0; i < n; ++i) {
      out[static_cast<std::size_t>(i)] =
          work_completion{wc[i].wr_id, static_cast<wc_status>(wc[i].status), wc[i].vendor_err, wc[i].byte_len};
    }
    return n;
  }

  result<queue_pair*> create_rc_qp(protection_domain* p, completion_queue* scq, completion_queue* rcq,
                                   const qp_caps& caps) override {
    ibv_qp_init_attr a{};
    a.send_cq = as<ibv_cq>(scq);
    a.recv_cq = as<ibv_cq>(rcq);
    a.qp_type = IBV_QPT_RC;
    a.sq_sig_all = 0;  // selective signalling
    a.cap.max_send_wr = caps.max_send_wr;
    a.cap.max_recv_wr = caps.max_recv_wr;
    a.cap.max_send_sge = caps.max_send_sge;
    a.cap.max_recv_sge = 1;
    ibv_qp* q = ::ibv_create_qp(as<ibv_pd>(p), &a);
    if (!q) return errno_error(errno);
    return as<queue_pair>(q);
  }
  void destroy_qp(queue_pair* q) noexcept override { ::ibv_destroy_qp(as<ibv_qp>(q)); }
  std::uint32_t qp_num(queue_pair* q) noexcept override { return as<ibv_qp>(q)->qp_num; }

  result<void> modify_to_init(queue_pair* q, const qp_local& l) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_INIT;
    a.port_num = l.port;
    a.pkey_index = 0;
    a.qp_access_flags = l.access;
    if (int e = ::ibv_modify_qp(as<ibv_qp>(q), &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS))
      return errno_error(e);
    return ok();
  }
  result<void> modify_to_rtr(queue_pair* q, const qp_local& l, const qp_remote& r) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTR;
    a.path_mtu = static_cast<ibv_mtu>(r.path_mtu);
    a.dest_qp_num = r.qp_num;
    a.rq_psn = r.psn;
    a.max_dest_rd_atomic = l.max_rd_atomic;
    a.min_rnr_timer = 12;
    a.ah_attr.dlid = r.lid;
    a.ah_attr.sl = 0;
    a.ah_attr.port_num = l.port;
    if (r.use_gid) {
      a.ah_attr.is_global = 1;
      std::memcpy(a.ah_attr.grh.dgid.raw, r.gid_value.data(), 16);
      a.ah_attr.grh.sgid_index = static_cast<std::uint8_t>(l.gid_index);
      a.ah_attr.grh.hop_limit = 64;
    }
    if (int e = ::ibv_modify_qp(as<ibv_qp>(q), &a,
                                IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                    IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER))
      return errno_error(e);
    return ok();
  }
  result<void> modify_to_rts(queue_pair* q, const qp_local& l) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_RTS;
    a.timeout = l.timeout;
    a.retry_cnt = l.retry_cnt;
    a.rnr_retry = l.rnr_retry;
    a.sq_psn = l.psn;
    a.max_rd_atomic = l.max_rd_atomic;
    if (int e = ::ibv_modify_qp(as<ibv_qp>(q), &a,
                                IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY | IBV_QP_SQ_PSN |
                                    IBV_QP_MAX_QP_RD_ATOMIC))
      return errno_error(e);
    return ok();
  }
  result<void> modify_to_error(queue_pair* q) override {
    ibv_qp_attr a{};
    a.qp_state = IBV_QPS_ERR;
    if (int e = ::ibv_modify_qp(as<ibv_qp>(q), &a, IBV_QP_STATE)) return errno_error(e);
    return ok();
  }
  result<qp_state> query_qp_state(queue_pair* q) override {
    ibv_qp_attr a{};
    ibv_qp_init_attr ia{};
    if (int e = ::ibv_query_qp(as<ibv_qp>(q), &a, IBV_QP_STATE, &ia)) return errno_error(e);
    return static_cast<qp_state>(a.qp_state);
  }

  result<void> post_send(queue_pair* q, std::span<const send_wr> wrs) override {
    // Small lists live on the stack; the transport posts at most wrs_per_post at a time.
    constexpr std::size_t inline_n = 32;
    ibv_send_wr wr_stack[inline_n];
    ibv_sge sge_stack[inline_n];
    std::vector<ibv_send_wr> wr_heap;
    std::vector<ibv_sge> sge_heap;
    ibv_send_wr* w = wr_stack;
    ibv_sge* s = sge_stack;
    if (wrs.size() > inline_n) {
      wr_heap.resize(wrs.size());
      sge_heap.resize(wrs.size());
      w = wr_heap.data();
      s = sge_heap.data();
    }
    for (std::size_t i = 0; i < wrs.size(); ++i) {
      const auto& in = wrs[i];
      s[i] = ibv_sge{in.local_addr, in.length, in.lkey};
      std::memset(&w[i], 0, sizeof w[i]);
      w[i].wr_id = in.wr_id;
      w[i].sg_list = &s[i];
      w[i].num_sge = 1;
      w[i].opcode = in.op == wr_opcode::rdma_write ? IBV_WR_RDMA_WRITE : IBV_WR_RDMA_READ;
      w[i].send_flags = in.signaled ? IBV_SEND_SIGNALED : 0;
      w[i].wr.rdma.remote_addr = in.remote_addr;
      w[i].wr.rdma.rkey = in.rkey;
      w[i].next = i + 1 < wrs.size() ? &w[i + 1] : nullptr;
    }
    ibv_send_wr* bad = nullptr;
    if (int e = ::ibv_post_send(as<ibv_qp>(q), w, &bad)) return errno_error(e);
    return ok();
  }
};

}  // namespace

result<std::shared_ptr<verbs>> make_ibverbs() { return std::shared_ptr<verbs>(std::make_shared<ibverbs>()); }

}  // namespace yutu::transfer::rdma
