// The reactor loop: ring setup with fallbacks, the turn, cross-thread wake-ups.
#include "yutu/io/reactor.hpp"

#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

namespace yutu::io {
namespace {

// Copied out of the CQ before any handler runs: a handler may then prepare and even flush SQEs.
struct cqe_copy {
  std::uint64_t user_data;
  int res;
  std::uint32_t flags;
};
constexpr unsigned kReapBatch = 256;

bool probe_op(io_uring_probe* p, int op) { return p && io_uring_opcode_supported(p, op); }

}  // namespace

reactor::reactor(reactor_options opts) {
  io_uring_params p{};
  unsigned base = IORING_SETUP_CQSIZE;
  p.cq_entries = opts.entries * 2;
  // Most specific first; a kernel that refuses a flag answers -EINVAL and we step down.
  struct attempt {
    unsigned flags;
    bool si, dt, coop;
  };
  const attempt attempts[] = {
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_R_DISABLED, true, true, false},
      {IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_R_DISABLED, true, false, false},
      {IORING_SETUP_COOP_TASKRUN, false, false, true},
      {0, false, false, false},
  };
  int rc = -EINVAL;
  for (const attempt& a : attempts) {
    if (a.si && !opts.single_issuer) continue;
    if (a.dt && !opts.defer_taskrun) continue;
    std::memset(&p, 0, sizeof p);
    p.flags = base | a.flags;
    p.cq_entries = opts.entries * 2;
    rc = io_uring_queue_init_params(opts.entries, &ring_, &p);
    if (rc == 0) {
      features_.single_issuer = a.si;
      features_.defer_taskrun = a.dt;
      features_.coop_taskrun = a.coop;
      disabled_ = (a.flags & IORING_SETUP_R_DISABLED) != 0;
      break;
    }
    if (rc != -EINVAL) break;
  }
  if (rc != 0) throw std::system_error(-rc, std::system_category(), "io_uring_queue_init_params");

  io_uring_probe* probe = io_uring_get_probe_ring(&ring_);
  features_.send_zc = probe_op(probe, IORING_OP_SEND_ZC);
  features_.recv_multishot = probe_op(probe, IORING_OP_RECV);  // multishot recv: kernel >= 6.0
  features_.buf_ring = probe_op(probe, IORING_OP_PROVIDE_BUFFERS);
  if (probe) io_uring_free_probe(probe);

  wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wake_fd_ < 0) {
    int e = errno;
    io_uring_queue_exit(&ring_);
    throw std::system_error(e, std::system_category(), "eventfd");
  }
  wake_op_.on_cqe = [](io_completion* c, int, std::uint32_t) noexcept {
    // The owning reactor re-arms in its loop; nothing to do but note it.
    (void)c;
  };
}

