// scratch_vec: a vector given back is handed out again with its memory, cleared; the per-thread
// list is bounded in count and in size; a vector given back on another thread joins that thread's
// list; one outliving its thread's list (destroyed at thread exit) is freed, not kept.
#include <doctest/doctest.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "yutu/scratch.hpp"

using yutu::scratch_vec;

namespace {
// Distinct element types: each test starts from an empty list of its own.
struct a_elem {
  std::uint64_t v;
};
struct b_elem {
  std::uint64_t v;
};
struct c_elem {
  std::uint64_t v;
};
struct d_elem {
  char big[1024];
};
}  // namespace

TEST_CASE("a scratch vector comes back cleared, with its memory") {
  const a_elem* mem = nullptr;
  std::size_t cap = 0;
  {
    scratch_vec<a_elem> v;
    CHECK(v->empty());
    for (std::uint64_t i = 0; i < 100; ++i) v->push_back({i});
    mem = v->data();
    cap = v->capacity();
  }
  scratch_vec<a_elem> again;
  CHECK(again->empty());
  CHECK(again->data() == mem);
  CHECK(again->capacity() == cap);
  // Two at once: the second is a fresh one, not the same memory.
  scratch_vec<a_elem> other;
  CHECK(other->capacity() == 0);
}

TEST_CASE("strings in a scratch vector are destroyed when it is given back") {
  std::size_t cap = 0;
  {
    scratch_vec<std::string> v;
    v->push_back(std::string(100, 'x'));  // heap-allocated: ASan reports it if never destroyed
    v->push_back("y");
    cap = v->capacity();
  }
  scratch_vec<std::string> again;
  CHECK(again->empty());
  CHECK(again->capacity() == cap);
}

TEST_CASE("the per-thread list keeps at most max_kept vectors, none larger than max_kept_bytes") {
  constexpr std::size_t n = scratch_vec<b_elem>::max_kept + 8;
  {
    std::vector<std::unique_ptr<scratch_vec<b_elem>>> many;
    for (std::size_t i = 0; i < n; ++i) {
      many.push_back(std::make_unique<scratch_vec<b_elem>>());
      (**many.back()).push_back({i});
    }
  }
  // Only max_kept came back: taking n again finds exactly that many with memory.
  std::vector<std::unique_ptr<scratch_vec<b_elem>>> again;
  std::size_t with_memory = 0;
  for (std::size_t i = 0; i < n; ++i) {
    again.push_back(std::make_unique<scratch_vec<b_elem>>());
    with_memory += (**again.back()).capacity() > 0;
  }
  CHECK(with_memory == scratch_vec<b_elem>::max_kept);
  again.clear();

  // A large one is freed, not kept.
  {
    std::vector<std::unique_ptr<scratch_vec<d_elem>>> held;
    held.push_back(std::make_unique<scratch_vec<d_elem>>());
    (**held.back()).resize(scratch_vec<d_elem>::max_kept_bytes / sizeof(d_elem) + 1);
  }
  scratch_vec<d_elem> after;
  CHECK(after->capacity() == 0);
}

TEST_CASE("a scratch vector given back on another thread joins that thread's list") {
  auto v = std::make_unique<scratch_vec<c_elem>>();
  (**v).push_back({1});
  const c_elem* mem = (**v).data();
  const c_elem* seen_there = nullptr;
  std::thread t([&] {
    v.reset();  // given back here
    scratch_vec<c_elem> there;
    seen_there = there->data();
  });
  t.join();
  CHECK(seen_there == mem);
  scratch_vec<c_elem> here;  // this thread's list never had it
  CHECK(here->capacity() == 0);
}

TEST_CASE("a scratch vector destroyed after its thread's list is freed, not kept") {
  // `h` is constructed before the thread's list (made by the first scratch_vec), so it is
  // destroyed after it: what it holds is given back once the list is gone. The ASan build of the
  // test suite checks that this touches no freed memory and leaks nothing.
  static std::atomic<bool> given_back{false};
  struct holder {
    std::unique_ptr<scratch_vec<a_elem>> v;
    ~holder() {
      v.reset();
      given_back = true;
    }
  };
  std::thread t([] {
    static thread_local holder h;
    h.v = std::make_unique<scratch_vec<a_elem>>();
    (**h.v).push_back({7});
  });
  t.join();
  CHECK(given_back.load());
}
