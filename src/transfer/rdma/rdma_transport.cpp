// The RDMA transport: one-sided READ/WRITE over RC queue pairs, through the verbs interface.
//
// Per NIC: a protection domain, and per engine reactor a completion channel and completion queue,
// drained by that reactor (a completion_source polled every loop turn, plus a task sleeping on the
// channel's fd, so an idle reactor wakes on a completion; with busy_poll the reactor does not sleep
// while work is in flight). No thread of our own.
//
// An endpoint is (local NIC, peer NIC) with qps_per_endpoint RC queue pairs; it lives on one home
// reactor (its CQ's), is connected lazily by a handshake over the engine's TCP service, and is
// reconnected after a queue pair went to the error state. A request is cut into slices (slicer.hpp),
// the slices grouped wrs_per_post at a time and striped over the rails (NIC pairs) the priority
// matrices of both sides prefer; each group is one linked list of work requests whose last one alone
// is signalled. A failed group is retried on the next rail; rails that keep failing are paused and
// probed later (retry.hpp); after max_retries the request fails with retries_exhausted.
//
// Lifetime: a queue pair is destroyed only when no completion is owed for it (it is moved to the
// error state first, which flushes everything posted), or when the transport is destroyed after the
// reactors stopped. Every verbs object is accounted for, so an engine's teardown leaks nothing.
#include <dlfcn.h>
#include <poll.h>
#include <unistd.h>

#include <algorithm>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <nlohmann/json.hpp>
#include <random>
#include <shared_mutex>
#include <unordered_map>
#include <unordered_set>

#include "../transports.hpp"
#include "yutu/json_int.hpp"
#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_mutex.hpp"
#include "yutu/coro/async_semaphore.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/io/timeout.hpp"
#include "yutu/log.hpp"
#include "yutu/transfer/rdma/endpoint.hpp"
#include "yutu/transfer/rdma/retry.hpp"
#include "yutu/transfer/rdma/slicer.hpp"
#include "yutu/transfer/rdma/topology.hpp"
#include "yutu/transfer/rdma/verbs.hpp"
#include "yutu_config.hpp"

namespace yutu::transfer::detail {
namespace {

using namespace rdma;
using clock_type = std::chrono::steady_clock;

struct cq_state;
struct qp_rec;

// One posted list of work requests. Owned by its queue pair's in-flight table until the completion
// of its last (signalled) work request arrives, and by the waiting coroutine.
struct post_group {
  std::shared_ptr<qp_rec> qp;
  std::size_t n = 0;
  wc_status status = wc_status::success;
  std::uint32_t vendor_err = 0;
  coro::async_event done;
};

struct qp_rec {
  queue_pair* qp = nullptr;
  cq_state* cq = nullptr;
  bool broken = false;   // moved to error: post nothing more
  bool retired = false;  // no endpoint uses it: destroy once nothing is in flight
  std::unique_ptr<coro::async_semaphore> credits;
  std::unordered_map<post_group*, std::shared_ptr<post_group>> inflight;
};

struct nic;
class rdma_transport;

// A completion queue of one NIC drained by one reactor.
struct cq_state final : io::completion_source {
  rdma_transport* owner = nullptr;
  nic* n = nullptr;
  std::size_t reactor_index = 0;
  completion_channel* channel = nullptr;
  completion_queue* cq = nullptr;
  int depth = 0;
  bool busy_poll = false;
  std::size_t outstanding = 0;  // work requests owed a completion (reactor thread only)
  std::unique_ptr<coro::async_semaphore> credits;  // never more in flight than the CQ holds
  std::vector<std::shared_ptr<qp_rec>> retired;

