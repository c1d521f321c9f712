// A socket address (IPv4 or IPv6) held by value, so operations can keep it alive in their frame.
//
// parse() resolves host names through getaddrinfo, which blocks: call it on setup paths only (reading
// a configuration, joining a cluster), never on a path that runs per request.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <string_view>

#include "yutu/error.hpp"

namespace yutu::io {

class address {
 public:
  address() noexcept : storage_{}, len_(0) { storage_.ss_family = AF_UNSPEC; }

  // "1.2.3.4:80", "[::1]:80" or "host:80"; a missing or malformed port, or an unresolvable host, is
  // errc::invalid_params.
  static result<address> parse(std::string_view text);
  static address ipv4_loopback(std::uint16_t port) noexcept;
  static address ipv6_loopback(std::uint16_t port) noexcept;
  static address ipv4_any(std::uint16_t port) noexcept;
  // Copies a kernel-filled sockaddr (getsockname, accept); lengths beyond sockaddr_storage are cut.
  static address from_sockaddr(const sockaddr* sa, socklen_t len) noexcept;

  std::string to_string() const;  // "1.2.3.4:80" or "[::1]:80"
  std::uint16_t port() const noexcept;
  const sockaddr* data() const noexcept { return reinterpret_cast<const sockaddr*>(&storage_); }
  socklen_t size() const noexcept { return len_; }
  int family() const noexcept { return storage_.ss_family; }
  bool empty() const noexcept { return family() == AF_UNSPEC; }

  friend bool operator==(const address& a, const address& b) noexcept;

 private:
  sockaddr_storage storage_;
  socklen_t len_;
};

}  // namespace yutu::io
