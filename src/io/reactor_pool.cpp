// reactor_pool: thread start-up with error propagation, detached tasks, orderly shutdown.
#include "yutu/io/reactor_pool.hpp"

#include <cstdio>

namespace yutu::io {

reactor_pool::reactor_pool(std::size_t threads, reactor_options opts) {
  if (threads == 0) throw std::invalid_argument("reactor_pool needs at least one thread");
  reactors_.assign(threads, nullptr);
  std::exception_ptr first_error;
  std::size_t started = 0;
  threads_.reserve(threads);
  for (std::size_t i = 0; i < threads; ++i) {
    threads_.emplace_back([this, i, opts, &first_error, &started] {
      std::unique_ptr<reactor> r;
      try {
        r = std::make_unique<reactor>(opts);
      } catch (...) {
        std::lock_guard lk(m_);
        if (!first_error) first_error = std::current_exception();
      }
      {
        std::lock_guard lk(m_);
        reactors_[i] = r.get();
        ++started;
      }
      cv_.notify_all();
      if (!r) return;
      r->run();
      // Whatever still sits in the ready queue after stop ran in run(); what the kernel still owes is
      // cancelled and reaped by the ring's teardown, on this thread, before `r` goes away.
    });
  }
  std::unique_lock lk(m_);
  cv_.wait(lk, [&] { return started == threads; });
  if (first_error) {
    lk.unlock();
    for (reactor* r : reactors_)
      if (r) r->stop();
    for (auto& t : threads_) t.join();
    threads_.clear();
    std::rethrow_exception(first_error);
  }
}

reactor_pool::~reactor_pool() { stop_and_join(); }

void reactor_pool::check_usable(std::size_t i) const {
  if (i >= reactors_.size()) throw std::out_of_range("reactor_pool: no such reactor");
  {
    std::lock_guard lk(m_);
    if (stopped_) throw std::logic_error("reactor_pool: used after stop_and_join");
  }
  if (reactor::current() == reactors_[i])
    throw std::logic_error("reactor_pool::block_on called on the reactor it would wait for");
}

detail::pool_detached reactor_pool::run_detached(reactor_pool* pool, task<void> t) {
  {
    // The task's frame (and what it owns) goes away before the pool learns it finished.
    task<void> local = std::move(t);
    co_await local;
  }
  pool->task_finished();
}

void reactor_pool::task_finished() noexcept {
  // Notify under the lock: once outstanding_ reads 0 the pool may be destroyed.
  std::lock_guard lk(m_);
  if (--outstanding_ == 0) cv_.notify_all();
}

void reactor_pool::spawn(std::size_t i, task<void> t) {
  if (i >= reactors_.size()) throw std::out_of_range("reactor_pool: no such reactor");
  {
    std::lock_guard lk(m_);
    if (stopped_) throw std::logic_error("reactor_pool: spawn after stop_and_join");
    ++outstanding_;
  }
  auto d = run_detached(this, std::move(t));
  auto& p = d.h.promise();
  p.start.handle = d.h;
  reactors_[i]->post(&p.start);
}

std::size_t reactor_pool::outstanding() const {
  std::lock_guard lk(m_);
  return outstanding_;
}

void reactor_pool::stop_and_join() {
  {
    std::unique_lock lk(m_);
    if (stopped_) return;
    cv_.wait(lk, [this] { return outstanding_ == 0; });
    stopped_ = true;
  }
  for (reactor* r : reactors_)
    if (r) r->stop();
  for (auto& t : threads_)
    if (t.joinable()) t.join();
}

}  // namespace yutu::io
