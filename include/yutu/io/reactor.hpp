// The reactor: one io_uring per thread, the loop that drives it, and the completion-source backend.
//
// A loop turn (seastar's split): run the coroutines made ready, take work posted by other threads,
// poll every extra completion source (ibverbs CQs, CUDA events), then make exactly one io_uring_enter:
// submit everything prepared during the turn and, only if every source agrees it can sleep, wait for
// one completion. Completions are copied out of the CQ and the CQ advanced before any handler runs, so
// a handler may prepare new SQEs freely. Operations are intrusive (their SQE user_data points at an
// io_completion they own), so steady-state I/O allocates nothing.
//
// The ring is created with SINGLE_ISSUER | DEFER_TASKRUN when the kernel allows, falling back to
// COOP_TASKRUN and then to no flags. It is created disabled and enabled by the first thread that
// drives it, which becomes the only issuer; reactor_pool creates each reactor on its own thread.
#pragma once

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <span>
#include <sys/uio.h>
#include <thread>
#include <vector>

#include "yutu/coro/executor.hpp"
#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"

namespace yutu::io {

// What an SQE's user_data points at. Handlers run on the reactor thread.
struct io_completion {
  void (*on_cqe)(io_completion* self, int res, std::uint32_t flags) noexcept = nullptr;
};

// An extra source of completions polled every loop turn (seastar's reactor_backend split).
class completion_source {
 public:
  // Reaps completions and runs their handlers; returns true if it did any work.
  virtual bool poll() noexcept = 0;
  // True when the source has nothing in flight that only polling would discover, so the loop may
  // sleep in the kernel. Sources that need waking while asleep arm an fd poll on the ring.
  virtual bool can_sleep() const noexcept = 0;

 protected:
  ~completion_source() = default;
};

struct reactor_options {
  unsigned entries = 4096;  // SQ size; the CQ is twice that
  bool single_issuer = true;
  bool defer_taskrun = true;
};

struct reactor_features {
  bool single_issuer = false;
  bool defer_taskrun = false;
  bool coop_taskrun = false;
  bool send_zc = false;
  bool recv_multishot = false;
  bool buf_ring = false;
};

class reactor final : public coro::executor {
 public:
  explicit reactor(reactor_options opts = {});
  ~reactor();
  reactor(const reactor&) = delete;
  reactor& operator=(const reactor&) = delete;

  // The reactor the calling thread is driving right now (inside run, run_once, run_until_empty or
  // block_on), or nullptr. Driving is scoped: after block_on returns, the thread is a plain thread
  // again, so a coroutine resumed there later is not mistaken for one on the reactor.
  // Never inlined: clang 16 computes a thread_local's address once per coroutine body, so after a
  // hop to another thread an inlined read would return the old thread's reactor
  // (test/io/reactor_pool_test catches it).
  [[gnu::noinline]] static reactor* current() noexcept { return tls_current_; }

  // --- driving the loop (owner thread) ---
  // Runs until stop() is called, then runs the work that was posted before the stop took effect.
  void run();
  // One loop turn. With may_block, sleeps in the kernel when nothing is ready. Returns whether any
  // work (a handler, a resumed coroutine, a source's completion) was done.
  bool run_once(bool may_block = true);
  // Drives the loop until nothing is ready, queued or in flight: deterministic tests without sleeps.
  void run_until_empty();
  // Starts `t` and drives the loop until it completes; returns its value or rethrows.
  template <class T>
  T block_on(task<T> t);

  // --- any thread ---
  void stop() noexcept;
  void post(coro::work_item* w) noexcept override;
  [[gnu::noinline]] bool running_in_this_thread() const noexcept override { return tls_current_ == this; }

  // An awaitable that resumes the awaiting coroutine on this reactor's thread.
  auto schedule() noexcept;

  // --- owner thread ---
  // A free SQE; flushes the SQ to the kernel first if it is full. Never returns nullptr.
  io_uring_sqe* get_sqe() noexcept;
  // Ensures `n` SQEs can be taken without an intervening flush (for linked chains).
  void reserve_sqes(unsigned n) noexcept;
  // Queues `w` to run on this thread in the current or next turn.
  void schedule_local(coro::work_item* w) noexcept;
  void add_source(completion_source* s);
  void remove_source(completion_source* s) noexcept;