reactor::~reactor() {
  if (tls_current_ == this) tls_current_ = nullptr;
  // Another thread's post() may still be between publishing its item (which this thread already
  // ran) and its wake-up write: let it leave first. A few instructions; never a real wait.
  while (posters_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
  // The kernel may still own the wake-up read's buffer (wake_buf_). io_uring_queue_exit cancels and
  // reaps every outstanding request before the ring's memory is released, and wake_buf_ lives in
  // this object, which is still alive here.
  io_uring_queue_exit(&ring_);
  if (wake_fd_ >= 0) ::close(wake_fd_);
}

void reactor::bind_to_this_thread() {
  if (bound_) {
    if (owner_ != std::this_thread::get_id())
      throw std::logic_error("yutu::io::reactor driven from a thread other than its owner");
    return;
  }
  owner_ = std::this_thread::get_id();
  bound_ = true;
  if (disabled_) {
    // Debian's liburing 2.3 declares io_uring_enable_rings but does not export it: call the kernel.
    long rc = ::syscall(__NR_io_uring_register, ring_.ring_fd, IORING_REGISTER_ENABLE_RINGS, nullptr, 0);
    if (rc < 0) throw std::system_error(errno, std::system_category(), "IORING_REGISTER_ENABLE_RINGS");
    disabled_ = false;
  }
}

reactor::drive_scope::drive_scope(reactor* r)
    : prev_reactor_(tls_current_), prev_executor_(coro::detail::tls_current_executor) {
  r->bind_to_this_thread();
  tls_current_ = r;
  coro::detail::tls_current_executor = r;
}

reactor::drive_scope::~drive_scope() {
  tls_current_ = prev_reactor_;
  coro::detail::tls_current_executor = prev_executor_;
}

io_uring_sqe* reactor::get_sqe() noexcept {
  io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
  while (!sqe) {
    // SQ full: hand what we have to the kernel and take a fresh slot.
    io_uring_submit(&ring_);
    ++stats_.enters;
    sqe = io_uring_get_sqe(&ring_);
  }
  return sqe;
}

void reactor::reserve_sqes(unsigned n) noexcept {
  if (io_uring_sq_space_left(&ring_) < n) {
    io_uring_submit(&ring_);
    ++stats_.enters;
  }
}

void reactor::schedule_local(coro::work_item* w) noexcept {
  w->next = nullptr;
  if (ready_tail_)
    ready_tail_->next = w;
  else
    ready_head_ = w;
  ready_tail_ = w;
}

void reactor::post(coro::work_item* w) noexcept {
  if (running_in_this_thread()) {
    schedule_local(w);
    return;
  }
  // Once `w` is pushed its owner thread may run it, finish and destroy this reactor while we are
  // still here: the destructor waits for posters_ to drop to zero before releasing anything.
  posters_.fetch_add(1, std::memory_order_relaxed);
  remote_.push(w);
  // Write the eventfd only if the loop is (about to be) asleep; it re-checks the queue after
  // announcing sleep, so a push that raced with that announcement is never lost.
  if (sleeping_.exchange(false, std::memory_order_acq_rel)) {
    std::uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;
    wakeups_posted_.fetch_add(1, std::memory_order_relaxed);
  }
  posters_.fetch_sub(1, std::memory_order_release);
}

void reactor::stop() noexcept {
  posters_.fetch_add(1, std::memory_order_relaxed);  // as in post(): the loop may end right away
  stop_requested_.store(true, std::memory_order_release);
  if (sleeping_.exchange(false, std::memory_order_acq_rel)) {
    std::uint64_t one = 1;
    ssize_t n = ::write(wake_fd_, &one, sizeof one);
    (void)n;
  }
  posters_.fetch_sub(1, std::memory_order_release);
}

void reactor::add_source(completion_source* s) { sources_.push_back(s); }
void reactor::remove_source(completion_source* s) noexcept {
  sources_.erase(std::remove(sources_.begin(), sources_.end(), s), sources_.end());
}

result<void> reactor::register_buffers(std::span<const iovec> bufs) {
  if (buffers_registered_) {
    if (auto r = unregister_buffers(); !r) return r;
  }
  int rc = io_uring_register_buffers(&ring_, bufs.data(), static_cast<unsigned>(bufs.size()));
  if (rc < 0) return fail_errno(rc);
  buffers_registered_ = true;
  return ok();
}

result<void> reactor::unregister_buffers() {
  if (!buffers_registered_) return ok();
  int rc = io_uring_unregister_buffers(&ring_);
  if (rc < 0) return fail_errno(rc);
  buffers_registered_ = false;
  return ok();
}

void reactor::arm_wakeup() noexcept {
  if (wake_armed_) return;
  io_uring_sqe* sqe = get_sqe();
  io_uring_prep_read(sqe, wake_fd_, &wake_buf_, sizeof wake_buf_, 0);
  io_uring_sqe_set_data(sqe, &wake_op_);
  wake_armed_ = true;
}

bool reactor::run_ready() noexcept {
  // Run only what was ready at the start of the turn, so I/O keeps being submitted under load.
  coro::work_item* w = ready_head_;
  if (!w) return false;
  coro::work_item* last = ready_tail_;
  ready_head_ = ready_tail_ = nullptr;
  for (;;) {
    coro::work_item* next = w->next;
    bool end = (w == last);
    w->run(w);
    if (end) break;
    w = next;
  }
  return true;
}

bool reactor::take_remote() noexcept {
  // Every turn comes here; a plain load keeps the common empty case off the locked exchange.
  if (remote_.empty()) return false;
  coro::work_item* w = remote_.take_all();
  if (!w) return false;
  while (w) {
    coro::work_item* next = w->next;
    schedule_local(w);
    w = next;
  }
  return true;
}

bool reactor::poll_sources() noexcept {
  bool did = false;
  for (completion_source* s : sources_) did |= s->poll();
  return did;
}

bool reactor::sources_can_sleep() const noexcept {
  for (const completion_source* s : sources_)
    if (!s->can_sleep()) return false;
  return true;
}

std::size_t reactor::reap() noexcept {
  std::size_t total = 0;
  cqe_copy batch[kReapBatch];
  for (;;) {
    io_uring_cqe* cqes[kReapBatch];
    unsigned n = io_uring_peek_batch_cqe(&ring_, cqes, kReapBatch);
    if (n == 0) break;
    for (unsigned i = 0; i < n; ++i) batch[i] = {cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
    io_uring_cq_advance(&ring_, n);
    for (unsigned i = 0; i < n; ++i) {
      auto* c = reinterpret_cast<io_completion*>(batch[i].user_data);
      if (c == &wake_op_) {
        wake_armed_ = false;
        continue;
      }
      if (c) c->on_cqe(c, batch[i].res, batch[i].flags);
    }
    total += n;
    if (n < kReapBatch) break;
  }
  stats_.cqes += total;
  return total;
}

bool reactor::idle() const noexcept {
  return ready_head_ == nullptr && remote_.empty() && in_flight_ == 0;
}

bool reactor::run_once(bool may_block) {
  drive_scope scope(this);
  ++stats_.turns;
  bool did = run_ready();
  did |= take_remote();
  did |= poll_sources();

  bool block = may_block && !did && ready_head_ == nullptr && sources_can_sleep();
  if (block) {
    arm_wakeup();
    sleeping_.store(true, std::memory_order_seq_cst);
    // Re-check after announcing sleep: a post() that saw sleeping_ == false did not write the eventfd.
    if (!remote_.empty() || stop_requested_.load(std::memory_order_acquire)) {
      sleeping_.store(false, std::memory_order_relaxed);
      block = false;
    }
  }
  if (block) {
    ++stats_.sleeps;
    ++stats_.enters;
    io_uring_submit_and_wait(&ring_, 1);
    sleeping_.store(false, std::memory_order_relaxed);
  } else if (io_uring_sq_ready(&ring_) > 0) {
    ++stats_.enters;
    io_uring_submit_and_get_events(&ring_);
  } else if (features_.defer_taskrun && in_flight_ > 0) {
    // With DEFER_TASKRUN the kernel posts completions only when we enter asking for events.
    ++stats_.enters;
    io_uring_get_events(&ring_);
  }
  did |= reap() > 0;
  return did;
}

void reactor::run() {
  drive_scope scope(this);
  while (!stop_requested_.load(std::memory_order_acquire)) run_once(true);
  stop_requested_.store(false, std::memory_order_relaxed);
  // Run what became ready during the last turn, and what other threads posted just before the stop
  // (an engine closing its peers posts their shutdowns, then stops the pool): posted work is never
  // silently dropped, nor leaked. Bounded, in case the work keeps posting more.
  for (int round = 0; round < 64; ++round) {
    bool took = take_remote();
    bool ran = run_ready();
    if (!took && !ran) break;
  }
}

void reactor::run_until_empty() {
  drive_scope scope(this);
  while (!idle() || ready_head_) run_once(true);
}

}  // namespace yutu::io
