// Shared fixtures of the coro tests: a reactor driven by a thread of its own, and small tasks.
#pragma once

#include <atomic>
#include <random>
#include <thread>
#include <utility>

#include "yutu/coro/sync_wait.hpp"
#include "yutu/coro/task.hpp"
#include "yutu/coro/when_all.hpp"
#include "yutu/io/reactor.hpp"

namespace yutu::test {

// A reactor running run() on its own thread; stopped and joined on destruction.
struct reactor_thread {
  io::reactor r;  // created here, enabled by the first thread that drives it: th
  std::thread th;

  reactor_thread() : th([this] { r.run(); }) {}
  ~reactor_thread() {
    r.stop();
    th.join();
  }
  reactor_thread(const reactor_thread&) = delete;
  reactor_thread& operator=(const reactor_thread&) = delete;

  std::thread::id id() const { return th.get_id(); }
};

// Hops onto `r`'s thread.
inline task<void> hop(io::reactor& r) { co_await r.schedule(); }

namespace detail {
// Two threads that start `a` and `b` as close together as possible.
template <class A, class B>
struct racers {
  racers(A a_, B b_) : a(std::move(a_)), b(std::move(b_)) {}
  A a;
  B b;
  std::atomic<int> ready{0};
  std::thread ta, tb;
  void go() {
    // Whichever thread is created second tends to start first: pick the order at random.
    if (std::random_device{}() & 1) {
      ta = std::thread([this] { run(a); });
      tb = std::thread([this] { run(b); });
    } else {
      tb = std::thread([this] { run(b); });
      ta = std::thread([this] { run(a); });
    }
  }
  template <class F>
  void run(F& f) {
    // A random head start of up to a few microseconds, so that neither side always wins and the
    // close calls (both inside at once) happen too.
    thread_local std::minstd_rand rng(std::random_device{}());
    unsigned spins = rng() % 2048;
    ready.fetch_add(1);
    while (ready.load() < 2) std::this_thread::yield();
    for (unsigned i = 0; i < spins; ++i) spin_sink.fetch_add(1, std::memory_order_relaxed);
    f();
  }
  std::atomic<unsigned> spin_sink{0};
  void join() {
    ta.join();
    tb.join();
  }
};
template <class R>
task<void> start_racers(R& r) {
  r.go();
  co_return;
}
template <class R>
task<void> wait_and_race(io::reactor* home, task<void> waiter, R& r) {
  if (home) co_await home->schedule();
  // when_all starts its children in order: the waiter has suspended when the racers start.
  auto w = start_racers(r);
  co_await when_all(std::move(waiter), std::move(w));
}
}  // namespace detail

// Starts `waiter` on `home`'s thread (on this thread if null) and, once it has suspended, runs `a` and
// `b` on two fresh threads at the same moment; returns when the waiter finished and both threads ended.
template <class A, class B>
void race_two(io::reactor* home, task<void> waiter, A a, B b) {
  detail::racers<A, B> r(std::move(a), std::move(b));
  sync_wait(detail::wait_and_race(home, std::move(waiter), r));
  r.join();
}

}  // namespace yutu::test
