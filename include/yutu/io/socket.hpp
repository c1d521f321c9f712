// TCP sockets on the reactor: a listener, a stream, and one io_uring awaitable per operation.
//
// Every operation is a uring_op, so `.with_timeout(d)` (a linked timeout: std::errc::timed_out) and
// cancellation by stop token (std::errc::operation_canceled) work on each of them, and an awaiter is
// never destroyed while the kernel still owes it a completion. Sockets are blocking fds: io_uring
// arms its own poll for them, and a blocking fd keeps the synchronous helpers (shutdown, options)
// simple. Sends use MSG_NOSIGNAL: a peer that went away is an EPIPE value, not a signal.
//
// send_zc completes only after the kernel's notification CQE, i.e. when the kernel no longer reads
// the caller's buffer; send_all picks it for large chunks where the kernel supports it.
#pragma once

#include <liburing.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <span>
#include <utility>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"

namespace yutu::io {

class tcp_stream;

namespace detail {
// The kernel caps one socket transfer at MAX_RW_COUNT (INT_MAX rounded down to a page); an SQE's
// length is 32 bits. Larger spans are sent or received in pieces by the *_all / *_exact loops.
inline constexpr std::size_t max_io_chunk = std::size_t{1} << 30;
inline unsigned clamp_len(std::size_t n) noexcept {
  return static_cast<unsigned>(n < max_io_chunk ? n : max_io_chunk);
}
}  // namespace detail

// recv(2) through the ring. 0 bytes means the peer closed its side (orderly EOF).
class recv_op : public uring_op<recv_op> {
 public:
  recv_op(int fd, std::span<std::byte> buf, int flags = 0) noexcept : fd_(fd), buf_(buf), flags_(flags) {}
  recv_op(recv_op&& o) noexcept : uring_op<recv_op>(std::move(o)), fd_(o.fd_), buf_(o.buf_), flags_(o.flags_) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_recv(sqe, fd_, buf_.data(), detail::clamp_len(buf_.size()), flags_);
  }
  result<std::size_t> await_resume() const noexcept {
    if (auto ec = error()) return fail(ec);
    return static_cast<std::size_t>(res_);
  }

 private:
  int fd_;
  std::span<std::byte> buf_;
  int flags_;
};

// send(2) through the ring; may send fewer bytes than asked (see tcp_stream::send_all).
class send_op : public uring_op<send_op> {
 public:
  send_op(int fd, std::span<const std::byte> buf, int flags = MSG_NOSIGNAL) noexcept
      : fd_(fd), buf_(buf), flags_(flags) {}
  send_op(send_op&& o) noexcept : uring_op<send_op>(std::move(o)), fd_(o.fd_), buf_(o.buf_), flags_(o.flags_) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    io_uring_prep_send(sqe, fd_, buf_.data(), detail::clamp_len(buf_.size()), flags_);
  }
  result<std::size_t> await_resume() const noexcept {
    if (auto ec = error()) return fail(ec);
    return static_cast<std::size_t>(res_);
  }

 private:
  int fd_;
  std::span<const std::byte> buf_;
  int flags_;
};

namespace detail {
// The CQE bookkeeping of a zero-copy send: the result CQE says (IORING_CQE_F_MORE) whether a
// notification (IORING_CQE_F_NOTIF) follows; on_cqe is true while one is owed.
struct zc_notice {
  bool notified = false;
  bool on_cqe(std::uint32_t flags) noexcept {
    if (flags & IORING_CQE_F_NOTIF) {
      notified = true;
      return false;
    }
    return (flags & IORING_CQE_F_MORE) != 0;
  }
};

// What send_zc_op and sendmsg_zc_op share: whether the ring takes zero-copy sends (decided when the
// SQE is prepared), the result-and-notification bookkeeping, and the result.
template <class Derived>
class zc_send_op : public uring_op<Derived> {
 public:
  zc_send_op() noexcept = default;
  zc_send_op(zc_send_op&& o) noexcept : uring_op<Derived>(std::move(o)) {}
  // Called for each CQE of the SQE; true while another one is owed.
  bool on_result(int, std::uint32_t flags) noexcept { return notice_.on_cqe(flags); }
  result<std::size_t> await_resume() const noexcept {
    if (auto ec = this->error()) return fail(ec);
    return static_cast<std::size_t>(this->res_);
  }
  // Whether the kernel took the zero-copy path and sent its notification (false after a fallback).
  bool used_zero_copy() const noexcept { return zc_ && notice_.notified; }

