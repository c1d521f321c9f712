// What the store client tests share: sizes, a master that never expires its clients, and
// page-aligned memory to register.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "yutu/store/master_state.hpp"

namespace yutu::test {

inline constexpr std::uint64_t kib = 1024;
inline constexpr std::uint64_t mib = 1024 * 1024;

// Clients live for a day (no expiry mid-test), placement seeded.
inline store::master_config quiet_master() {
  store::master_config c;
  c.client_ttl = std::chrono::hours(24);
  c.seed = 7;
  return c;
}

// Page-aligned memory the tests register with a client.
struct buffer {
  std::byte* p;
  std::size_t n;
  explicit buffer(std::size_t size)
      : p(static_cast<std::byte*>(std::aligned_alloc(4096, (size + 4095) / 4096 * 4096))), n(size) {}
  ~buffer() { std::free(p); }
  buffer(const buffer&) = delete;
  buffer& operator=(const buffer&) = delete;
};

}  // namespace yutu::test
