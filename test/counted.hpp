// A value type that counts its constructions, copies, moves and destructions, so tests can assert
// that nothing leaked and nothing was copied where a move was promised.
#pragma once

#include <atomic>

namespace yutu::test {

struct counted {
  static inline std::atomic<int> constructions{0}, copies{0}, moves{0}, destructions{0};
  static void reset() { constructions = copies = moves = destructions = 0; }
  static int alive() { return constructions + copies + moves - destructions; }

  int value = 0;
  explicit counted(int v = 0) noexcept : value(v) { ++constructions; }
  counted(const counted& o) noexcept : value(o.value) { ++copies; }
  counted(counted&& o) noexcept : value(o.value) { ++moves; }
  counted& operator=(const counted& o) noexcept {
    value = o.value;
    ++copies;
    return *this;
  }
  counted& operator=(counted&& o) noexcept {
    value = o.value;
    ++moves;
    return *this;
  }
  ~counted() { ++destructions; }
};

}  // namespace yutu::test