 protected:
  // In prepare(): whether to prepare the zero-copy form of the SQE.
  bool choose_zero_copy() noexcept { return zc_ = reactor::current()->features().send_zc; }

 private:
  bool zc_ = false;
  zc_notice notice_;
};
}  // namespace detail

// IORING_OP_SEND_ZC: the kernel sends from the caller's pages. Two CQEs: the result (flagged
// IORING_CQE_F_MORE when a notification follows, also on error) and the notification
// (IORING_CQE_F_NOTIF) once the kernel released the pages. uring_op resumes only after both, so the
// buffer may be reused as soon as co_await returns. Where the ring lacks SEND_ZC this is a plain send.
class send_zc_op : public detail::zc_send_op<send_zc_op> {
 public:
  send_zc_op(int fd, std::span<const std::byte> buf, int flags = MSG_NOSIGNAL) noexcept
      : fd_(fd), buf_(buf), flags_(flags) {}
  send_zc_op(send_zc_op&& o) noexcept
      : detail::zc_send_op<send_zc_op>(std::move(o)), fd_(o.fd_), buf_(o.buf_), flags_(o.flags_) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    if (choose_zero_copy())
      io_uring_prep_send_zc(sqe, fd_, buf_.data(), detail::clamp_len(buf_.size()), flags_, 0);
    else
      io_uring_prep_send(sqe, fd_, buf_.data(), detail::clamp_len(buf_.size()), flags_);
  }

 private:
  int fd_;
  std::span<const std::byte> buf_;
  int flags_;
};

// sendmsg(2) through the ring: several buffers (iovecs) in one call. The msghdr and its iovecs must
// outlive the await. With MSG_WAITALL (the default flags) io_uring retries short sends itself.
class sendmsg_op : public uring_op<sendmsg_op> {
 public:
  sendmsg_op(int fd, const msghdr* m, int flags = MSG_NOSIGNAL | MSG_WAITALL) noexcept
      : fd_(fd), msg_(m), flags_(flags) {}
  sendmsg_op(sendmsg_op&& o) noexcept : uring_op<sendmsg_op>(std::move(o)), fd_(o.fd_), msg_(o.msg_), flags_(o.flags_) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_sendmsg(sqe, fd_, msg_, static_cast<unsigned>(flags_)); }
  result<std::size_t> await_resume() const noexcept {
    if (auto ec = error()) return fail(ec);
    return static_cast<std::size_t>(res_);
  }

 private:
  int fd_;
  const msghdr* msg_;
  int flags_;
};

// IORING_OP_SENDMSG_ZC: sendmsg_op from the caller's pages, with send_zc_op's two completions (the
// await returns after the notification, so the buffers are the caller's again). Where the ring lacks
// SEND_ZC this is a plain sendmsg.
class sendmsg_zc_op : public detail::zc_send_op<sendmsg_zc_op> {
 public:
  sendmsg_zc_op(int fd, const msghdr* m, int flags = MSG_NOSIGNAL | MSG_WAITALL) noexcept
      : fd_(fd), msg_(m), flags_(flags) {}
  sendmsg_zc_op(sendmsg_zc_op&& o) noexcept
      : detail::zc_send_op<sendmsg_zc_op>(std::move(o)), fd_(o.fd_), msg_(o.msg_), flags_(o.flags_) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    if (choose_zero_copy())
      io_uring_prep_sendmsg_zc(sqe, fd_, msg_, static_cast<unsigned>(flags_));
    else
      io_uring_prep_sendmsg(sqe, fd_, msg_, static_cast<unsigned>(flags_));
  }

 private:
  int fd_;
  const msghdr* msg_;
  int flags_;
};