  bool poll() noexcept override;
  bool can_sleep() const noexcept override { return !busy_poll || outstanding == 0; }
  void handle(const work_completion& wc) noexcept;
  void reap_retired() noexcept;
};

struct nic {
  std::string name;
  context* ctx = nullptr;
  protection_domain* pd = nullptr;
  device_attr dev;
  port_attr port;
  int gid_index = 0;
  gid gid_value{};
  std::vector<std::unique_ptr<cq_state>> cqs;  // one per engine reactor
};

// What a peer published of its RDMA side.
struct remote_nic {
  std::string name;
  std::uint16_t lid = 0;
  gid gid_value{};
  mtu port_mtu = mtu::m1024;
  bool use_gid = false;
};
struct remote_buffer {
  std::uint64_t addr = 0, length = 0, chunk = 0;
  location where;
  std::vector<std::vector<std::uint32_t>> rkeys;  // [nic][chunk]
};
struct remote_info {
  std::vector<remote_nic> nics;
  priority_matrix matrix;
  std::vector<remote_buffer> buffers;  // sorted by addr
  const remote_buffer* find(std::uint64_t addr, std::uint64_t len) const noexcept {
    auto it = std::upper_bound(buffers.begin(), buffers.end(), addr,
                               [](std::uint64_t a, const remote_buffer& b) { return a < b.addr; });
    if (it == buffers.begin()) return nullptr;
    --it;
    if (addr - it->addr > it->length || len > it->length - (addr - it->addr)) return nullptr;
    return &*it;
  }
  int nic_index(const std::string& name) const noexcept {
    for (std::size_t i = 0; i < nics.size(); ++i)
      if (nics[i].name == name) return static_cast<int>(i);
    return -1;
  }
};

result<remote_info> parse_remote(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(te_errc::metadata_error);
  try {
    remote_info ri;
    std::vector<std::string> names;
    for (const auto& jn : j.at("nics")) {
      remote_nic n;
      n.name = jn.at("name").get<std::string>();
      // Integers through json_int: get<T>() casts a float or a wider integer unchecked.
      auto lid = json_int<std::uint16_t>(jn.at("lid"));
      auto g = json_ints<std::uint8_t>(jn.at("gid"));
      auto mtu_v = json_int<int>(jn.at("mtu"));
      if (!lid || !g || g->size() != 16 || !mtu_v) return fail(te_errc::metadata_error);
      n.lid = *lid;
      std::copy(g->begin(), g->end(), n.gid_value.begin());
      int m = *mtu_v;
      if (m < 1 || m > 5) return fail(te_errc::metadata_error);
      n.port_mtu = static_cast<mtu>(m);
      n.use_gid = jn.at("roce").get<bool>();
      names.push_back(n.name);
      ri.nics.push_back(std::move(n));
    }
    auto m = parse_priority_matrix(j.at("matrix").dump(), names);
    if (!m) return fail(te_errc::metadata_error);
    ri.matrix = std::move(*m);
    for (const auto& jb : j.at("buffers")) {
      remote_buffer b;
      auto addr = json_int<std::uint64_t>(jb.at("addr"));
      auto length = json_int<std::uint64_t>(jb.at("length"));
      auto chunk = json_int<std::uint64_t>(jb.at("chunk"));
      if (!addr || !length || !chunk) return fail(te_errc::metadata_error);
      b.addr = *addr;
      b.length = *length;
      b.chunk = *chunk;
      auto loc = location::parse(jb.at("location").get<std::string>());
      if (!loc || b.addr + b.length < b.addr) return fail(te_errc::metadata_error);
      b.where = *loc;
      const auto& jr = jb.at("rkeys");
      if (!jr.is_array()) return fail(te_errc::metadata_error);
      b.rkeys.clear();
      for (const auto& per_chunk : jr) {
        auto keys = json_ints<std::uint32_t>(per_chunk);
        if (!keys) return fail(te_errc::metadata_error);
        b.rkeys.push_back(std::move(*keys));
      }
      const std::uint64_t chunks = b.chunk ? (b.length + b.chunk - 1) / b.chunk : 1;
      if (b.rkeys.size() != ri.nics.size()) return fail(te_errc::metadata_error);
      for (const auto& k : b.rkeys)
        if (k.size() != chunks) return fail(te_errc::metadata_error);
      ri.buffers.push_back(std::move(b));
    }
    std::sort(ri.buffers.begin(), ri.buffers.end(), [](auto& a, auto& b) { return a.addr < b.addr; });
    return ri;
  } catch (const nlohmann::json::exception&) {
    return fail(te_errc::metadata_error);
  }
}

// A registered buffer as this transport sees it: its memory regions per NIC.
struct local_region {
  std::uint64_t addr = 0, length = 0, chunk = 0;
  location where;
  bool remote_accessible = true;
  std::vector<std::vector<mr_handle>> mrs;  // [nic][chunk]
  region_grid grid() const noexcept { return region_grid{addr, addr + length, chunk}; }
};

struct endpoint {
  std::size_t home = 0;
  int local_nic = 0;
  int remote_nic = 0;
  endpoint_fsm fsm;  // home reactor only
  std::atomic<bool> closed{false};  // evicted: read by endpoint_for on any thread
  coro::async_mutex connect_mu;
  std::vector<std::shared_ptr<qp_rec>> qps;
  std::size_t next_qp = 0;
};

struct rdma_peer_state final : transport_peer_state {
  std::mutex mu;
  // The parsed RDMA part of the descriptor, and the descriptor it came from.
  std::shared_ptr<const segment_desc> parsed_from;
  std::shared_ptr<const remote_info> info;
  std::map<std::pair<int, int>, std::shared_ptr<endpoint>> eps;
  std::map<std::pair<int, int>, rail_health> health;
};

// Everything one request needs, shared by its slice groups.
struct request_ctx {
  rdma_peer_state* st = nullptr;
  peer_info peer;
  std::shared_ptr<const remote_info> info;
  std::shared_ptr<const local_region> local;
  const remote_buffer* remote = nullptr;
  transfer_request req;
  std::vector<std::pair<int, int>> rails;  // preference order; the first `striped` are striped over
  std::size_t striped = 1;
};

// The first byte of a control message: a queue-pair handshake, or a request for our current RDMA
// descriptor part.
constexpr char tag_handshake = 'H';
constexpr char tag_describe = 'D';

// GPU memory as a dma-buf: the CUDA driver exports the range as an fd that the NIC registers
// (ibv_reg_dmabuf_mr), with no peer-memory kernel module. The driver is loaded at run time, so the
// build needs no CUDA driver library; where it is missing the range is registered as ordinary memory
// (which works with nvidia-peermem). The fd covers whole pages; the MR keeps its own reference.
struct dmabuf_range {
  int fd = -1;
  std::uint64_t offset = 0;  // of the range within the exported pages
};
std::optional<dmabuf_range> export_gpu_dmabuf(std::uint64_t addr, std::uint64_t len) {
#if YUTU_HAS_CUDA
  using get_handle_fn = int (*)(void* handle, unsigned long long dptr, std::size_t size, int type,
                                unsigned long long flags);
  static const get_handle_fn fn = [] {
    void* h = ::dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    return h ? reinterpret_cast<get_handle_fn>(::dlsym(h, "cuMemGetHandleForAddressRange")) : nullptr;
  }();
  if (!fn) return std::nullopt;
  const std::uint64_t page = static_cast<std::uint64_t>(::sysconf(_SC_PAGESIZE));
  const std::uint64_t base = addr & ~(page - 1);
  const std::uint64_t end = (addr + len + page - 1) & ~(page - 1);
  int fd = -1;
  constexpr int dma_buf_fd = 1;  // CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD
  if (fn(&fd, base, end - base, dma_buf_fd, 0) != 0 || fd < 0) return std::nullopt;
  return dmabuf_range{fd, addr - base};
#else
  (void)addr;
  (void)len;
  return std::nullopt;
#endif
}

bool retryable(wc_status s) noexcept {
  // Deterministic failures (a bad key, a bad length) would fail on every rail.
  return s != wc_status::rem_access_err && s != wc_status::loc_prot_err && s != wc_status::loc_len_err;
}

class rdma_transport final : public transport {
 public:
  explicit rdma_transport(transport_host& host) : transport(host), opt_(host.config().rdma) { init(); }
  ~rdma_transport() override;

  std::string_view name() const noexcept override { return "rdma"; }
  bool usable() const noexcept override { return !nics_.empty(); }
  result<void> on_register(const registered_buffer& b) override;
  void on_unregister(const registered_buffer& b) noexcept override;
  void describe(segment_desc& d) const override;
  std::unique_ptr<transport_peer_state> make_peer_state(const peer_info&) override {
    return std::make_unique<rdma_peer_state>();
  }
  bool can_serve(const peer_info& peer, const transfer_request& r) const override;
  task<std::error_code> execute(const peer_info& peer, const transfer_request& r) override;
  void abort(const peer_info& peer) noexcept override;
  void close_peer(const peer_info& peer) noexcept override { abort(peer); }
  result<std::string> on_peer_request(std::string_view body) override;
  void shutdown() noexcept override { stop_.request_stop(); }

  // --- used by cq_state ---
  verbs& v() noexcept { return *verbs_; }
  void destroy_qp(queue_pair* qp) noexcept {
    {
      std::lock_guard lk(live_mu_);
      if (!live_qps_.erase(qp)) return;
    }
    verbs_->destroy_qp(qp);
  }

