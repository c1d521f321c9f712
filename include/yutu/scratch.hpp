// scratch_vec<T>: a std::vector that a call uses as working space, taken from a small per-thread
// free list and given back, cleared but with its capacity, when it goes out of scope. A data-path
// call (a put, a transfer batch) then allocates nothing in steady state for its index lists and
// request arrays, where a fresh std::vector each time cost a malloc and a free apiece (the 64 KiB put
// made 29 allocations, most of them such vectors).
//
// It may live in a coroutine frame across suspensions, and be destroyed on another thread than the
// one it came from: it then joins that thread's list. Each list keeps at most `max_kept` vectors and
// none that grew past `max_kept_bytes`, so a burst of large batches leaves no large memory behind.
#pragma once

#include <cstddef>
#include <utility>
#include <vector>

namespace yutu {

template <class T>
class scratch_vec {
 public:
  static constexpr std::size_t max_kept = 32;
  static constexpr std::size_t max_kept_bytes = 256 * 1024;

  scratch_vec() : v_(take()) {}
  scratch_vec(const scratch_vec&) = delete;
  scratch_vec& operator=(const scratch_vec&) = delete;
  ~scratch_vec() { give(std::move(v_)); }

  std::vector<T>& operator*() noexcept { return v_; }
  const std::vector<T>& operator*() const noexcept { return v_; }
  std::vector<T>* operator->() noexcept { return &v_; }
  const std::vector<T>* operator->() const noexcept { return &v_; }

 private:
  // The thread's list. `gone` (trivially destructible, so still readable) is set when the list is
  // destroyed at thread exit: a scratch_vec freed after that (a coroutine frame torn down late)
  // frees its vector instead of touching the dead list.
  struct list {
    std::vector<std::vector<T>> k;
    ~list() { gone = true; }
  };
  static inline thread_local bool gone = false;
  static inline thread_local list kept_;

  static std::vector<T> take() {
    if (gone) return {};
    auto& k = kept_.k;
    if (k.empty()) return {};
    std::vector<T> v = std::move(k.back());
    k.pop_back();
    return v;
  }
  static void give(std::vector<T>&& v) noexcept {
    if (gone || v.capacity() == 0 || v.capacity() * sizeof(T) > max_kept_bytes) return;
    v.clear();
    auto& k = kept_.k;
    if (k.size() >= max_kept) return;
    if (k.capacity() == 0) {
      try {
        k.reserve(max_kept);
      } catch (...) {
        return;  // out of memory: this vector is simply freed
      }
    }
    k.push_back(std::move(v));  // within the reserved capacity: no allocation, no throw
  }

  std::vector<T> v_;
};

}  // namespace yutu