// Sends every byte of the iovecs (advancing them as it goes): a non-blocking sendmsg(2) first, the
// ring only for what did not fit, as tcp_stream::send_all does for one buffer. Fails like send_all:
// a prefix may have been sent.
task<result<void>> send_all_iov(int fd, std::span<iovec> iov);

// Sends every byte of `bytes` within `timeout` (std::errc::timed_out past it), through the ring: a
// caller that queues frames while this is in flight sends them together next (the store RPC's
// batching). Deaf to stop requests on purpose: a send cut short would leave half a frame on a framed
// stream. errc::closed if the peer takes nothing.
task<result<void>> send_all_within(int fd, std::span<const std::byte> bytes, std::chrono::milliseconds timeout);

// connect(2) through the ring; owns the new socket until it is handed to the resulting tcp_stream.
class connect_op : public uring_op<connect_op> {
 public:
  explicit connect_op(const address& to) noexcept;
  connect_op(connect_op&& o) noexcept
      : uring_op<connect_op>(std::move(o)),
        to_(o.to_),
        fd_(std::exchange(o.fd_, -1)),
        socket_error_(o.socket_error_) {}
  ~connect_op() {
    if (fd_ >= 0) ::close(fd_);
  }
  void prepare(io_uring_sqe* sqe) noexcept {
    // A socket that could not be created still goes through the ring (as a NOP) so the op keeps the
    // uniform await protocol; await_resume reports the socket error.
    if (fd_ < 0)
      io_uring_prep_nop(sqe);
    else
      io_uring_prep_connect(sqe, fd_, to_.data(), to_.size());
  }
  result<tcp_stream> await_resume() noexcept;

 private:
  address to_;
  int fd_ = -1;
  int socket_error_ = 0;
};

// accept4(2) through the ring; the new stream gets TCP_NODELAY and FD_CLOEXEC.
class accept_op : public uring_op<accept_op> {
 public:
  explicit accept_op(int fd) noexcept : fd_(fd) {}
  accept_op(accept_op&& o) noexcept : uring_op<accept_op>(std::move(o)), fd_(o.fd_) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_accept(sqe, fd_, nullptr, nullptr, SOCK_CLOEXEC); }
  result<tcp_stream> await_resume() noexcept;

 private:
  int fd_;
};

// A connected TCP socket. Move-only; closes its fd. Operations borrow the stream: it must outlive
// every operation awaited on it.
class tcp_stream {
 public:
  // Chunks at least this large go out with SEND_ZC in send_all, to a peer that is not on this host.
  //
  // Measured with bench/socket_zc_bench (kernel 6.18, loopback, one op in flight as send_all issues
  // them, best of 5): SEND_ZC/send throughput was 0.21 at 4 KiB, 0.48 at 16 KiB, 0.73 at 32 KiB,
  // 0.42-0.93 at 64 KiB, 0.49-1.21 at 256 KiB, 0.79 at 1 MiB, 0.68 at 4 MiB. On loopback zero copy
  // never pays: the receiving socket copies the pages anyway (skb_orphan_frags_rx) and the sender also
  // waits for the notification. So send_all's automatic policy never uses it towards a local peer,
  // and for remote peers keeps the threshold at 64 KiB, above the ~10 KiB where the kernel's
  // MSG_ZEROCOPY documentation finds page pinning starts to beat copying on a real NIC, and at the
  // size where the loopback penalty (the fixed notification cost) had mostly faded.
  static constexpr std::size_t zc_threshold = 64 * 1024;

  // When send_all uses SEND_ZC: automatic (large chunks to a remote peer), always (large chunks to
  // any peer), never.
  enum class zc_policy : std::uint8_t { automatic, always, never };