 private:
  void init();
  task<void> cq_loop(cq_state* c);
  std::shared_ptr<const remote_info> remote_of(const peer_info& peer) const;
  std::shared_ptr<const local_region> local_of(std::uint64_t addr, std::uint64_t len) const;
  std::shared_ptr<endpoint> endpoint_for(const request_ctx& c, std::pair<int, int> rail);
  task<std::error_code> connect(const request_ctx& c, endpoint& ep);
  task<std::error_code> run_group(std::shared_ptr<request_ctx> c, std::size_t preferred, std::vector<slice> sl);
  task<std::error_code> post_on_rail(std::shared_ptr<request_ctx> c, std::size_t rail, const std::vector<slice>& sl);
  // Moves an endpoint's QPs to error (flushing what they owe) and hands them to their CQ to destroy
  // once drained. Home reactor only.
  void retire(endpoint& ep) noexcept;
  void retire_qps(endpoint& ep) noexcept;
  result<queue_pair*> new_qp(nic& n, cq_state& c);
  std::uint32_t send_depth(const nic& n) const noexcept {
    return std::min<std::uint32_t>(opt_.max_send_wr, n.dev.max_qp_wr > 0 ? static_cast<std::uint32_t>(n.dev.max_qp_wr) : 256u);
  }
  qp_local local_qp_attrs(const nic& n, std::uint32_t psn) const;

  rdma_options opt_;
  std::shared_ptr<verbs> verbs_;
  std::vector<std::unique_ptr<nic>> nics_;
  std::vector<std::string> nic_names_;
  priority_matrix matrix_;
  std::stop_source stop_;
  std::mt19937 psn_rng_{std::random_device{}()};
  std::mutex psn_mu_;

  mutable std::shared_mutex regs_mu_;
  std::map<std::uint64_t, std::shared_ptr<local_region>> regs_;

  std::mutex live_mu_;
  std::unordered_set<queue_pair*> live_qps_;

  // Initiator endpoints in least-recently-created order, for the cap.
  std::mutex lru_mu_;
  std::list<std::weak_ptr<endpoint>> lru_;

