// Provided-buffer rings and the multishot receiver that reads a socket through one.
//
// A buffer_ring is a group of equal buffers the kernel picks from when data arrives (IORING
// REGISTER_PBUF_RING, set up by hand: liburing 2.3 lacks io_uring_setup_buf_ring). A
// multishot_receiver arms one multishot RECV on a socket with buffer selection: the kernel keeps
// posting a CQE per chunk it received, each naming the buffer it filled, without an SQE per read.
// The receiver queues those chunks; `co_await rx.next()` hands them out one by one as `received`,
// which gives its buffer back to the ring when destroyed. Memory stays bounded by the ring: when every
// buffer is queued or held by the application the kernel ends the multishot with -ENOBUFS, and the
// receiver re-arms as soon as a buffer comes back (backpressure, not an error).
//
// Lifetimes. The ring and the receivers are bound to one reactor and used on its thread. Everything
// the kernel writes to or may still complete with (buffers, the ring, the receiver's CQE target)
// stays alive until its last CQE: destroying a receiver that is armed cancels the RECV and leaves a
// small orphan that returns late buffers to the ring and frees itself on the final CQE; the ring's
// memory is shared with such orphans. `received` values must be released before their ring dies,
// and the reactor must outlive both (drive it with run_until_empty() before destroying it).
#pragma once

#include <liburing.h>

#include <atomic>
#include <chrono>
#include <coroutine>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <utility>

#include "yutu/coro/executor.hpp"
#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

namespace yutu::io {

class tcp_stream;
class multishot_receiver;
class rx_next_op;

namespace detail {
struct rx_state;

struct buf_ring_state {
  reactor* r = nullptr;
  io_uring_buf_ring* br = nullptr;
  std::size_t ring_bytes = 0;
  std::byte* mem = nullptr;
  unsigned count = 0;
  unsigned mask = 0;
  std::size_t buf_size = 0;
  std::uint16_t group = 0;
  bool registered = false;
  unsigned in_kernel = 0;  // buffers the kernel may pick
  unsigned lent = 0;       // buffers handed out as `received`
  rx_state* starved = nullptr;  // receivers waiting for a buffer to come back (intrusive list)

  std::byte* buffer(std::uint16_t bid) const noexcept { return mem + std::size_t(bid) * buf_size; }
  // Gives `bid` back to the kernel and re-arms starved receivers.
  void recycle(std::uint16_t bid) noexcept;
  ~buf_ring_state();
};
}  // namespace detail

class buffer_ring {
 public:
  // `count` buffers of `buf_size` bytes in group `group_id` of `r`'s ring. count must be a power of
  // two up to 32768. Call it on r's thread once r is driven, or before r ever ran (a single-issuer
  // ring accepts registrations only from its issuer).
  static result<buffer_ring> create(reactor& r, std::uint16_t group_id, unsigned count, std::size_t buf_size);

  buffer_ring() noexcept = default;
  buffer_ring(buffer_ring&&) noexcept = default;
  buffer_ring& operator=(buffer_ring&&) noexcept = default;
  ~buffer_ring() = default;

  std::uint16_t group_id() const noexcept { return s_->group; }
  unsigned count() const noexcept { return s_->count; }
  std::size_t buffer_size() const noexcept { return s_->buf_size; }
  // Buffers the kernel may fill right now (those not queued in a receiver or held as `received`).
  unsigned available() const noexcept { return s_->in_kernel; }
  unsigned lent() const noexcept { return s_->lent; }
  reactor& owner() const noexcept { return *s_->r; }
  bool valid() const noexcept { return static_cast<bool>(s_); }

 private:
  friend class multishot_receiver;
  std::shared_ptr<detail::buf_ring_state> s_;
};

// One chunk of received bytes, in a ring buffer that returns to the ring when this is destroyed.
class received {
 public:
  received() noexcept = default;
  received(received&& o) noexcept
      : ring_(std::exchange(o.ring_, nullptr)), bid_(o.bid_), len_(o.len_) {}
  received& operator=(received&& o) noexcept {
    if (this != &o) {
      release();
      ring_ = std::exchange(o.ring_, nullptr);
      bid_ = o.bid_;
      len_ = o.len_;
    }
    return *this;
  }
  received(const received&) = delete;
  received& operator=(const received&) = delete;
  ~received() { release(); }

  std::span<const std::byte> data() const noexcept {
    return ring_ ? std::span<const std::byte>(ring_->buffer(bid_), len_) : std::span<const std::byte>{};
  }
  std::size_t size() const noexcept { return ring_ ? len_ : 0; }
  std::uint16_t buffer_id() const noexcept { return bid_; }
  // Returns the buffer to the ring now (owner thread).
  void release() noexcept {
    if (ring_) {
      --ring_->lent;
      std::exchange(ring_, nullptr)->recycle(bid_);
    }
  }

 private:
  friend struct detail::rx_state;
  received(detail::buf_ring_state* ring, std::uint16_t bid, std::size_t len) noexcept
      : ring_(ring), bid_(bid), len_(len) {}
  detail::buf_ring_state* ring_ = nullptr;
  std::uint16_t bid_ = 0;
  std::size_t len_ = 0;
};

namespace detail {

// What the kernel completes against (the multishot RECV and its ASYNC_CANCEL). Heap-allocated so it
// can outlive a receiver destroyed while armed.
struct rx_state : io_completion {
  struct entry {
    std::uint16_t bid;
    std::uint32_t len;
  };
  struct cancel_completion : io_completion {
    rx_state* owner = nullptr;
  };

  rx_state(int fd_, std::shared_ptr<buf_ring_state> ring_);
  ~rx_state();