  // Registers fixed buffers for READ_FIXED/WRITE_FIXED and SEND_ZC_FIXED; replaces earlier ones.
  result<void> register_buffers(std::span<const iovec> bufs);
  result<void> unregister_buffers();

  io_uring* ring() noexcept { return &ring_; }
  const reactor_features& features() const noexcept { return features_; }
  // Operations whose completions the kernel still owes (the reactor's own wake-up read excluded).
  std::size_t in_flight() const noexcept { return in_flight_; }
  void op_started() noexcept { ++in_flight_; }
  void op_finished() noexcept { --in_flight_; }

  struct stats {
    std::uint64_t turns = 0, enters = 0, cqes = 0, sleeps = 0, wakeups_posted = 0;
  };
  // A snapshot; read it on the owner thread (wakeups_posted is counted by posting threads).
  stats statistics() const noexcept {
    stats s = stats_;
    s.wakeups_posted = wakeups_posted_.load(std::memory_order_relaxed);
    return s;
  }

 private:
  // Makes the calling thread the ring's only issuer (first call) or checks that it is.
  void bind_to_this_thread();
  // Installs this reactor as the thread's current reactor and executor while it is driven.
  class drive_scope {
   public:
    explicit drive_scope(reactor* r);
    ~drive_scope();
    drive_scope(const drive_scope&) = delete;
    drive_scope& operator=(const drive_scope&) = delete;

   private:
    reactor* prev_reactor_;
    coro::executor* prev_executor_;
  };
  void arm_wakeup() noexcept;
  bool run_ready() noexcept;
  bool take_remote() noexcept;
  bool poll_sources() noexcept;
  bool sources_can_sleep() const noexcept;
  std::size_t reap() noexcept;
  bool idle() const noexcept;

  static inline thread_local reactor* tls_current_ = nullptr;

  io_uring ring_{};
  reactor_features features_;
  std::thread::id owner_{};
  bool bound_ = false;
  bool disabled_ = false;  // created with R_DISABLED, enabled on bind
  std::atomic<bool> stop_requested_{false};

  // Local ready queue (owner thread only), FIFO.
  coro::work_item* ready_head_ = nullptr;
  coro::work_item* ready_tail_ = nullptr;
  coro::mpsc_queue remote_;
  std::atomic<bool> sleeping_{false};
  std::atomic<int> posters_{0};  // threads inside post() right now (see ~reactor)
  std::atomic<std::uint64_t> wakeups_posted_{0};

  int wake_fd_ = -1;
  std::uint64_t wake_buf_ = 0;
  io_completion wake_op_;
  bool wake_armed_ = false;

  std::vector<completion_source*> sources_;
  std::size_t in_flight_ = 0;
  bool buffers_registered_ = false;
  stats stats_;
};

// --- implementation of the templates ---

inline auto reactor::schedule() noexcept {
  struct awaiter : coro::resume_item {
    reactor* r;
    explicit awaiter(reactor* r_) noexcept : r(r_) {}
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) noexcept {
      handle = h;
      r->post(this);
    }
    void await_resume() const noexcept {}
  };
  return awaiter{this};
}

template <class T>
T reactor::block_on(task<T> t) {
  drive_scope scope(this);
  struct driver {
    struct promise_type {
      bool done = false;
      driver get_return_object() noexcept { return driver{std::coroutine_handle<promise_type>::from_promise(*this)}; }
      std::suspend_always initial_suspend() noexcept { return {}; }
      struct fin {
        bool await_ready() noexcept { return false; }
        void await_suspend(std::coroutine_handle<promise_type> h) noexcept { h.promise().done = true; }
        void await_resume() noexcept {}
      };
      fin final_suspend() noexcept { return {}; }
      void return_void() noexcept {}
      void unhandled_exception() noexcept { std::terminate(); }
    };
    std::coroutine_handle<promise_type> h;
    ~driver() {
      if (h) h.destroy();
    }
  };
  // Awaiting `t` by reference leaves its result in its promise for us to read afterwards.
  auto body = [](task<T>& inner) -> driver {
    try {
      (void)co_await inner;
    } catch (...) {
      // Surfaced below by reading inner's result.
    }
  };
  driver d = body(t);
  d.h.resume();
  while (!d.h.promise().done) run_once(true);
  return std::move(t.handle().promise()).result();
}

}  // namespace yutu::io
