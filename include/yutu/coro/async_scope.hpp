// async_scope: owns tasks that run detached from their spawner (per-connection handlers, background
// flushes), so none is lost and none outlives what it uses.
//
// spawn() starts the task at once, on the calling thread, and keeps its frame until it completes,
// wherever that happens; then the frame is destroyed. join() completes when every spawned task has,
// resuming on the executor of the task that awaited it; one task at a time may join, and the scope
// may spawn again afterwards. Spawned tasks observe the scope's stop token (unless they set their own
// with with_stop_token), so request_stop() then join() is the orderly shutdown. A spawned task that
// throws has its exception kept: join() rethrows the first one. Destroying a scope whose tasks still
// run is a broken invariant: std::terminate.
//
//   async_scope scope;
//   for (auto& conn : conns) scope.spawn(serve(conn));
//   ...
//   scope.request_stop();
//   co_await scope.join();
#pragma once

#include <coroutine>
#include <cstddef>
#include <exception>
#include <mutex>
#include <stop_token>
#include <utility>

#include "yutu/coro/executor.hpp"
#include "yutu/coro/task.hpp"

namespace yutu::coro {

class async_scope;

namespace detail {

// The frame that owns one spawned task; destroys itself when the task completes.
class spawned_task {
 public:
  struct promise_type : stop_token_holder, pooled_frame {
    async_scope* scope = nullptr;

    spawned_task get_return_object() noexcept {
      return spawned_task{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    struct final_awaiter {
      bool await_ready() const noexcept { return false; }
      inline std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept;
      void await_resume() const noexcept {}
    };
    final_awaiter final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    inline void unhandled_exception() noexcept;
  };

  std::coroutine_handle<promise_type> handle;
};

inline spawned_task run_spawned(task<void> t) { co_await std::move(t); }

}  // namespace detail

class async_scope {
 public:
  async_scope() = default;
  async_scope(const async_scope&) = delete;
  async_scope& operator=(const async_scope&) = delete;
  ~async_scope() {
    std::lock_guard lock(mutex_);
    if (running_ != 0) std::terminate();  // tasks still run and use this scope
  }

  // Starts `t` now, on this thread; it runs until its first suspension before spawn returns.
  void spawn(task<void> t) {
    auto h = detail::run_spawned(std::move(t)).handle;
    h.promise().scope = this;
    h.promise().set_stop_token(source_.get_token());
    {
      std::lock_guard lock(mutex_);
      ++running_;
    }
    h.resume();
  }

  // Asks every spawned task to stop (through the token they observe).
  void request_stop() noexcept { source_.request_stop(); }
  std::stop_token get_stop_token() const noexcept { return source_.get_token(); }

  // Spawned tasks not yet completed (a snapshot).
  std::size_t running() const noexcept {
    std::lock_guard lock(mutex_);
    return running_;
  }

  class join_awaiter : resume_item {
   public:
    explicit join_awaiter(async_scope& s) noexcept : s_(&s) {}
    bool await_ready() const noexcept { return false; }
    bool await_suspend(std::coroutine_handle<> h) noexcept {
      handle = h;
      exec_ = current_executor();
      std::lock_guard lock(s_->mutex_);
      if (s_->running_ == 0) return false;
      // A scope is joined by one task at a time.
      if (s_->joiner_) std::terminate();
      s_->joiner_ = this;
      return true;
    }
    // Rethrows the first exception a spawned task threw.
    void await_resume() {
      std::exception_ptr e;
      {
        std::lock_guard lock(s_->mutex_);
        e = std::exchange(s_->error_, nullptr);
      }
      if (e) std::rethrow_exception(e);
    }

   private:
    friend class async_scope;
    async_scope* s_;
    executor* exec_ = nullptr;
  };

  // `co_await scope.join()`: waits until no spawned task runs.
  [[nodiscard]] join_awaiter join() noexcept { return join_awaiter(*this); }

 private:
  friend struct detail::spawned_task::promise_type;

  // A spawned task finished and its frame is gone. Returns the coroutine to transfer to.
  std::coroutine_handle<> task_done() noexcept {
    join_awaiter* j = nullptr;
    {
      // The count drops under the lock, so a join cannot see zero (and the scope be destroyed)
      // before we stop touching it.
      std::lock_guard lock(mutex_);
      if (--running_ == 0) j = std::exchange(joiner_, nullptr);
    }
    if (!j) return std::noop_coroutine();
    if (j->exec_ && !j->exec_->running_in_this_thread()) {
      j->exec_->post(j);
      return std::noop_coroutine();
    }
    return j->handle;
  }
  void task_failed(std::exception_ptr e) noexcept {
    std::lock_guard lock(mutex_);
    if (!error_) error_ = std::move(e);
  }

  std::stop_source source_;
  mutable std::mutex mutex_;
  std::size_t running_ = 0;
  join_awaiter* joiner_ = nullptr;
  std::exception_ptr error_;
};

namespace detail {

inline std::coroutine_handle<> spawned_task::promise_type::final_awaiter::await_suspend(
    std::coroutine_handle<promise_type> h) noexcept {
  async_scope* s = h.promise().scope;
  h.destroy();  // the spawned task's frame with it: nothing of it outlives its completion
  return s->task_done();
}

inline void spawned_task::promise_type::unhandled_exception() noexcept { scope->task_failed(std::current_exception()); }

}  // namespace detail

}  // namespace yutu::coro

namespace yutu {
using coro::async_scope;
}
