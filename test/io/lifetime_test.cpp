// The lifetime rule under fire (PhotonLibOS's bug): an awaiter must outlive every completion the
// kernel owes it, its linked timeout's and its ASYNC_CANCEL's included. Each operation here lives in
// a coroutine frame of its own that is freed as soon as the operation returns, so a completion that
// arrived later would touch freed memory and ASan would report it; and after every iteration the
// reactor must owe nothing (in_flight() == 0). A second thread requests stop at random moments while
// a linked timeout of random length runs and data may arrive at the same moment.
#include <doctest/doctest.h>

#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <random>
#include <stop_token>
#include <thread>

#include "io_test_util.hpp"
#include "yutu/io/buffer_ring.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/socket.hpp"

using namespace std::chrono_literals;
using yutu::result;
using yutu::task;
using yutu::io::reactor;
using yutu::io::tcp_stream;

namespace {

// One racing round's plan, handed to the helper thread.
struct round_plan {
  std::stop_source* src = nullptr;
  int stop_spin = -1;  // spins before request_stop, -1: no stop
  int data_spin = -1;  // spins before writing the data, -1: no data
};

// A thread that, per round, requests stop and/or writes `fd` after random spins.
class racer {
 public:
  explicit racer(int data_fd) : fd_(data_fd), th_([this] { loop(); }) {}
  ~racer() {
    plan_ = {};
    quit_ = true;
    go_.fetch_add(1, std::memory_order_release);
    go_.notify_one();
    th_.join();
  }
  void start(round_plan p) {
    plan_ = p;
    go_.fetch_add(1, std::memory_order_release);
    go_.notify_one();
  }
  void wait_done() {
    unsigned want = go_.load(std::memory_order_acquire);
    while (done_.load(std::memory_order_acquire) != want) std::this_thread::yield();
  }

 private:
  static void spin(int n) {
    // A compiler barrier per step keeps the loop from being folded away.
    for (int i = 0; i < n; ++i) std::atomic_signal_fence(std::memory_order_seq_cst);
  }
  void loop() {
    unsigned seen = 0;
    for (;;) {
      go_.wait(seen, std::memory_order_acquire);
      seen = go_.load(std::memory_order_acquire);
      if (quit_) return;
      round_plan p = plan_;
      int first = std::min(p.stop_spin < 0 ? INT32_MAX : p.stop_spin, p.data_spin < 0 ? INT32_MAX : p.data_spin);
      if (first != INT32_MAX) spin(first);
      auto act = [&](bool stop) {
        if (stop) {
          p.src->request_stop();
        } else {
          std::uint64_t one = 1;
          ssize_t k = ::write(fd_, &one, sizeof one);
          (void)k;
        }
      };
      if (p.stop_spin >= 0 && p.data_spin >= 0) {
        bool stop_first = p.stop_spin <= p.data_spin;
        act(stop_first);
        spin(std::abs(p.stop_spin - p.data_spin));
        act(!stop_first);
      } else if (p.stop_spin >= 0) {
        act(true);
      } else if (p.data_spin >= 0) {
        act(false);
      }
      done_.store(seen, std::memory_order_release);
    }
  }

  int fd_;
  round_plan plan_;
  std::atomic<bool> quit_{false};
  std::atomic<unsigned> go_{0}, done_{0};
  std::thread th_;
};

struct outcomes {
  int value = 0, canceled = 0, timed_out = 0, other = 0;
};

void tally(outcomes& o, const std::error_code& ec) {
  if (!ec)
    ++o.value;
  else if (yutu::is_canceled(ec))
    ++o.canceled;
  else if (yutu::is_timeout(ec))
    ++o.timed_out;
  else
    ++o.other;
}

// Each call is a fresh frame, freed when it returns: the op inside must be finished with by then.
task<result<unsigned>> one_poll(int fd, std::chrono::microseconds timeout) {
  co_return co_await yutu::io::poll(fd, POLLIN).with_timeout(timeout);
}
task<result<std::size_t>> one_recv(tcp_stream& s, std::chrono::microseconds timeout) {
  std::byte buf[16];
  co_return co_await s.recv(buf).with_timeout(timeout);
}

}  // namespace

TEST_CASE("linked timeout, cross-thread stop and completion racing: nothing owed after each round") {
  reactor r;
  int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  REQUIRE(efd >= 0);
  outcomes o;
  std::mt19937 rng(12345);
  {
    racer race(efd);
    auto body = [&]() -> task<void> {
      for (int i = 0; i < 4000; ++i) {
        std::stop_source src;
        round_plan p;
        p.src = &src;
        int kind = static_cast<int>(rng() % 4);  // stop only, data only, both, neither (timeout)
        if (kind == 0 || kind == 2) p.stop_spin = static_cast<int>(rng() % 20000);
        if (kind == 1 || kind == 2) p.data_spin = static_cast<int>(rng() % 20000);
        auto timeout = std::chrono::microseconds(1 + rng() % 200);
        race.start(p);
        auto res = co_await one_poll(efd, timeout).with_stop_token(src.get_token());
        race.wait_done();
        if (res) CHECK((*res & POLLIN) != 0);
        tally(o, res ? std::error_code{} : res.error());
        REQUIRE(r.in_flight() == 0);
        std::uint64_t v;
        while (::read(efd, &v, sizeof v) > 0) {
        }
      }
    };
    r.block_on(body());
  }
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
  ::close(efd);
  MESSAGE("poll: ", o.value, " completed, ", o.canceled, " canceled, ", o.timed_out, " timed out");
  CHECK(o.other == 0);
  CHECK(o.value > 0);
  CHECK(o.canceled > 0);
  CHECK(o.timed_out > 0);
}