  tcp_stream() noexcept = default;
  explicit tcp_stream(int fd) noexcept : fd_(fd) {}
  tcp_stream(tcp_stream&& o) noexcept
      : fd_(std::exchange(o.fd_, -1)), zc_(o.zc_), route_(std::exchange(o.route_, route::unknown)) {}
  tcp_stream& operator=(tcp_stream&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
      zc_ = o.zc_;
      route_ = std::exchange(o.route_, route::unknown);
    }
    return *this;
  }
  tcp_stream(const tcp_stream&) = delete;
  tcp_stream& operator=(const tcp_stream&) = delete;
  ~tcp_stream() { close(); }

  static connect_op connect(const address& to) noexcept { return connect_op(to); }

  recv_op recv(std::span<std::byte> buf) noexcept { return recv_op(fd_, buf); }
  send_op send(std::span<const std::byte> buf) noexcept { return send_op(fd_, buf); }
  send_zc_op send_zc(std::span<const std::byte> buf) noexcept { return send_zc_op(fd_, buf); }

  // Sends every byte, looping over short writes; chunks >= zc_threshold use SEND_ZC where supported.
  // On error some prefix may have been sent: the stream is then unusable for framed protocols.
  task<result<void>> send_all(std::span<const std::byte> buf);
  // Fills `buf` completely; EOF before that is errc::closed.
  task<result<void>> recv_exact(std::span<std::byte> buf);

  // Sends FIN; the peer reads EOF and may still send to us.
  result<void> shutdown_write() noexcept;
  void close() noexcept;
  // Gives up ownership of the fd.
  int release() noexcept { return std::exchange(fd_, -1); }

  int fd() const noexcept { return fd_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  address peer_address() const noexcept;
  address local_address() const noexcept;

  result<void> set_nodelay(bool on) noexcept;
  result<void> set_send_buffer_size(int bytes) noexcept;
  result<void> set_recv_buffer_size(int bytes) noexcept;
  // SO_LINGER; (true, 0) makes close() send RST instead of FIN and skip TIME_WAIT.
  result<void> set_linger(bool on, int seconds) noexcept;
  // TCP keepalive: after `idle_s` seconds without traffic, `count` probes `interval_s` apart; a peer
  // whose host died (no FIN, no RST) then fails the connection's pending and next operations instead
  // of holding it open for ever.
  result<void> set_keepalive(int idle_s, int interval_s, int count) noexcept;
  void set_zero_copy(zc_policy p) noexcept { zc_ = p; }
  // Whether the policy calls for SEND_ZC on this stream's large chunks (under automatic: the peer is
  // on another host). For callers that build their own sends, as the transfer engine does.
  bool zero_copy_pays() noexcept;

 private:
  enum class route : std::uint8_t { unknown, local, remote };

  int fd_ = -1;
  zc_policy zc_ = zc_policy::automatic;
  route route_ = route::unknown;  // whether the peer is on this host, learnt on the first send_all
};

// A listening TCP socket (SO_REUSEADDR). Move-only; closes its fd.
class tcp_listener {
 public:
  tcp_listener() noexcept = default;
  tcp_listener(tcp_listener&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  tcp_listener& operator=(tcp_listener&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  tcp_listener(const tcp_listener&) = delete;
  tcp_listener& operator=(const tcp_listener&) = delete;
  ~tcp_listener() { close(); }

  // Port 0 picks a free port; local_address() tells which.
  static result<tcp_listener> bind(const address& at, int backlog = 1024) noexcept;
  address local_address() const noexcept;
  accept_op accept() noexcept { return accept_op(fd_); }
  int fd() const noexcept { return fd_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  void close() noexcept;

 private:
  int fd_ = -1;
};

// --- inline definitions that need tcp_stream complete ---

namespace detail {
result<void> set_int_option(int fd, int level, int name, int value) noexcept;
}

inline result<tcp_stream> connect_op::await_resume() noexcept {
  if (socket_error_) return fail_errno(-socket_error_);
  if (auto ec = error()) return fail(ec);
  tcp_stream s(std::exchange(fd_, -1));
  // Latency over coalescing: frames are written whole, so Nagle only adds delay.
  (void)s.set_nodelay(true);
  return s;
}

inline result<tcp_stream> accept_op::await_resume() noexcept {
  if (auto ec = error()) return fail(ec);
  tcp_stream s(res_);
  (void)s.set_nodelay(true);
  return s;
}

}  // namespace yutu::io