  void arm() noexcept;
  void cancel() noexcept;
  void on_recv(int res, std::uint32_t flags) noexcept;
  // The receiver is gone: drop queued buffers, cancel, free once the kernel owes nothing.
  void orphan() noexcept;
  void maybe_free() noexcept;
  bool has_entry() const noexcept { return q_len != 0; }
  received pop() noexcept;
  void leave_starved_list() noexcept;

  reactor* r;
  int fd;
  std::shared_ptr<buf_ring_state> ring;
  std::unique_ptr<entry[]> q;  // circular; never more entries than ring buffers
  unsigned q_cap = 0, q_head = 0, q_len = 0;
  bool armed = false;
  bool is_starved = false;
  bool orphaned = false;
  unsigned cancels = 0;       // ASYNC_CANCEL completions still owed
  std::error_code final_;     // EOF (errc::closed) or the error that ended the stream
  rx_next_op* waiter = nullptr;
  rx_state* next_starved = nullptr;
  cancel_completion cancel_cqe;
  std::uint64_t arms = 0, enobufs = 0;
};

}  // namespace detail

// `co_await rx.next()`: the next chunk, or the error that ended the stream (errc::closed on EOF).
// Cancellable by stop token; `.with_timeout(d)` fails a wait with timed_out. Neither loses data: a
// chunk that arrives after a wait ended is queued for the next call. One next() at a time.
class rx_next_op : private io_completion {
 public:
  explicit rx_next_op(detail::rx_state* s) noexcept : s_(s) { on_cqe = &timer_cqe; }
  rx_next_op(rx_next_op&& o) noexcept
      : s_(o.s_), token_(std::move(o.token_)), explicit_token_(o.explicit_token_), ts_(o.ts_),
        has_timeout_(o.has_timeout_) {
    on_cqe = &timer_cqe;
  }
  rx_next_op(const rx_next_op&) = delete;
  rx_next_op& operator=(const rx_next_op&) = delete;

  rx_next_op&& with_stop_token(std::stop_token t) && noexcept {
    token_ = std::move(t);
    explicit_token_ = true;
    return std::move(*this);
  }
  template <class Rep, class Period>
  rx_next_op&& with_timeout(std::chrono::duration<Rep, Period> d) && noexcept {
    ts_ = to_timespec(std::chrono::duration_cast<std::chrono::nanoseconds>(d));
    has_timeout_ = true;
    return std::move(*this);
  }

  bool await_ready() noexcept { return s_->has_entry() || s_->final_; }
  template <class P>
  bool await_suspend(std::coroutine_handle<P> h) noexcept {
    if (!explicit_token_) token_ = coro::detail::stop_token_of(h);
    return suspend(h);
  }
  result<received> await_resume() noexcept;

 private:
  friend struct detail::rx_state;
  friend class multishot_receiver;
  struct cancel_item : coro::work_item {
    rx_next_op* op;
  };
  struct sub_completion : io_completion {
    rx_next_op* owner = nullptr;
  };
  struct stop_fn {
    rx_next_op* op;
    void operator()() noexcept;
  };

  bool suspend(std::coroutine_handle<> h) noexcept;
  // The wait is over (data, end of stream, timeout, stop): remove the timer and resume once every
  // completion owed to this awaiter arrived.
  void decide(std::error_code ec) noexcept;
  void try_finish() noexcept;
  void on_stop_item() noexcept;
  void resume() noexcept;
  static void timer_cqe(io_completion* c, int res, std::uint32_t flags) noexcept;
  static void remove_cqe(io_completion* c, int res, std::uint32_t flags) noexcept;

  detail::rx_state* s_;
  std::stop_token token_;
  bool explicit_token_ = false;
  __kernel_timespec ts_{};
  bool has_timeout_ = false;

  reactor* r_ = nullptr;
  std::coroutine_handle<> waiter_;
  bool decided_ = false;
  bool has_value_ = false;
  bool defer_resume_ = false;
  received value_;
  coro::resume_item resume_item_;
  std::error_code ec_;
  int pending_ = 0;  // the timer's CQE and its TIMEOUT_REMOVE's
  bool timer_armed_ = false;
  std::optional<std::stop_callback<stop_fn>> stop_cb_;
  std::atomic<std::uint8_t> stop_state_{0};  // 0 none, 1 posted, 2 processed
  bool resume_after_drain_ = false;
  cancel_item stop_item_;
  sub_completion remove_cqe_;
};

class multishot_receiver {
 public:
  // Reads `fd` (a connected stream socket) through `ring`; arms on the first next().
  multishot_receiver(int fd, buffer_ring& ring);
  multishot_receiver(const tcp_stream& s, buffer_ring& ring);
  multishot_receiver(multishot_receiver&& o) noexcept : s_(std::exchange(o.s_, nullptr)) {}
  multishot_receiver& operator=(multishot_receiver&& o) noexcept {
    if (this != &o) {
      reset();
      s_ = std::exchange(o.s_, nullptr);
    }
    return *this;
  }
  multishot_receiver(const multishot_receiver&) = delete;
  multishot_receiver& operator=(const multishot_receiver&) = delete;
  // Cancels an armed RECV; the kernel's last completions are absorbed by an orphan (see above).
  ~multishot_receiver() { reset(); }

  rx_next_op next() noexcept { return rx_next_op(s_); }

  // Chunks received and not yet taken.
  std::size_t queued() const noexcept { return s_ ? s_->q_len : 0; }
  bool armed() const noexcept { return s_ && s_->armed; }
  // How often the RECV was (re-)armed and how often it ran out of buffers.
  std::uint64_t arms() const noexcept { return s_ ? s_->arms : 0; }
  std::uint64_t enobufs() const noexcept { return s_ ? s_->enobufs : 0; }

 private:
  void reset() noexcept;
  detail::rx_state* s_ = nullptr;
};

}  // namespace yutu::io
