// The executor seam between the coroutine core and whatever runs it (the io reactor, a test loop).
//
// The coro layer may not include io, yet a coroutine that is woken from a foreign thread (a stop
// request, an async_event set elsewhere) must resume on the thread it suspended on: a single-issuer
// io_uring and a thread-bound queue pair both require it. An awaiter therefore records
// current_executor() when it suspends and hands its intrusive work_item to that executor's post()
// when it is woken from elsewhere. Work items are intrusive, so posting allocates nothing.
#pragma once

#include <atomic>
#include <coroutine>

namespace yutu::coro {

struct work_item {
  work_item* next = nullptr;
  void (*run)(work_item*) noexcept = nullptr;
};

// A work item that resumes a coroutine.
struct resume_item : work_item {
  std::coroutine_handle<> handle;
  resume_item() noexcept {
    run = [](work_item* w) noexcept { static_cast<resume_item*>(w)->handle.resume(); };
  }
};

class executor {
 public:
  // Runs `w` on this executor's thread, soon. Callable from any thread.
  virtual void post(work_item* w) noexcept = 0;
  virtual bool running_in_this_thread() const noexcept = 0;

 protected:
  ~executor() = default;
};

namespace detail {
inline thread_local executor* tls_current_executor = nullptr;
}

// The executor driving the calling thread, or nullptr on a plain thread. Never inlined: clang 16
// caches a thread_local's address across a coroutine's suspension points, so an inlined read after
// resuming on another thread would see the old thread's executor.
[[gnu::noinline]] inline executor* current_executor() noexcept { return detail::tls_current_executor; }

// Installs `e` as the calling thread's executor for the lifetime of the guard.
class executor_scope {
 public:
  explicit executor_scope(executor* e) noexcept : prev_(detail::tls_current_executor) {
    detail::tls_current_executor = e;
  }
  ~executor_scope() { detail::tls_current_executor = prev_; }
  executor_scope(const executor_scope&) = delete;
  executor_scope& operator=(const executor_scope&) = delete;

 private:
  executor* prev_;
};

// Resumes `item.handle` on `e` if given and not the calling thread's, else inline.
inline void resume_on(executor* e, resume_item& item) noexcept {
  if (e && !e->running_in_this_thread())
    e->post(&item);
  else
    item.handle.resume();
}

// Lock-free multi-producer, single-consumer intrusive stack used for cross-thread posting.
class mpsc_queue {
 public:
  void push(work_item* w) noexcept {
    work_item* head = head_.load(std::memory_order_relaxed);
    do {
      w->next = head;
    } while (!head_.compare_exchange_weak(head, w, std::memory_order_release, std::memory_order_relaxed));
  }
  // Takes everything, in FIFO order.
  work_item* take_all() noexcept {
    work_item* list = head_.exchange(nullptr, std::memory_order_acquire);
    work_item* rev = nullptr;
    while (list) {
      work_item* next = list->next;
      list->next = rev;
      rev = list;
      list = next;
    }
    return rev;
  }
  bool empty() const noexcept { return head_.load(std::memory_order_acquire) == nullptr; }

 private:
  std::atomic<work_item*> head_{nullptr};
};

}  // namespace yutu::coro
