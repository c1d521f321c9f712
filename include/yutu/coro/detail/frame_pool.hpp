// frame_pool: where the frames of yutu's coroutines (task, when_all's children, started, spawned
// tasks) come from. Each thread keeps the frames it freed, up to 4 KiB each, in free lists by size
// (64-byte classes), and hands them out again before asking malloc. A call on the data path (a store
// put: the call itself, its transfer batch, its commit) otherwise allocated and freed a frame apiece,
// and frames over 1 KiB sent glibc's malloc into malloc_consolidate of its fast bins each time.
//
// A frame may be freed on another thread than the one that allocated it (a task resumed on an engine
// reactor): it then joins that thread's list. Each list keeps at most `kept_bytes` of frames, so a
// thread that only frees returns the rest to malloc, and a burst leaves little memory behind. At thread
// exit the lists are freed; a frame torn down later (another thread_local's destructor) goes straight
// to operator delete. Under AddressSanitizer the pool is off, so that a use of a destroyed coroutine's
// frame is still reported.
#pragma once

#include <cstddef>
#include <cstdint>
#include <new>

#if defined(__SANITIZE_ADDRESS__)
#define YUTU_FRAME_POOL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define YUTU_FRAME_POOL 0
#endif
#endif
#ifndef YUTU_FRAME_POOL
#define YUTU_FRAME_POOL 1
#endif

namespace yutu::coro::detail {

struct frame_node {
  frame_node* next;
};

inline constexpr std::size_t frame_granule = 64;
inline constexpr std::size_t frame_max = 4096;
inline constexpr std::size_t frame_classes = frame_max / frame_granule;

// A thread's free lists. Trivially destructible and constant-initialized: readable on its thread at
// any time, even after the reaper below has run, and reached without a TLS guard.
struct frame_lists {
  frame_node* head[frame_classes];
  std::uint16_t count[frame_classes];
  bool armed;  // the reaper is registered: frames may be kept
  bool gone;   // thread exit has freed the lists: keep nothing more
};
inline thread_local constinit frame_lists tl_frame_lists{};

// Frees the thread's lists at its exit.
struct frame_reaper {
  bool touched = false;
  ~frame_reaper() {
    frame_lists& l = tl_frame_lists;
    l.gone = true;
    for (std::size_t c = 0; c < frame_classes; ++c) {
      while (frame_node* f = l.head[c]) {
        l.head[c] = f->next;
        ::operator delete(f);
      }
      l.count[c] = 0;
    }
  }
};
inline thread_local frame_reaper tl_frame_reaper;

class frame_pool {
 public:
  static constexpr std::size_t kept_bytes = 64 * 1024;  // per size class and thread

  static void* allocate(std::size_t n) {
#if YUTU_FRAME_POOL
    if (n != 0 && n <= frame_max) {
      frame_lists& l = tl_frame_lists;
      const std::size_t c = (n - 1) / frame_granule;
      if (frame_node* f = l.head[c]) {
        l.head[c] = f->next;
        --l.count[c];
        return f;
      }
      if (!l.armed) arm(l);
      return ::operator new((c + 1) * frame_granule);
    }
#endif
    return ::operator new(n);
  }

  static void deallocate(void* p, std::size_t n) noexcept {
#if YUTU_FRAME_POOL
    if (n != 0 && n <= frame_max) {
      frame_lists& l = tl_frame_lists;
      const std::size_t c = (n - 1) / frame_granule;
      if (l.armed && !l.gone && l.count[c] < kept_bytes / ((c + 1) * frame_granule)) {
        l.head[c] = ::new (p) frame_node{l.head[c]};
        ++l.count[c];
        return;
      }
    }
#else
    (void)n;
#endif
    ::operator delete(p);
  }

  // Frames this thread keeps for reuse (for tests).
  static std::size_t cached_frames() noexcept {
    std::size_t n = 0;
    for (std::uint16_t c : tl_frame_lists.count) n += c;
    return n;
  }

 private:
  // First allocation of this thread: registers the reaper (constructed on first use), so that nothing
  // is kept by a thread whose lists would never be freed.
  static void arm(frame_lists& l) noexcept {
    if (l.gone) return;
    tl_frame_reaper.touched = true;
    l.armed = true;
  }
};

// Mixed into a promise type: its coroutine's frame comes from frame_pool.
struct pooled_frame {
  static void* operator new(std::size_t n) { return frame_pool::allocate(n); }
  static void operator delete(void* p, std::size_t n) noexcept { frame_pool::deallocate(p, n); }
};

}  // namespace yutu::coro::detail
