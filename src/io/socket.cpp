// tcp_stream and tcp_listener: socket setup, options, and the send_all / recv_exact loops.
#include "yutu/io/socket.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cerrno>
#include <cstring>

namespace yutu::io {

namespace detail {
result<void> set_int_option(int fd, int level, int name, int value) noexcept {
  if (::setsockopt(fd, level, name, &value, sizeof value) != 0) return fail_errno(-errno);
  return ok();
}
}  // namespace detail

namespace {
address sock_name(int fd, bool peer) noexcept {
  sockaddr_storage ss{};
  socklen_t len = sizeof ss;
  int rc = peer ? ::getpeername(fd, reinterpret_cast<sockaddr*>(&ss), &len)
                : ::getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &len);
  if (rc != 0) return {};
  return address::from_sockaddr(reinterpret_cast<sockaddr*>(&ss), len);
}
}  // namespace

connect_op::connect_op(const address& to) noexcept : to_(to) {
  fd_ = ::socket(to.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (fd_ < 0) socket_error_ = errno;
}

namespace {
// Whether `a` is an address of this host's loopback device: 127/8, ::1, or ::ffff:127/104.
bool is_loopback(const address& a) noexcept {
  if (a.family() == AF_INET) {
    auto ip = ntohl(reinterpret_cast<const sockaddr_in*>(a.data())->sin_addr.s_addr);
    return (ip >> 24) == 127;
  }
  if (a.family() == AF_INET6) {
    const in6_addr& ip = reinterpret_cast<const sockaddr_in6*>(a.data())->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(&ip)) return true;
    return IN6_IS_ADDR_V4MAPPED(&ip) && ip.s6_addr[12] == 127;
  }
  return a.family() == AF_UNIX;
}

bool same_host(const address& a, const address& b) noexcept {
  if (a.family() != b.family()) return false;
  if (a.family() == AF_INET)
    return reinterpret_cast<const sockaddr_in*>(a.data())->sin_addr.s_addr ==
           reinterpret_cast<const sockaddr_in*>(b.data())->sin_addr.s_addr;
  if (a.family() == AF_INET6)
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a.data())->sin6_addr,
                       &reinterpret_cast<const sockaddr_in6*>(b.data())->sin6_addr, sizeof(in6_addr)) == 0;
  return false;
}
}  // namespace

bool tcp_stream::zero_copy_pays() noexcept {
  if (zc_ == zc_policy::never) return false;
  if (zc_ == zc_policy::always) return true;
  if (route_ == route::unknown) {
    // A peer on this host goes through the loopback device whatever its address (ours included).
    address peer = peer_address();
    route_ = (is_loopback(peer) || same_host(peer, local_address())) ? route::local : route::remote;
  }
  return route_ == route::remote;
}

task<result<void>> tcp_stream::send_all(std::span<const std::byte> buf) {
  const bool zc = buf.size() >= zc_threshold && reactor::current() &&
                  reactor::current()->features().send_zc && zero_copy_pays();
  bool zc_refused = false;
  if (!zc && !buf.empty()) {
    // Fast path: a send into free socket-buffer space is a memcpy, so try it right here, non-blocking,
    // and use the ring only for what did not fit. It saves one io_uring operation and one loop turn per
    // message, which is most of the gap to a blocking socket in request/reply traffic (see
    // docs/performance.md). A cancelled task still sends nothing.
    if ((co_await coro::get_stop_token()).stop_requested())
      co_return fail(std::make_error_code(std::errc::operation_canceled));
    const ssize_t n = ::send(fd_, buf.data(), buf.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    if (n > 0) {
      buf = buf.subspan(static_cast<std::size_t>(n));
    } else if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      co_return fail_errno(-errno);
    }
  }
  while (!buf.empty()) {
    result<std::size_t> n;
    if (zc && !zc_refused && buf.size() >= zc_threshold) {
      n = co_await send_zc(buf);
      // A socket type or device without zero-copy support answers EOPNOTSUPP: stop asking.
      if (!n && n.error() == std::errc::operation_not_supported) {
        zc_refused = true;
        zc_ = zc_policy::never;
        continue;
      }
    } else {
      n = co_await send(buf);
    }
    if (!n) co_return fail(n.error());
    // A stream socket with room never accepts 0 bytes of a non-empty send; guard against a spin.
    if (*n == 0) co_return fail(errc::closed);
    buf = buf.subspan(*n);
  }
  co_return ok();
}