TEST_CASE("the same race on a socket recv whose data arrives from another thread") {
  reactor r;
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  tcp_stream rx(sv[0]);
  outcomes o;
  std::mt19937 rng(777);
  {
    racer race(sv[1]);
    auto body = [&]() -> task<void> {
      for (int i = 0; i < 3000; ++i) {
        std::stop_source src;
        round_plan p;
        p.src = &src;
        int kind = static_cast<int>(rng() % 4);
        if (kind == 0 || kind == 2) p.stop_spin = static_cast<int>(rng() % 20000);
        if (kind == 1 || kind == 2) p.data_spin = static_cast<int>(rng() % 20000);
        auto timeout = std::chrono::microseconds(1 + rng() % 200);
        race.start(p);
        auto res = co_await one_recv(rx, timeout).with_stop_token(src.get_token());
        race.wait_done();
        tally(o, res ? std::error_code{} : res.error());
        REQUIRE(r.in_flight() == 0);
        std::byte sink[64];
        while (::recv(sv[0], sink, sizeof sink, MSG_DONTWAIT) > 0) {
        }
      }
    };
    r.block_on(body());
  }
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
  ::close(sv[1]);
  MESSAGE("recv: ", o.value, " completed, ", o.canceled, " canceled, ", o.timed_out, " timed out");
  CHECK(o.other == 0);
  CHECK(o.value > 0);
  CHECK(o.canceled > 0);
  CHECK(o.timed_out > 0);
}

TEST_CASE("a stop request racing a multishot next() with a timeout owes nothing either") {
  reactor r;
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  auto ring = yutu::io::buffer_ring::create(r, 9, 8, 64);
  REQUIRE(ring.has_value());
  outcomes o;
  std::mt19937 rng(4242);
  {
    racer race(sv[1]);
    yutu::io::multishot_receiver rx(sv[0], *ring);
    auto next_one = [](yutu::io::multishot_receiver& rx, std::chrono::microseconds t) -> task<std::error_code> {
      auto c = co_await rx.next().with_timeout(t);
      co_return c ? std::error_code{} : c.error();
    };
    auto body = [&]() -> task<void> {
      for (int i = 0; i < 3000; ++i) {
        std::stop_source src;
        round_plan p;
        p.src = &src;
        int kind = static_cast<int>(rng() % 4);
        if (kind == 0 || kind == 2) p.stop_spin = static_cast<int>(rng() % 20000);
        if (kind == 1 || kind == 2) p.data_spin = static_cast<int>(rng() % 20000);
        auto timeout = std::chrono::microseconds(1 + rng() % 200);
        race.start(p);
        auto ec = co_await next_one(rx, timeout).with_stop_token(src.get_token());
        race.wait_done();
        tally(o, ec);
        // Only the armed multishot RECV itself may remain in flight.
        REQUIRE(r.in_flight() == (rx.armed() ? 1u : 0u));
        // Drain what arrived, so every round starts empty.
        while (rx.queued()) (void)co_await rx.next();
      }
    };
    r.block_on(body());
  }
  r.run_until_empty();
  CHECK(r.in_flight() == 0);
  CHECK(ring->available() == 8);
  ::close(sv[1]);
  MESSAGE("multishot: ", o.value, " completed, ", o.canceled, " canceled, ", o.timed_out, " timed out");
  CHECK(o.other == 0);
  CHECK(o.value > 0);
  CHECK(o.canceled > 0);
  CHECK(o.timed_out > 0);
}

TEST_CASE("a reactor destroyed with operations still in the kernel tears down cleanly") {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  tcp_stream a(sv[0]);
  std::vector<task<result<std::size_t>>> stuck;
  for (int i = 0; i < 8; ++i) stuck.push_back(one_recv(a, std::chrono::microseconds(3600LL * 1000000)));
  {
    reactor r;
    auto start_all = [&]() -> task<void> {
      // Start each without awaiting it (no continuation): they park in the kernel.
      for (auto& t : stuck) t.handle().resume();
      co_return;
    };
    r.block_on(start_all());
    r.run_once(false);  // submit
    CHECK(r.in_flight() == 8);
    for (auto& t : stuck) CHECK_FALSE(t.done());
    // ~reactor: io_uring_queue_exit cancels the requests in the kernel; no handler runs any more.
  }
  // The frames can be freed afterwards: the kernel no longer knows them.
  stuck.clear();
  ::close(sv[1]);
}
