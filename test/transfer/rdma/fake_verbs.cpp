// The software verbs double (see fake_verbs.hpp). One mutex guards the whole fabric: tests need
// correctness and determinism, not speed.
#include "fake_verbs.hpp"

#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "yutu/transfer/rdma/endpoint.hpp"

namespace yutu::test {
using namespace yutu::transfer::rdma;

struct fake_fabric::ctx {
  std::string device;
  int index = 0;
};
struct fake_fabric::pd {
  ctx* c = nullptr;
  std::set<mr*> mrs;
};
struct fake_fabric::mr {
  pd* p = nullptr;
  std::uint64_t addr = 0, length = 0;
  unsigned access = 0;
  std::uint32_t lkey = 0, rkey = 0;
};
struct fake_fabric::channel {
  int fd = -1;
  std::deque<cq*> events;
};
struct fake_fabric::cq {
  channel* ch = nullptr;
  int capacity = 0;
  bool armed = false;
  std::deque<work_completion> entries;
  unsigned unacked = 0;
};
struct fake_fabric::qp {
  pd* p = nullptr;
  cq* send_cq = nullptr;
  std::uint32_t num = 0;
  qp_state state = qp_state::reset;
  std::uint32_t remote_qpn = 0;
  gid remote_gid{};
  unsigned access = 0;
  std::uint32_t max_send_wr = 0;
  std::deque<send_wr> held;  // stalled work requests
};

namespace {
template <class T, class U>
T* as(U* p) {
  return reinterpret_cast<T*>(p);
}
gid device_gid(int index) {
  gid g{};
  g[10] = g[11] = 0xff;
  g[12] = 10;
  g[15] = static_cast<std::uint8_t>(index + 1);
  return g;
}
}  // namespace

fake_fabric::fake_fabric(std::vector<device_spec> devices) : specs_(std::move(devices)) {}
fake_fabric::~fake_fabric() = default;

void fake_fabric::fail_next(const std::string& device, int n, wc_status status) {
  std::lock_guard lk(mu_);
  fail_next_count_[device] = n;
  fail_next_status_[device] = status;
}
void fake_fabric::set_down(const std::string& device, bool down) {
  std::lock_guard lk(mu_);
  if (down)
    down_.insert(device);
  else
    down_.erase(device);
}
void fake_fabric::set_stalled(const std::string& device, bool stalled) {
  std::lock_guard lk(mu_);
  if (stalled)
    stalled_.insert(device);
  else
    stalled_.erase(device);
}
fake_fabric::stats fake_fabric::device_stats(const std::string& device) const {
  std::lock_guard lk(mu_);
  auto it = stats_.find(device);
  return it == stats_.end() ? stats{} : it->second;
}
std::size_t fake_fabric::live_objects() const {
  std::lock_guard lk(mu_);
  return live_.size();
}
std::size_t fake_fabric::live_qps() const {
  std::lock_guard lk(mu_);
  return qps_.size();
}
mtu fake_fabric::last_rtr_mtu() const {
  std::lock_guard lk(mu_);
  return last_mtu_;
}
std::uint64_t fake_fabric::qps_created() const {
  std::lock_guard lk(mu_);
  return qps_created_;
}

result<std::vector<std::string>> fake_fabric::device_names() {
  std::vector<std::string> out;
  for (const auto& s : specs_) out.push_back(s.name);
  return out;
}

result<context*> fake_fabric::open_device(const std::string& name) {
  std::lock_guard lk(mu_);
  for (std::size_t i = 0; i < specs_.size(); ++i)
    if (specs_[i].name == name) {
      auto* c = new ctx{name, static_cast<int>(i)};
      live_.insert(c);
      return as<context>(c);
    }
  return fail(te_errc::device_not_found);
}
void fake_fabric::close_device(context* c) noexcept {
  std::lock_guard lk(mu_);
  live_.erase(c);
  delete as<ctx>(c);
}
result<device_attr> fake_fabric::query_device(context* c) {
  device_attr a;
  a.max_mr_size = specs_[static_cast<std::size_t>(as<ctx>(c)->index)].max_mr_size;
  a.max_qp_wr = 1024;
  a.max_cqe = 4096;
  a.max_qp_rd_atom = 16;
  a.phys_port_cnt = 1;
  return a;
}
result<port_attr> fake_fabric::query_port(context* c, std::uint8_t port) {
  if (port != 1) return fail(std::make_error_code(std::errc::invalid_argument));
  const auto& s = specs_[static_cast<std::size_t>(as<ctx>(c)->index)];
  port_attr p;
  p.active = s.active;
  p.active_mtu = s.active_mtu;
  p.link = link_layer::ethernet;
  p.gid_table_len = 2;
  return p;
}
result<gid_entry> fake_fabric::query_gid(context* c, std::uint8_t, int index) {
  // Index 0: a link-local RoCE v1 GID; index 1: the RoCE v2 IPv4 one the transport should choose.
  gid_entry e;
  e.index = index;
  if (index == 0) {
    e.value[0] = 0xfe;
    e.value[1] = 0x80;
    e.value[15] = static_cast<std::uint8_t>(as<ctx>(c)->index + 1);
    e.type = gid_type::roce_v1;
  } else if (index == 1) {
    e.value = device_gid(as<ctx>(c)->index);
    e.type = gid_type::roce_v2;
  } else {
    return fail(std::make_error_code(std::errc::invalid_argument));
  }
  return e;
}

result<protection_domain*> fake_fabric::alloc_pd(context* c) {
  std::lock_guard lk(mu_);
  auto* p = new pd{as<ctx>(c), {}};
  live_.insert(p);
  return as<protection_domain>(p);
}
void fake_fabric::dealloc_pd(protection_domain* p) noexcept {
  std::lock_guard lk(mu_);
  live_.erase(p);
  delete as<pd>(p);
}
result<mr_handle> fake_fabric::reg_mr(protection_domain* p, void* addr, std::uint64_t length, unsigned access) {
  std::lock_guard lk(mu_);
  auto* P = as<pd>(p);
  const auto& spec = specs_[static_cast<std::size_t>(P->c->index)];
  if (length == 0 || length > spec.max_mr_size) return fail(std::make_error_code(std::errc::invalid_argument));
  auto* m = new mr{P, reinterpret_cast<std::uint64_t>(addr), length, access, next_key_, next_key_ + 1};
  next_key_ += 2;
  P->mrs.insert(m);
  live_.insert(m);
  return mr_handle{as<memory_region>(m), m->lkey, m->rkey};
}
result<mr_handle> fake_fabric::reg_dmabuf_mr(protection_domain*, std::uint64_t, std::uint64_t, std::uint64_t, int,
                                             unsigned) {
  return fail(std::make_error_code(std::errc::not_supported));
}
void fake_fabric::dereg_mr(memory_region* m) noexcept {
  std::lock_guard lk(mu_);
  auto* M = as<mr>(m);
  M->p->mrs.erase(M);
  live_.erase(M);
  delete M;
}

result<completion_channel*> fake_fabric::create_comp_channel(context*) {
  int fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (fd < 0) return fail(std::error_code(errno, std::system_category()));
  std::lock_guard lk(mu_);
  auto* ch = new channel{fd, {}};
  live_.insert(ch);
  return as<completion_channel>(ch);
}
void fake_fabric::destroy_comp_channel(completion_channel* c) noexcept {
  std::lock_guard lk(mu_);
  auto* ch = as<channel>(c);
  ::close(ch->fd);
  live_.erase(ch);
  delete ch;
}
int fake_fabric::channel_fd(completion_channel* c) noexcept { return as<channel>(c)->fd; }
result<completion_queue*> fake_fabric::create_cq(context*, int cqe, completion_channel* ch) {
  std::lock_guard lk(mu_);
  auto* c = new cq{as<channel>(ch), cqe, false, {}, 0};
  live_.insert(c);
  return as<completion_queue>(c);
}
void fake_fabric::destroy_cq(completion_queue* c) noexcept {
  std::lock_guard lk(mu_);
  auto* C = as<cq>(c);
  if (C->ch)
    for (auto it = C->ch->events.begin(); it != C->ch->events.end();)
      it = *it == C ? C->ch->events.erase(it) : std::next(it);
  live_.erase(C);
  delete C;
}
result<void> fake_fabric::req_notify_cq(completion_queue* c) {
  std::lock_guard lk(mu_);
  auto* C = as<cq>(c);
  // Like hardware: arming a CQ that already holds completions raises no event for them.
  C->armed = true;
  return ok();
}
result<completion_queue*> fake_fabric::get_cq_event(completion_channel* c) {
  std::lock_guard lk(mu_);
  auto* ch = as<channel>(c);
  if (ch->events.empty()) {
    std::uint64_t v;
    (void)!::read(ch->fd, &v, sizeof v);  // reset the eventfd: nothing is pending
    return fail(std::make_error_code(std::errc::resource_unavailable_try_again));
  }
  cq* q = ch->events.front();
  ch->events.pop_front();
  ++q->unacked;
  return as<completion_queue>(q);
}
void fake_fabric::ack_cq_events(completion_queue* c, unsigned n) noexcept {
  std::lock_guard lk(mu_);
  auto* C = as<cq>(c);
  C->unacked -= std::min(C->unacked, n);
}
int fake_fabric::poll_cq(completion_queue* c, std::span<work_completion> out) noexcept {
  std::lock_guard lk(mu_);
  auto* C = as<cq>(c);
  std::size_t n = 0;
  while (n < out.size() && !C->entries.empty()) {
    out[n++] = C->entries.front();
    C->entries.pop_front();
  }
  return static_cast<int>(n);
}

void fake_fabric::complete_locked(cq& c, const work_completion& wc) {
  if (static_cast<int>(c.entries.size()) >= c.capacity) {
    overflow_ = true;
    return;
  }
  c.entries.push_back(wc);
  if (c.armed && c.ch) {
    c.armed = false;
    c.ch->events.push_back(&c);
    std::uint64_t one = 1;
    (void)!::write(c.ch->fd, &one, sizeof one);
  }
}

result<queue_pair*> fake_fabric::create_rc_qp(protection_domain* p, completion_queue* send_cq, completion_queue*,
                                              const qp_caps& caps) {
  std::lock_guard lk(mu_);
  auto* q = new qp;
  q->p = as<pd>(p);
  q->send_cq = as<cq>(send_cq);
  q->num = next_qpn_++;
  q->max_send_wr = caps.max_send_wr;
  qps_[q->num] = q;
  live_.insert(q);
  ++qps_created_;
  return as<queue_pair>(q);
}
void fake_fabric::destroy_qp(queue_pair* q) noexcept {
  std::lock_guard lk(mu_);
  auto* Q = as<qp>(q);
  qps_.erase(Q->num);
  live_.erase(Q);
  delete Q;
}
std::uint32_t fake_fabric::qp_num(queue_pair* q) noexcept { return as<qp>(q)->num; }

result<void> fake_fabric::modify_to_init(queue_pair* q, const qp_local& l) {
  std::lock_guard lk(mu_);
  auto* Q = as<qp>(q);
  if (!valid_transition(Q->state, qp_state::init)) return fail(std::make_error_code(std::errc::invalid_argument));
  Q->state = qp_state::init;
  Q->access = l.access;
  return ok();
}
result<void> fake_fabric::modify_to_rtr(queue_pair* q, const qp_local&, const qp_remote& r) {
  std::lock_guard lk(mu_);
  auto* Q = as<qp>(q);
  if (!valid_transition(Q->state, qp_state::rtr)) return fail(std::make_error_code(std::errc::invalid_argument));
  // RoCE: the address vector must carry a GID.
  if (!r.use_gid) return fail(std::make_error_code(std::errc::invalid_argument));
  Q->state = qp_state::rtr;
  Q->remote_qpn = r.qp_num;
  Q->remote_gid = r.gid_value;
  last_mtu_ = r.path_mtu;
  return ok();
}
result<void> fake_fabric::modify_to_rts(queue_pair* q, const qp_local&) {
  std::lock_guard lk(mu_);
  auto* Q = as<qp>(q);
  if (!valid_transition(Q->state, qp_state::rts)) return fail(std::make_error_code(std::errc::invalid_argument));
  Q->state = qp_state::rts;
  return ok();
}
result<void> fake_fabric::modify_to_error(queue_pair* q) {
  std::lock_guard lk(mu_);
  auto* Q = as<qp>(q);
  Q->state = qp_state::error;
  flush_locked(*Q);
  return ok();
}
result<qp_state> fake_fabric::query_qp_state(queue_pair* q) {
  std::lock_guard lk(mu_);
  return as<qp>(q)->state;
}

void fake_fabric::flush_locked(qp& q) {
  while (!q.held.empty()) {
    const send_wr w = q.held.front();
    q.held.pop_front();
    complete_locked(*q.send_cq, work_completion{w.wr_id, wc_status::wr_flush_err, 0, 0});
    ++stats_[q.p->c->device].completed_err;
  }
}

wc_status fake_fabric::execute_locked(qp& q, const send_wr& w) {
  const std::string& dev = q.p->c->device;
  auto rit = qps_.find(q.remote_qpn);
  if (rit == qps_.end()) return wc_status::retry_exc_err;  // nobody answers: the transport retries out
  qp& r = *rit->second;
  const std::string& rdev = r.p->c->device;
  if (down_.count(dev) || down_.count(rdev)) return wc_status::retry_exc_err;
  if (auto it = fail_next_count_.find(dev); it != fail_next_count_.end() && it->second > 0) {
    --it->second;
    return fail_next_status_[dev];
  }
  if ((r.state != qp_state::rtr && r.state != qp_state::rts) || r.remote_qpn != q.num)
    return wc_status::retry_exc_err;
  // The local side: an MR of this PD with this lkey covering the range (writable for a READ).
  const mr* lm = nullptr;
  for (auto* m : q.p->mrs)
    if (m->lkey == w.lkey) lm = m;
  if (!lm || w.local_addr < lm->addr || w.length > lm->length || w.local_addr - lm->addr > lm->length - w.length)
    return wc_status::loc_prot_err;
  if (w.op == wr_opcode::rdma_read && !(lm->access & access_local_write)) return wc_status::loc_prot_err;
  // The remote side: an MR of the peer QP's PD with this rkey, covering the range, with the right
  // remote access, and a QP that allows it.
  const mr* rm = nullptr;
  for (auto* m : r.p->mrs)
    if (m->rkey == w.rkey) rm = m;
  const unsigned need = w.op == wr_opcode::rdma_write ? access_remote_write : access_remote_read;
  if (!rm || w.remote_addr < rm->addr || w.length > rm->length || w.remote_addr - rm->addr > rm->length - w.length ||
      !(rm->access & need) || !(r.access & need))
    return wc_status::rem_access_err;
  if (w.op == wr_opcode::rdma_write)
    std::memmove(reinterpret_cast<void*>(w.remote_addr), reinterpret_cast<const void*>(w.local_addr), w.length);
  else
    std::memmove(reinterpret_cast<void*>(w.local_addr), reinterpret_cast<const void*>(w.remote_addr), w.length);
  stats_[dev].bytes += w.length;
  return wc_status::success;
}

result<void> fake_fabric::post_send(queue_pair* q, std::span<const send_wr> wrs) {
  std::lock_guard lk(mu_);
  auto* Q = as<qp>(q);
  if (Q->state != qp_state::rts && Q->state != qp_state::error)
    return fail(std::make_error_code(std::errc::invalid_argument));
  const std::string& dev = Q->p->c->device;
  auto& st = stats_[dev];
  ++st.post_calls;
  for (const auto& w : wrs) {
    ++st.posted;
    if (Q->state == qp_state::error) {
      // A QP in error completes everything posted to it with a flush, signalled or not.
      complete_locked(*Q->send_cq, work_completion{w.wr_id, wc_status::wr_flush_err, 0, 0});
      ++st.completed_err;
      continue;
    }
    if (stalled_.count(dev)) {
      Q->held.push_back(w);
      continue;
    }
    const wc_status s = execute_locked(*Q, w);
    if (s == wc_status::success) {
      ++st.completed_ok;
      if (w.signaled) complete_locked(*Q->send_cq, work_completion{w.wr_id, s, 0, w.length});
    } else {
      ++st.completed_err;
      complete_locked(*Q->send_cq, work_completion{w.wr_id, s, 0x42, 0});
      Q->state = qp_state::error;
    }
  }
  return ok();
}

}  // namespace yutu::test