task<result<void>> send_all_within(int fd, std::span<const std::byte> bytes, std::chrono::milliseconds timeout) {
  const auto deadline = clock::now() + timeout;
  // Through the ring, not tried inline first: while this send is in flight the caller's later
  // frames queue behind it and leave together. Inline sends made one syscall per RPC frame, and
  // master_bench's single-key calls fell from 136-172 K/s to 78-98 K/s.
  while (!bytes.empty()) {
    auto left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - clock::now());
    if (left.count() <= 0) co_return fail(std::errc::timed_out);
    auto r = co_await send_op(fd, bytes).with_stop_token(std::stop_token{}).with_timeout(left);
    if (!r) co_return fail(r.error());
    if (*r == 0) co_return fail(errc::closed);
    bytes = bytes.subspan(*r);
  }
  co_return ok();
}

task<result<void>> send_all_iov(int fd, std::span<iovec> iov) {
  iovec* v = iov.data();
  std::size_t n = iov.size();
  bool first = true;
  while (n > 0) {
    msghdr m{};
    m.msg_iov = v;
    m.msg_iovlen = n;
    std::size_t sent = 0;
    if (first) {
      // As in send_all: into free socket-buffer space a send is a memcpy, so try it here,
      // non-blocking, and use the ring only for what did not fit.
      first = false;
      const ssize_t k = ::sendmsg(fd, &m, MSG_DONTWAIT | MSG_NOSIGNAL);
      if (k < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) co_return fail_errno(-errno);
      if (k > 0) sent = static_cast<std::size_t>(k);
    }
    if (sent == 0) {
      auto r = co_await sendmsg_op(fd, &m);
      if (!r) co_return fail(r.error());
      if (*r == 0) co_return fail(errc::closed);
      sent = *r;
    }
    while (n > 0 && sent >= v->iov_len) {
      sent -= v->iov_len;
      ++v;
      --n;
    }
    if (n > 0) {
      v->iov_base = static_cast<std::byte*>(v->iov_base) + sent;
      v->iov_len -= sent;
    }
  }
  co_return ok();
}

task<result<void>> tcp_stream::recv_exact(std::span<std::byte> buf) {
  while (!buf.empty()) {
    auto n = co_await recv(buf);
    if (!n) co_return fail(n.error());
    if (*n == 0) co_return fail(errc::closed);
    buf = buf.subspan(*n);
  }
  co_return ok();
}

result<void> tcp_stream::shutdown_write() noexcept {
  if (::shutdown(fd_, SHUT_WR) != 0) return fail_errno(-errno);
  return ok();
}

void tcp_stream::close() noexcept {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

address tcp_stream::peer_address() const noexcept { return sock_name(fd_, true); }
address tcp_stream::local_address() const noexcept { return sock_name(fd_, false); }

result<void> tcp_stream::set_nodelay(bool on) noexcept {
  return detail::set_int_option(fd_, IPPROTO_TCP, TCP_NODELAY, on ? 1 : 0);
}
result<void> tcp_stream::set_send_buffer_size(int bytes) noexcept {
  return detail::set_int_option(fd_, SOL_SOCKET, SO_SNDBUF, bytes);
}
result<void> tcp_stream::set_recv_buffer_size(int bytes) noexcept {
  return detail::set_int_option(fd_, SOL_SOCKET, SO_RCVBUF, bytes);
}
result<void> tcp_stream::set_keepalive(int idle_s, int interval_s, int count) noexcept {
  if (idle_s <= 0 || interval_s <= 0 || count <= 0) return fail(std::errc::invalid_argument);
  if (auto r = detail::set_int_option(fd_, IPPROTO_TCP, TCP_KEEPIDLE, idle_s); !r) return r;
  if (auto r = detail::set_int_option(fd_, IPPROTO_TCP, TCP_KEEPINTVL, interval_s); !r) return r;
  if (auto r = detail::set_int_option(fd_, IPPROTO_TCP, TCP_KEEPCNT, count); !r) return r;
  return detail::set_int_option(fd_, SOL_SOCKET, SO_KEEPALIVE, 1);
}
result<void> tcp_stream::set_linger(bool on, int seconds) noexcept {
  linger l{};
  l.l_onoff = on ? 1 : 0;
  l.l_linger = seconds;
  if (::setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof l) != 0) return fail_errno(-errno);
  return ok();
}

result<tcp_listener> tcp_listener::bind(const address& at, int backlog) noexcept {
  tcp_listener l;
  l.fd_ = ::socket(at.family(), SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
  if (l.fd_ < 0) return fail_errno(-errno);
  if (auto r = detail::set_int_option(l.fd_, SOL_SOCKET, SO_REUSEADDR, 1); !r) return fail(r.error());
  if (::bind(l.fd_, at.data(), at.size()) != 0) return fail_errno(-errno);
  if (::listen(l.fd_, backlog) != 0) return fail_errno(-errno);
  return l;
}

address tcp_listener::local_address() const noexcept { return sock_name(fd_, false); }

void tcp_listener::close() noexcept {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

}  // namespace yutu::io