  // Target side: the queue pairs peers connected to us, by (peer segment, its NIC, our NIC).
  struct passive {
    std::uint64_t incarnation = 0;
    std::vector<queue_pair*> qps;
  };
  std::mutex passive_mu_;
  std::map<std::tuple<std::string, std::string, std::string>, passive> passive_;
  std::list<std::tuple<std::string, std::string, std::string>> passive_order_;
};

// Runs `fn` on reactor `r` from any thread (control path).
template <class Fn>
void post_to(io::reactor& r, Fn fn) {
  struct item : coro::work_item {
    Fn fn;
    explicit item(Fn f) : fn(std::move(f)) {}
  };
  auto* it = new item(std::move(fn));
  it->run = [](coro::work_item* w) noexcept {
    auto* self = static_cast<item*>(w);
    self->fn();
    delete self;
  };
  r.post(it);
}

// --- completion queues ---

bool cq_state::poll() noexcept {
  if (outstanding == 0 && retired.empty()) return false;
  std::array<work_completion, 32> wcs;
  bool any = false;
  for (;;) {
    int k = owner->v().poll_cq(cq, wcs);
    if (k <= 0) break;
    any = true;
    for (int i = 0; i < k; ++i) handle(wcs[static_cast<std::size_t>(i)]);
    if (k < static_cast<int>(wcs.size())) break;
  }
  reap_retired();
  return any;
}

void cq_state::handle(const work_completion& wc) noexcept {
  const bool last = wc.wr_id & 1u;
  auto* g = reinterpret_cast<post_group*>(wc.wr_id & ~std::uint64_t{1});
  if (wc.status != wc_status::success && g->status == wc_status::success) {
    g->status = wc.status;
    g->vendor_err = wc.vendor_err;
  }
  if (!last) return;
  auto rec = g->qp;
  auto it = rec->inflight.find(g);
  if (it == rec->inflight.end()) return;
  std::shared_ptr<post_group> own = std::move(it->second);
  rec->inflight.erase(it);
  outstanding -= g->n;
  rec->credits->release(g->n);
  credits->release(g->n);
  if (g->status != wc_status::success) rec->broken = true;
  g->done.set();
}

void cq_state::reap_retired() noexcept {
  for (std::size_t i = 0; i < retired.size();) {
    if (retired[i]->inflight.empty()) {
      owner->destroy_qp(retired[i]->qp);
      retired[i] = std::move(retired.back());
      retired.pop_back();
    } else {
      ++i;
    }
  }
}

task<void> rdma_transport::cq_loop(cq_state* c) {
  io::reactor::current()->add_source(c);
  const int fd = verbs_->channel_fd(c->channel);
  while (!stop_.stop_requested()) {
    (void)verbs_->req_notify_cq(c->cq);
    // A completion that arrived before the notification was armed raises no event: drain once more.
    c->poll();
    auto r = co_await io::poll(fd, POLLIN);
    if (!r) break;  // stopped
    for (;;) {
      auto e = verbs_->get_cq_event(c->channel);
      if (!e) break;
      verbs_->ack_cq_events(*e, 1);
    }
    c->poll();
  }
  io::reactor::current()->remove_source(c);
}

// --- set-up and teardown ---

void rdma_transport::init() {
  // Options set in code skip from_json's checks: keep them in the range the data path assumes.
  if (opt_.slice_size == 0 || opt_.slice_size > (1ull << 30)) opt_.slice_size = 64u << 10;
  opt_.qps_per_endpoint = std::clamp<std::size_t>(opt_.qps_per_endpoint, 1, handshake_msg::max_qps);
  opt_.max_send_wr = std::max<std::uint32_t>(opt_.max_send_wr, 1);
  opt_.wrs_per_post = std::max<std::size_t>(opt_.wrs_per_post, 1);
  opt_.max_endpoints = std::max<std::size_t>(opt_.max_endpoints, 1);
  if (opt_.verbs) {
    verbs_ = opt_.verbs;
  } else {
    auto v = make_ibverbs();
    if (!v) {
      log::warn("engine {}: rdma: no verbs library ({}); the transport is inactive", host_.local_name(),
                v.error().message());
      return;
    }
    verbs_ = std::move(*v);
  }
  auto names = verbs_->device_names();
  if (!names) {
    log::warn("engine {}: rdma: listing devices failed: {}", host_.local_name(), names.error().message());
    return;
  }
  const std::optional<gid> bound = gid_of_address(host_.config().listen_host);
  std::vector<pci_device> topo;
  for (const auto& dn : *names) {
    if (!opt_.devices.empty() && std::find(opt_.devices.begin(), opt_.devices.end(), dn) == opt_.devices.end())
      continue;
    auto n = std::make_unique<nic>();
    n->name = dn;
    auto ctx = verbs_->open_device(dn);
    if (!ctx) {
      log::warn("engine {}: rdma: cannot open {}: {}", host_.local_name(), dn, ctx.error().message());
      continue;
    }
    n->ctx = *ctx;
    auto da = verbs_->query_device(n->ctx);
    auto pa = verbs_->query_port(n->ctx, opt_.port);
    if (!da || !pa || !pa->active) {
      log::warn("engine {}: rdma: {} port {} is not active; skipped", host_.local_name(), dn, opt_.port);
      verbs_->close_device(n->ctx);
      continue;
    }
    n->dev = *da;
    n->port = *pa;
    std::vector<gid_entry> table;
    for (int i = 0; i < pa->gid_table_len; ++i)
      if (auto g = verbs_->query_gid(n->ctx, opt_.port, i)) table.push_back(*g);
    auto gi = choose_gid(table, pa->link, opt_.gid_index >= 0 ? std::optional<int>(opt_.gid_index) : std::nullopt,
                         bound);
    if (!gi) {
      log::warn("engine {}: rdma: {} has no usable GID; skipped", host_.local_name(), dn);
      verbs_->close_device(n->ctx);
      continue;
    }
    n->gid_index = *gi;
    for (const auto& e : table)
      if (e.index == *gi) n->gid_value = e.value;
    auto pd = verbs_->alloc_pd(n->ctx);
    if (!pd) {
      verbs_->close_device(n->ctx);
      continue;
    }
    n->pd = *pd;
    bool ok_all = true;
    for (std::size_t r = 0; r < host_.pool().size(); ++r) {
      auto c = std::make_unique<cq_state>();
      c->owner = this;
      c->n = n.get();
      c->reactor_index = r;
      c->busy_poll = opt_.busy_poll;
      c->depth = std::min(da->max_cqe > 0 ? da->max_cqe : 4096, 16384);
      c->credits = std::make_unique<coro::async_semaphore>(static_cast<std::size_t>(c->depth));
      auto ch = verbs_->create_comp_channel(n->ctx);
      if (!ch) {
        ok_all = false;
        break;
      }
      c->channel = *ch;
      auto cq = verbs_->create_cq(n->ctx, c->depth, c->channel);
      if (!cq) {
        verbs_->destroy_comp_channel(c->channel);
        ok_all = false;
        break;
      }
      c->cq = *cq;
      n->cqs.push_back(std::move(c));
    }
    if (!ok_all) {
      for (auto& c : n->cqs) {
        verbs_->destroy_cq(c->cq);
        verbs_->destroy_comp_channel(c->channel);
      }
      verbs_->dealloc_pd(n->pd);
      verbs_->close_device(n->ctx);
      continue;
    }
    auto t = read_nic(opt_.sysfs_root, dn);
    topo.push_back(t ? *t : pci_device{dn, -1, {}});
    log::info("engine {}: rdma: {} port {} ({}, lid {}, gid[{}] {}, mtu {})", host_.local_name(), dn, opt_.port,
              pa->link == link_layer::ethernet ? "RoCE" : "InfiniBand", pa->lid, n->gid_index,
              to_string(n->gid_value), mtu_bytes(pa->active_mtu));
    nic_names_.push_back(dn);
    nics_.push_back(std::move(n));
  }
  if (nics_.empty()) {
    log::info("engine {}: rdma: no usable device; the transport is inactive", host_.local_name());
    return;
  }
  if (!opt_.priority_matrix.empty()) {
    auto m = parse_priority_matrix(opt_.priority_matrix, nic_names_);
    if (m)
      matrix_ = std::move(*m);
    else
      log::warn("engine {}: rdma: the priority matrix override is invalid; using the detected one",
                host_.local_name());
  }
  if (matrix_.empty())
    matrix_ = build_priority_matrix(topo, read_gpus(opt_.sysfs_root), numa_node_count(opt_.sysfs_root));
  for (auto& n : nics_)
    for (auto& c : n->cqs) host_.spawn_on(c->reactor_index, cq_loop(c.get()).with_stop_token(stop_.get_token()));
}

rdma_transport::~rdma_transport() {
  // The reactors have stopped: nothing runs any more, every completion owed is moot.
  stop_.request_stop();
  if (!verbs_) return;
  {
    std::lock_guard lk(live_mu_);
    for (auto* q : live_qps_) verbs_->destroy_qp(q);
    live_qps_.clear();
  }
  for (auto& [_, r] : regs_)
    for (auto& per_nic : r->mrs)
      for (auto& m : per_nic) verbs_->dereg_mr(m.mr);
  regs_.clear();
  for (auto& n : nics_) {
    for (auto& c : n->cqs) {
      // Acknowledge any event still queued on the channel, or destroying the CQ would wait for it.
      while (auto e = verbs_->get_cq_event(c->channel)) verbs_->ack_cq_events(*e, 1);
      verbs_->destroy_cq(c->cq);
      verbs_->destroy_comp_channel(c->channel);
    }
    verbs_->dealloc_pd(n->pd);
    verbs_->close_device(n->ctx);
  }
}

// --- registration ---

result<void> rdma_transport::on_register(const registered_buffer& b) {
  if (nics_.empty()) return ok();
  auto r = std::make_shared<local_region>();
  r->addr = b.addr;
  r->length = b.length;
  r->where = b.where;
  r->remote_accessible = b.remote_accessible;
  std::uint64_t max_mr = opt_.max_mr_size;
  for (auto& n : nics_)
    if (n->dev.max_mr_size && (!max_mr || n->dev.max_mr_size < max_mr)) max_mr = n->dev.max_mr_size;
  r->chunk = (max_mr && max_mr < b.length) ? max_mr : 0;
  const std::uint64_t chunks = r->chunk ? (b.length + r->chunk - 1) / r->chunk : 1;
  const unsigned acc = access_local_write | (b.remote_accessible ? (access_remote_read | access_remote_write) : 0u);
  std::error_code failed;
  for (auto& n : nics_) {
    auto& per = r->mrs.emplace_back();
    for (std::uint64_t k = 0; k < chunks && !failed; ++k) {
      const std::uint64_t off = r->chunk * k;
      const std::uint64_t len = r->chunk ? std::min(r->chunk, b.length - off) : b.length;
      result<mr_handle> m = fail(std::make_error_code(std::errc::not_supported));
      if (b.where.type == location::kind::cuda) {
        if (auto db = export_gpu_dmabuf(b.addr + off, len)) {
          m = verbs_->reg_dmabuf_mr(n->pd, db->offset, len, b.addr + off, db->fd, acc);
          ::close(db->fd);
        }
      }
      if (!m) m = verbs_->reg_mr(n->pd, reinterpret_cast<void*>(b.addr + off), len, acc);
      if (!m) {
        log::warn("engine {}: rdma: registering {} bytes at {:#x} on {} failed: {}", host_.local_name(), len,
                  b.addr + off, n->name, m.error().message());
        failed = m.error();
        break;
      }
      per.push_back(*m);
    }
    if (failed) break;
  }
  if (failed) {
    for (auto& per : r->mrs)
      for (auto& m : per) verbs_->dereg_mr(m.mr);
    return fail(failed);
  }
  std::unique_lock lk(regs_mu_);
  regs_[b.addr] = std::move(r);
  return ok();
}

void rdma_transport::on_unregister(const registered_buffer& b) noexcept {
  std::shared_ptr<local_region> r;
  {
    std::unique_lock lk(regs_mu_);
    auto it = regs_.find(b.addr);
    if (it == regs_.end()) return;
    r = std::move(it->second);
    regs_.erase(it);
  }
  for (auto& per : r->mrs)
    for (auto& m : per) verbs_->dereg_mr(m.mr);
}

void rdma_transport::describe(segment_desc& d) const {
  if (nics_.empty()) return;
  nlohmann::json j;
  auto& jn = j["nics"] = nlohmann::json::array();
  for (const auto& n : nics_)
    jn.push_back({{"name", n->name},
                  {"lid", n->port.lid},
                  {"gid", std::vector<std::uint8_t>(n->gid_value.begin(), n->gid_value.end())},
                  {"mtu", static_cast<int>(n->port.active_mtu)},
                  {"roce", n->port.link == link_layer::ethernet}});
  j["matrix"] = nlohmann::json::parse(to_json(matrix_));
  auto& jb = j["buffers"] = nlohmann::json::array();
  std::shared_lock lk(regs_mu_);
  for (const auto& [addr, r] : regs_) {
    if (!r->remote_accessible) continue;
    std::vector<std::vector<std::uint32_t>> rkeys;
    for (const auto& per : r->mrs) {
      auto& k = rkeys.emplace_back();
      for (const auto& m : per) k.push_back(m.rkey);
    }
    jb.push_back({{"addr", r->addr},
                  {"length", r->length},
                  {"chunk", r->chunk},
                  {"location", r->where.to_string()},
                  {"rkeys", std::move(rkeys)}});
  }
  d.extensions["rdma"] = j.dump();
}

// --- peers ---

std::shared_ptr<const remote_info> rdma_transport::remote_of(const peer_info& peer) const {
  auto* st = static_cast<rdma_peer_state*>(peer.state);
  if (!st || !peer.desc) return nullptr;
  std::lock_guard lk(st->mu);
  if (st->parsed_from != peer.desc) {
    st->parsed_from = peer.desc;
    st->info.reset();
    if (auto it = peer.desc->extensions.find("rdma"); it != peer.desc->extensions.end()) {
      auto ri = parse_remote(it->second);
      if (ri)
        st->info = std::make_shared<const remote_info>(std::move(*ri));
      else
        log::warn("engine {}: rdma: {} published an unreadable RDMA descriptor", host_.local_name(), *peer.name);
    }
  }
  return st->info;
}

std::shared_ptr<const local_region> rdma_transport::local_of(std::uint64_t addr, std::uint64_t len) const {
  std::shared_lock lk(regs_mu_);
  auto it = regs_.upper_bound(addr);
  if (it == regs_.begin()) return nullptr;
  --it;
  const auto& r = *it->second;
  if (addr - r.addr > r.length || len > r.length - (addr - r.addr)) return nullptr;
  return it->second;
}

bool rdma_transport::can_serve(const peer_info& peer, const transfer_request& r) const {
  if (nics_.empty() || !peer.desc->speaks("rdma")) return false;
  // The target range need not be in the RDMA part yet: a registration the peer has not published is
  // looked up from the peer itself by execute().
  auto info = remote_of(peer);
  if (!info || info->nics.empty()) return false;
  return local_of(reinterpret_cast<std::uint64_t>(r.source), r.length) != nullptr;
}

qp_local rdma_transport::local_qp_attrs(const nic& n, std::uint32_t psn) const {
  qp_local l;
  l.port = opt_.port;
  l.gid_index = n.gid_index;
  l.psn = psn;
  l.max_rd_atomic = static_cast<std::uint8_t>(std::clamp(n.dev.max_qp_rd_atom, 1, 16));
  return l;
}

result<queue_pair*> rdma_transport::new_qp(nic& n, cq_state& c) {
  qp_caps caps;
  caps.max_send_wr = send_depth(n);
  auto q = verbs_->create_rc_qp(n.pd, c.cq, c.cq, caps);
  if (!q) return q;
  std::lock_guard lk(live_mu_);
  live_qps_.insert(*q);
  return q;
}

std::shared_ptr<endpoint> rdma_transport::endpoint_for(const request_ctx& c, std::pair<int, int> rail) {
  std::shared_ptr<endpoint> ep;
  {
    std::lock_guard lk(c.st->mu);
    auto& slot = c.st->eps[rail];
    if (slot && !slot->closed.load(std::memory_order_acquire)) return slot;
    slot = std::make_shared<endpoint>();
    slot->home = (c.peer.id * 7 + static_cast<std::size_t>(rail.first) * 3 + static_cast<std::size_t>(rail.second)) %
                 host_.pool().size();
    slot->local_nic = rail.first;
    slot->remote_nic = rail.second;
    ep = slot;
  }
  // The cap: the oldest endpoints beyond it are closed on their home reactors.
  std::vector<std::shared_ptr<endpoint>> evict;
  {
    std::lock_guard lk(lru_mu_);
    lru_.push_back(ep);
    for (auto it = lru_.begin(); it != lru_.end();)
      it = it->expired() ? lru_.erase(it) : std::next(it);
    while (lru_.size() > opt_.max_endpoints) {
      if (auto old = lru_.front().lock()) evict.push_back(std::move(old));
      lru_.pop_front();
    }
  }
  for (auto& old : evict)
    post_to(host_.pool().at(old->home), [this, old] {
      retire(*old);
      old->fsm.close();
      old->closed.store(true, std::memory_order_release);
    });
  return ep;
}

void rdma_transport::retire(endpoint& ep) noexcept {
  retire_qps(ep);
  (void)ep.fsm.fail();
}

void rdma_transport::retire_qps(endpoint& ep) noexcept {
  for (auto& q : ep.qps) {
    if (!q->broken) (void)verbs_->modify_to_error(q->qp);
    q->broken = true;
    q->retired = true;
    q->cq->retired.push_back(q);
    q->cq->reap_retired();
  }
  ep.qps.clear();
}

task<std::error_code> rdma_transport::connect(const request_ctx& c, endpoint& ep) {
  if (ep.fsm.usable()) co_return std::error_code{};
  auto guard = co_await ep.connect_mu.lock();
  if (!guard) co_return guard.error();
  if (ep.fsm.usable()) co_return std::error_code{};
  if (!ep.fsm.begin_connect()) co_return make_error_code(te_errc::endpoint_error);
  retire_qps(ep);  // a failed generation's queue pairs, flushed and destroyed once drained
  nic& n = *nics_[static_cast<std::size_t>(ep.local_nic)];
  cq_state& cq = *n.cqs[ep.home];
  const remote_nic& rn = c.info->nics[static_cast<std::size_t>(ep.remote_nic)];
  handshake_msg req;
  req.src_incarnation = host_.incarnation();
  req.dst_incarnation = c.peer.desc->incarnation;
  req.src_segment = host_.local_name();
  req.src_nic = n.name;
  req.dst_nic = rn.name;
  req.lid = n.port.lid;
  req.gid_value = n.gid_value;
  req.path_mtu = n.port.active_mtu;
  req.use_gid = n.port.link == link_layer::ethernet;
  std::vector<std::shared_ptr<qp_rec>> fresh;
  auto undo = [&] {
    for (auto& q : fresh) destroy_qp(q->qp);
    (void)ep.fsm.fail();
  };
  for (std::size_t i = 0; i < std::max<std::size_t>(opt_.qps_per_endpoint, 1); ++i) {
    auto q = new_qp(n, cq);
    if (!q) {
      undo();
      co_return make_error_code(te_errc::endpoint_error);
    }
    auto rec = std::make_shared<qp_rec>();
    rec->qp = *q;
    rec->cq = &cq;
    rec->credits = std::make_unique<coro::async_semaphore>(send_depth(n));
    fresh.push_back(rec);
    std::uint32_t psn;
    {
      std::lock_guard lk(psn_mu_);
      psn = psn_rng_() & 0xffffff;
    }
    if (auto r = verbs_->modify_to_init(*q, local_qp_attrs(n, psn)); !r) {
      undo();
      co_return make_error_code(te_errc::endpoint_error);
    }
    req.qps.push_back({verbs_->qp_num(*q), psn});
  }
  auto resp = co_await host_.peer_request(c.peer, "rdma", std::string(1, tag_handshake) + encode(req));
  if (!resp) {
    log::info("engine {}: rdma: handshake {} -> {}/{} failed: {}", host_.local_name(), n.name, *c.peer.name, rn.name,
              resp.error().message());
    undo();
    co_return resp.error();
  }
  auto m = decode_handshake(*resp);
  if (!m || m->qps.size() != fresh.size() || m->dst_nic != rn.name) {
    undo();
    co_return make_error_code(te_errc::handshake_invalid_message);
  }
  const mtu path = negotiate_mtu(n.port.active_mtu, m->path_mtu);
  for (std::size_t i = 0; i < fresh.size(); ++i) {
    qp_local l = local_qp_attrs(n, req.qps[i].psn);
    qp_remote r{m->qps[i].qp_num, m->qps[i].psn, m->lid, m->gid_value, path, m->use_gid};
    if (!verbs_->modify_to_rtr(fresh[i]->qp, l, r) || !verbs_->modify_to_rts(fresh[i]->qp, l)) {
      undo();
      co_return make_error_code(te_errc::endpoint_error);
    }
  }
  ep.qps = std::move(fresh);
  if (!ep.fsm.connected()) {
    // Aborted (a deadline, the peer closed) while the handshake ran.
    retire_qps(ep);
    co_return make_error_code(te_errc::endpoint_error);
  }
  log::debug("engine {}: rdma: endpoint {} -> {}/{} up (generation {}, mtu {})", host_.local_name(), n.name,
             *c.peer.name, rn.name, ep.fsm.generation(), mtu_bytes(path));
  co_return std::error_code{};
}

result<std::string> rdma_transport::on_peer_request(std::string_view msg) {
  if (msg.empty()) return fail(te_errc::handshake_invalid_message);
  if (msg[0] == tag_describe) {
    // A peer missed a buffer in our published descriptor (the publication lags a registration).
    segment_desc d;
    describe(d);
    auto it = d.extensions.find("rdma");
    if (it == d.extensions.end()) return fail(te_errc::no_transport);
    return it->second;
  }
  if (msg[0] != tag_handshake) return fail(te_errc::handshake_invalid_message);
  auto m = decode_handshake(msg.substr(1));
  if (!m) return fail(m.error());
  if (m->dst_incarnation != host_.incarnation()) return fail(te_errc::stale_segment);
  int ni = -1;
  for (std::size_t i = 0; i < nics_.size(); ++i)
    if (nics_[i]->name == m->dst_nic) ni = static_cast<int>(i);
  if (ni < 0 || m->qps.empty()) return fail(te_errc::device_not_found);
  nic& n = *nics_[static_cast<std::size_t>(ni)];
  const mtu path = negotiate_mtu(n.port.active_mtu, m->path_mtu);
  handshake_msg resp;
  resp.src_incarnation = host_.incarnation();
  resp.dst_incarnation = m->src_incarnation;
  resp.src_segment = host_.local_name();
  resp.src_nic = n.name;
  resp.dst_nic = n.name;
  resp.lid = n.port.lid;
  resp.gid_value = n.gid_value;
  resp.path_mtu = n.port.active_mtu;
  resp.use_gid = n.port.link == link_layer::ethernet;
  passive p;
  p.incarnation = m->src_incarnation;
  auto undo = [&] {
    for (auto* q : p.qps) destroy_qp(q);
  };
  for (const auto& rq : m->qps) {
    // The target posts nothing: its QPs only answer, so they share reactor 0's CQ.
    auto q = new_qp(n, *n.cqs[0]);
    if (!q) {
      undo();
      return fail(te_errc::endpoint_error);
    }
    p.qps.push_back(*q);
    std::uint32_t psn;
    {
      std::lock_guard lk(psn_mu_);
      psn = psn_rng_() & 0xffffff;
    }
    qp_local l = local_qp_attrs(n, psn);
    qp_remote r{rq.qp_num, rq.psn, m->lid, m->gid_value, path, m->use_gid};
    if (!verbs_->modify_to_init(*q, l) || !verbs_->modify_to_rtr(*q, l, r) || !verbs_->modify_to_rts(*q, l)) {
      undo();
      return fail(te_errc::endpoint_error);
    }
    resp.qps.push_back({verbs_->qp_num(*q), psn});
  }
  // One set per (peer, its NIC, our NIC): a new handshake replaces the old set (the initiator
  // recreated its side); beyond the cap the oldest set goes.
  std::vector<queue_pair*> drop;
  {
    std::lock_guard lk(passive_mu_);
    auto key = std::make_tuple(m->src_segment, m->src_nic, m->dst_nic);
    auto it = passive_.find(key);
    if (it != passive_.end()) {
      drop = std::move(it->second.qps);
      it->second = std::move(p);
    } else {
      passive_.emplace(key, std::move(p));
      passive_order_.push_back(key);
    }
    while (passive_.size() > opt_.max_endpoints && !passive_order_.empty()) {
      auto old = passive_.find(passive_order_.front());
      passive_order_.pop_front();
      if (old == passive_.end()) continue;
      for (auto* q : old->second.qps) drop.push_back(q);
      passive_.erase(old);
    }
  }
  for (auto* q : drop) destroy_qp(q);
  return encode(resp);
}

// --- the data path ---

task<std::error_code> rdma_transport::execute(const peer_info& peer, const transfer_request& r) {
  auto c = std::make_shared<request_ctx>();
  c->st = static_cast<rdma_peer_state*>(peer.state);
  c->peer = peer;
  c->info = remote_of(peer);
  c->req = r;
  c->local = local_of(reinterpret_cast<std::uint64_t>(r.source), r.length);
  if (!c->info || !c->local) co_return make_error_code(te_errc::no_transport);
  c->remote = c->info->find(r.target_offset, r.length);
  if (!c->remote) {
    // Our copy may predate the registration (descriptor publication is asynchronous): ask the peer.
    auto fresh = co_await host_.peer_request(peer, "rdma", std::string(1, tag_describe));
    if (!fresh) co_return fresh.error();
    auto ri = parse_remote(*fresh);
    if (!ri) co_return make_error_code(te_errc::handshake_invalid_message);
    auto shared = std::make_shared<const remote_info>(std::move(*ri));
    {
      std::lock_guard lk(c->st->mu);
      if (c->st->parsed_from == peer.desc) c->st->info = shared;
    }
    c->info = std::move(shared);
    c->remote = c->info->find(r.target_offset, r.length);
    if (!c->remote) co_return make_error_code(te_errc::address_not_registered);
  }

  // Rails: the NICs both priority matrices prefer, paired up for striping, then every other pair.
  std::vector<std::string> remote_names;
  for (const auto& n : c->info->nics) remote_names.push_back(n.name);
  auto lt = tiers_for(matrix_, c->local->where, nic_names_);
  auto rt = tiers_for(c->info->matrix, c->remote->where, remote_names);
  auto lidx = [&](const std::string& s) {
    for (std::size_t i = 0; i < nic_names_.size(); ++i)
      if (nic_names_[i] == s) return static_cast<int>(i);
    return -1;
  };
  std::vector<int> lp, rp;
  for (const auto& s : lt.preferred)
    if (lidx(s) >= 0) lp.push_back(lidx(s));
  for (const auto& s : rt.preferred)
    if (c->info->nic_index(s) >= 0) rp.push_back(c->info->nic_index(s));
  if (lp.empty())
    for (std::size_t i = 0; i < nics_.size(); ++i) lp.push_back(static_cast<int>(i));
  if (rp.empty())
    for (std::size_t i = 0; i < c->info->nics.size(); ++i) rp.push_back(static_cast<int>(i));
  for (std::size_t i = 0; i < std::max(lp.size(), rp.size()); ++i) c->rails.emplace_back(lp[i % lp.size()], rp[i % rp.size()]);
  c->striped = c->rails.size();
  for (std::size_t a = 0; a < nics_.size(); ++a)
    for (std::size_t b = 0; b < c->info->nics.size(); ++b) {
      std::pair<int, int> p{static_cast<int>(a), static_cast<int>(b)};
      if (std::find(c->rails.begin(), c->rails.end(), p) == c->rails.end()) c->rails.push_back(p);
    }

  const std::uint64_t local_addr = reinterpret_cast<std::uint64_t>(r.source);
  const region_grid rgrid{c->remote->addr, c->remote->addr + c->remote->length, c->remote->chunk};
  auto slices = plan_slices(r.length, opt_.slice_size, local_addr, c->local->grid(), r.target_offset, rgrid);
  std::uint32_t depth = opt_.max_send_wr;
  for (const auto& n : nics_) depth = std::min(depth, send_depth(*n));
  const std::size_t per = std::max<std::size_t>(1, std::min<std::size_t>(opt_.wrs_per_post, depth));
  const std::size_t groups = (slices.size() + per - 1) / per;
  static std::atomic<std::size_t> stripe{0};
  const std::size_t first = stripe.fetch_add(1, std::memory_order_relaxed);
  if (groups == 1) co_return co_await run_group(c, first % c->striped, std::move(slices));
  std::vector<task<std::error_code>> parts;
  parts.reserve(groups);
  for (std::size_t g = 0; g < groups; ++g) {
    std::vector<slice> sl(slices.begin() + static_cast<std::ptrdiff_t>(g * per),
                          slices.begin() + static_cast<std::ptrdiff_t>(std::min(slices.size(), (g + 1) * per)));
    parts.push_back(run_group(c, (first + g) % c->striped, std::move(sl)));
  }
  auto results = co_await coro::when_all(std::move(parts));
  for (auto& e : results)
    if (e) co_return e;
  co_return std::error_code{};
}

task<std::error_code> rdma_transport::run_group(std::shared_ptr<request_ctx> c, std::size_t preferred,
                                                std::vector<slice> sl) {
  std::error_code last;
  for (int attempt = 0; attempt <= opt_.retry.max_retries; ++attempt) {
    std::optional<std::size_t> rail;
    {
      std::lock_guard lk(c->st->mu);
      std::vector<rail_health> h;
      h.reserve(c->rails.size());
      for (const auto& p : c->rails) h.push_back(c->st->health[p]);
      rail = pick_rail(h, preferred, attempt, clock_type::now());
    }
    if (!rail) break;
    auto ec = co_await post_on_rail(c, *rail, sl);
    const auto key = c->rails[*rail];
    if (!ec) {
      std::lock_guard lk(c->st->mu);
      c->st->health[key].on_success();
      co_return ec;
    }
    if (is_canceled(ec) || ec == te_errc::stale_segment) co_return ec;
    {
      std::lock_guard lk(c->st->mu);
      c->st->health[key].on_error(opt_.retry, clock_type::now());
    }
    last = ec;
    if (ec == te_errc::address_not_registered) co_return ec;
    log::info("engine {}: rdma: {} slices to {} on {}->{} failed ({}), attempt {}", host_.local_name(), sl.size(),
              *c->peer.name, nics_[static_cast<std::size_t>(key.first)]->name,
              c->info->nics[static_cast<std::size_t>(key.second)].name, ec.message(), attempt + 1);
  }
  log::warn("engine {}: rdma: giving up on {} slices to {}: {}", host_.local_name(), sl.size(), *c->peer.name,
            last ? last.message() : std::string("every rail is paused"));
  co_return make_error_code(te_errc::retries_exhausted);
}

task<result<void>> wait_group(std::shared_ptr<post_group> g) { co_return co_await g->done.wait(); }

task<std::error_code> rdma_transport::post_on_rail(std::shared_ptr<request_ctx> c, std::size_t rail,
                                                   const std::vector<slice>& sl) {
  auto ep = endpoint_for(*c, c->rails[rail]);
  for (int fresh = 0; fresh < 3; ++fresh) {
    io::reactor& home = host_.pool().at(ep->home);
    if (io::reactor::current() != &home) co_await home.schedule();
    // Evicted by the cap after we picked it (the flag is set on this thread): take the new one,
    // which is no failure of the rail.
    if (!ep->closed.load(std::memory_order_acquire)) break;
    ep = endpoint_for(*c, c->rails[rail]);
  }
  if (auto ec = co_await connect(*c, *ep)) co_return ec;
  if (ep->qps.empty()) co_return make_error_code(te_errc::endpoint_error);
  auto rec = ep->qps[ep->next_qp++ % ep->qps.size()];
  const std::size_t n = sl.size();
  if (auto a = co_await rec->credits->acquire(n); !a) co_return a.error();
  if (auto a = co_await rec->cq->credits->acquire(n); !a) {
    rec->credits->release(n);
    co_return a.error();
  }
  if (rec->broken) {
    rec->credits->release(n);
    rec->cq->credits->release(n);
    if (ep->qps.size() && std::find(ep->qps.begin(), ep->qps.end(), rec) != ep->qps.end()) retire(*ep);
    co_return make_error_code(te_errc::endpoint_error);
  }
  auto g = std::make_shared<post_group>();
  g->qp = rec;
  g->n = n;
  const auto li = static_cast<std::size_t>(ep->local_nic);
  const auto ri = static_cast<std::size_t>(ep->remote_nic);
  const std::uint64_t base = reinterpret_cast<std::uint64_t>(c->req.source);
  const region_grid lg = c->local->grid();
  const region_grid rg{c->remote->addr, c->remote->addr + c->remote->length, c->remote->chunk};
  std::vector<send_wr> wrs(n);
  for (std::size_t i = 0; i < n; ++i) {
    auto& w = wrs[i];
    w.op = c->req.op == opcode::write ? wr_opcode::rdma_write : wr_opcode::rdma_read;
    w.local_addr = base + sl[i].offset;
    w.length = static_cast<std::uint32_t>(sl[i].length);
    w.lkey = c->local->mrs[li][lg.index(w.local_addr)].lkey;
    w.remote_addr = c->req.target_offset + sl[i].offset;
    w.rkey = c->remote->rkeys[ri][rg.index(w.remote_addr)];
    w.signaled = i + 1 == n;
    w.wr_id = reinterpret_cast<std::uint64_t>(g.get()) | (w.signaled ? 1u : 0u);
  }
  rec->inflight.emplace(g.get(), g);
  rec->cq->outstanding += n;
  if (auto p = verbs_->post_send(rec->qp, wrs); !p) {
    rec->inflight.erase(g.get());
    rec->cq->outstanding -= n;
    rec->credits->release(n);
    rec->cq->credits->release(n);
    retire(*ep);
    co_return make_error_code(te_errc::endpoint_error);
  }
  auto w = co_await io::with_timeout(wait_group(g), opt_.op_timeout);
  if (!w) {
    // A deadline or a stop: flush the queue pair so nothing lands later, and let the next request
    // reconnect. The group stays owned by its queue pair until the flush completion arrives.
    if (std::find(ep->qps.begin(), ep->qps.end(), rec) != ep->qps.end()) retire(*ep);
    else if (!rec->broken) {
      (void)verbs_->modify_to_error(rec->qp);
      rec->broken = true;
    }
    co_return is_timeout(w.error()) ? make_error_code(te_errc::endpoint_error) : w.error();
  }
  if (g->status != wc_status::success) {
    log::info("engine {}: rdma: work completion error: {} (vendor {:#x})", host_.local_name(), to_string(g->status),
              g->vendor_err);
    if (std::find(ep->qps.begin(), ep->qps.end(), rec) != ep->qps.end()) retire(*ep);
    co_return make_error_code(retryable(g->status) ? te_errc::endpoint_error : te_errc::address_not_registered);
  }
  co_return std::error_code{};
}

void rdma_transport::abort(const peer_info& peer) noexcept {
  auto* st = static_cast<rdma_peer_state*>(peer.state);
  if (!st) return;
  std::vector<std::shared_ptr<endpoint>> eps;
  {
    std::lock_guard lk(st->mu);
    for (auto& [_, e] : st->eps) eps.push_back(e);
  }
  for (auto& e : eps) post_to(host_.pool().at(e->home), [this, e] { retire(*e); });
}

}  // namespace

std::unique_ptr<transport> make_rdma_transport(transport_host& host) {
  return std::make_unique<rdma_transport>(host);
}

}  // namespace yutu::transfer::detail
