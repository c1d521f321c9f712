// tcp_stream and tcp_listener: socket setup, options, and the send_all / recv_exact loops.
#include "yutu/io/socket.hpp"

#include <netinet/in.h>
#include <netinet/tcp.h>

#include <cerrno>

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

task<result<void>> tcp_stream::send_all(std::span<const std::byte> buf) {
  const bool zc = reactor::current() && reactor::current()->features().send_zc;
  bool zc_refused = false;
  while (!buf.empty()) {
    result<std::size_t> n;
    if (zc && !zc_refused && buf.size() >= zc_threshold) {
      n = co_await send_zc(buf);
      // A socket type or device without zero-copy support answers EOPNOTSUPP: stop asking.
      if (!n && n.error() == std::errc::operation_not_supported) {
        zc_refused = true;
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
