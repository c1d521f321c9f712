// file: positional I/O, fixed buffers, O_DIRECT, fsync, size, errors, in a temporary directory.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "io_test_util.hpp"
#include "yutu/io/file.hpp"

namespace fs = std::filesystem;
using yutu::task;
using yutu::io::aligned_buffer;
using yutu::io::file;
using yutu::io::reactor;
using yutu::test::pattern;

namespace {

// A fresh directory under `base`, removed with everything in it at the end of the test.
struct temp_dir {
  fs::path path;
  explicit temp_dir(const fs::path& base = fs::temp_directory_path()) {
    std::string tmpl = (base / "yutu-file-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data())) path = tmpl;
  }
  ~temp_dir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("write_at and read_at round-trip at offsets; size and fsync") {
  temp_dir d;
  REQUIRE_FALSE(d.path.empty());
  reactor r;
  auto f = file::open(d.path / "a", O_RDWR | O_CREAT | O_TRUNC);
  REQUIRE(f.has_value());
  auto data = pattern(3 << 20, 2);
  auto body = [&]() -> task<void> {
    auto w = co_await f->write_all_at(data, 4096);
    REQUIRE(w.has_value());
    REQUIRE((co_await f->fsync()).has_value());
    REQUIRE((co_await f->fdatasync()).has_value());
    std::vector<std::byte> back(data.size());
    auto rd = co_await f->read_exact_at(back, 4096);
    REQUIRE(rd.has_value());
    CHECK(back == data);
    // The hole before the data reads as zeros.
    std::vector<std::byte> hole(4096, std::byte{1});
    auto h = co_await f->read_at(hole, 0);
    REQUIRE(h.has_value());
    CHECK(*h == 4096);
    CHECK(hole == std::vector<std::byte>(4096));
    // Reading past the end: 0 bytes from read_at, an error from read_exact_at.
    std::vector<std::byte> tail(10);
    auto e = co_await f->read_at(tail, 4096 + data.size());
    REQUIRE(e.has_value());
    CHECK(*e == 0);
    auto ex = co_await f->read_exact_at(tail, 4096 + data.size() - 5);
    REQUIRE_FALSE(ex.has_value());
    CHECK(ex.error() == yutu::errc::file_read_fail);
  };
  r.block_on(body());
  auto sz = f->size();
  REQUIRE(sz.has_value());
  CHECK(*sz == 4096 + data.size());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("read_fixed and write_fixed use registered buffers") {
  temp_dir d;
  REQUIRE_FALSE(d.path.empty());
  reactor r;
  aligned_buffer a(64 * 1024), b(64 * 1024);
  iovec iov[2] = {{a.data(), a.size()}, {b.data(), b.size()}};
  REQUIRE(r.register_buffers(iov).has_value());
  auto f = file::open(d.path / "fixed", O_RDWR | O_CREAT | O_TRUNC);
  REQUIRE(f.has_value());
  auto data = pattern(a.size(), 8);
  std::memcpy(a.data(), data.data(), data.size());
  auto body = [&]() -> task<void> {
    // A sub-range of a registered buffer is fine.
    auto w1 = co_await f->write_fixed(a.span().first(4096), 0, 0);
    REQUIRE(w1.has_value());
    CHECK(*w1 == 4096);
    auto w2 = co_await f->write_fixed(a.span().subspan(4096), 4096, 0);
    REQUIRE(w2.has_value());
    auto rd = co_await f->read_fixed(b.span(), 0, 1);
    REQUIRE(rd.has_value());
    CHECK(*rd == b.size());
    CHECK(std::memcmp(b.data(), data.data(), data.size()) == 0);
    // Memory outside the registered buffer is refused by the kernel.
    std::vector<std::byte> other(4096);
    auto bad = co_await f->read_fixed(other, 0, 1);
    CHECK_FALSE(bad.has_value());
  };
  r.block_on(body());
  CHECK(r.unregister_buffers().has_value());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("O_DIRECT with aligned buffers") {
  // tmpfs has no O_DIRECT (EINVAL): try the usual temp dir first, then /var/tmp, which is on disk on
  // most systems.
  std::optional<temp_dir> d;
  yutu::result<file> f = yutu::fail(std::errc::invalid_argument);
  for (fs::path base : {fs::temp_directory_path(), fs::path("/var/tmp")}) {
    d.emplace(base);
    if (d->path.empty()) continue;
    f = file::open(d->path / "direct", O_RDWR | O_CREAT | O_TRUNC | O_DIRECT);
    if (f) break;
  }
  if (f) MESSAGE("O_DIRECT file in ", d->path.parent_path().string());
  if (!f) {
    MESSAGE("skipped: no directory here supports O_DIRECT (", f.error().message(), ")");
    return;
  }
  reactor r;
  aligned_buffer out(1 << 20), in(1 << 20);
  auto data = pattern(out.size(), 4);
  std::memcpy(out.data(), data.data(), data.size());
  auto body = [&]() -> task<void> {
    auto w = co_await f->write_all_at(out.span(), 8192);
    REQUIRE(w.has_value());
    REQUIRE((co_await f->fsync()).has_value());
    auto rd = co_await f->read_exact_at(in.span(), 8192);
    REQUIRE(rd.has_value());
    CHECK(std::memcmp(in.data(), data.data(), data.size()) == 0);
    // A misaligned offset: block devices refuse it (EINVAL); tmpfs (6.6+) accepts O_DIRECT without
    // alignment. Either way it is a value, never a crash, and a success reads the right bytes.
    auto bad = co_await f->read_at(in.span().first(4096), 8192 + 100);
    if (bad) {
      CHECK(std::memcmp(in.data(), data.data() + 100, *bad) == 0);
    } else {
      CHECK(bad.error() == std::errc::invalid_argument);
    }
  };
  r.block_on(body());
  CHECK(r.in_flight() == 0);
}

TEST_CASE("opening a missing file and using a closed one are errors, not crashes") {
  temp_dir d;
  auto f = file::open(d.path / "missing", O_RDONLY);
  REQUIRE_FALSE(f.has_value());
  CHECK(f.error() == std::errc::no_such_file_or_directory);
  reactor r;
  file closed;
  auto body = [&]() -> task<void> {
    std::vector<std::byte> buf(16);
    auto rd = co_await closed.read_at(buf, 0);
    REQUIRE_FALSE(rd.has_value());
    CHECK(rd.error() == std::errc::bad_file_descriptor);
  };
  r.block_on(body());
  CHECK_FALSE(closed.size().has_value());
}
