// Files on the reactor: positional reads and writes (plain or into buffers registered with
// reactor::register_buffers), fsync, and loops for whole ranges. This is the store layer's path to
// SSD tiers; O_DIRECT is allowed, in which case buffers, offsets and lengths must be aligned to the
// device's logical block (4096 is safe): aligned_buffer provides such memory.
//
// open() and size() are synchronous system calls: they are for setup paths (opening a segment file
// once), not per request. Every read and write is a uring_op: `.with_timeout(d)` and cancellation by
// stop token work on them (a regular-file request already running in the kernel may finish anyway).
#pragma once

#include <fcntl.h>
#include <liburing.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <span>
#include <utility>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/op.hpp"

namespace yutu::io {

// Zero-initialised memory aligned for O_DIRECT (std::aligned_alloc; size rounded up to `align`).
class aligned_buffer {
 public:
  aligned_buffer() noexcept = default;
  explicit aligned_buffer(std::size_t size, std::size_t align = 4096);
  std::byte* data() const noexcept { return p_.get(); }
  std::size_t size() const noexcept { return size_; }
  std::span<std::byte> span() const noexcept { return {p_.get(), size_}; }
  explicit operator bool() const noexcept { return static_cast<bool>(p_); }

 private:
  struct freer {
    void operator()(std::byte* p) const noexcept { std::free(p); }
  };
  std::unique_ptr<std::byte, freer> p_;
  std::size_t size_ = 0;
};

namespace detail {
// One SQE moves at most this much; the *_all loops split larger ranges.
inline constexpr std::size_t max_file_chunk = std::size_t{1} << 30;
inline unsigned clamp_file_len(std::size_t n) noexcept {
  return static_cast<unsigned>(n < max_file_chunk ? n : max_file_chunk);
}
}  // namespace detail

// read/write (and their _FIXED forms) at an offset. Result: bytes transferred (0 on read = EOF).
template <bool Write, bool Fixed>
class file_rw_op : public uring_op<file_rw_op<Write, Fixed>> {
  using base = uring_op<file_rw_op<Write, Fixed>>;

 public:
  file_rw_op(int fd, std::byte* buf, std::size_t len, std::uint64_t off, int buf_index = 0) noexcept
      : fd_(fd), buf_(buf), len_(len), off_(off), index_(buf_index) {}
  file_rw_op(file_rw_op&& o) noexcept
      : base(std::move(o)), fd_(o.fd_), buf_(o.buf_), len_(o.len_), off_(o.off_), index_(o.index_) {}
  void prepare(io_uring_sqe* sqe) noexcept {
    const unsigned n = detail::clamp_file_len(len_);
    if constexpr (Write && Fixed)
      io_uring_prep_write_fixed(sqe, fd_, buf_, n, off_, index_);
    else if constexpr (Write)
      io_uring_prep_write(sqe, fd_, buf_, n, off_);
    else if constexpr (Fixed)
      io_uring_prep_read_fixed(sqe, fd_, buf_, n, off_, index_);
    else
      io_uring_prep_read(sqe, fd_, buf_, n, off_);
  }
  result<std::size_t> await_resume() const noexcept {
    if (auto ec = this->error()) return fail(ec);
    return static_cast<std::size_t>(this->res_);
  }

 private:
  int fd_;
  std::byte* buf_;
  std::size_t len_;
  std::uint64_t off_;
  int index_;
};

using read_at_op = file_rw_op<false, false>;
using write_at_op = file_rw_op<true, false>;
using read_fixed_op = file_rw_op<false, true>;
using write_fixed_op = file_rw_op<true, true>;

class fsync_op : public uring_op<fsync_op> {
 public:
  fsync_op(int fd, unsigned flags) noexcept : fd_(fd), flags_(flags) {}
  fsync_op(fsync_op&& o) noexcept : uring_op<fsync_op>(std::move(o)), fd_(o.fd_), flags_(o.flags_) {}
  void prepare(io_uring_sqe* sqe) noexcept { io_uring_prep_fsync(sqe, fd_, flags_); }
  result<void> await_resume() const noexcept {
    if (auto ec = error()) return fail(ec);
    return ok();
  }

 private:
  int fd_;
  unsigned flags_;
};

class file {
 public:
  file() noexcept = default;
  explicit file(int fd) noexcept : fd_(fd) {}
  file(file&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  file& operator=(file&& o) noexcept {
    if (this != &o) {
      close();
      fd_ = std::exchange(o.fd_, -1);
    }
    return *this;
  }
  file(const file&) = delete;
  file& operator=(const file&) = delete;
  ~file() { close(); }

  // open(2) with O_CLOEXEC added. O_DIRECT on a file system without it (tmpfs) fails with EINVAL.
  static result<file> open(const std::filesystem::path& path, int flags, mode_t mode = 0644) noexcept;

  read_at_op read_at(std::span<std::byte> buf, std::uint64_t offset) noexcept {
    return read_at_op(fd_, buf.data(), buf.size(), offset);
  }
  write_at_op write_at(std::span<const std::byte> buf, std::uint64_t offset) noexcept {
    return write_at_op(fd_, const_cast<std::byte*>(buf.data()), buf.size(), offset);
  }
  // `buf` must lie inside buffer `buf_index` of those registered with reactor::register_buffers on
  // the reactor that awaits the op; the kernel skips pinning pages per request.
  read_fixed_op read_fixed(std::span<std::byte> buf, std::uint64_t offset, int buf_index) noexcept {
    return read_fixed_op(fd_, buf.data(), buf.size(), offset, buf_index);
  }
  write_fixed_op write_fixed(std::span<const std::byte> buf, std::uint64_t offset, int buf_index) noexcept {
    return write_fixed_op(fd_, const_cast<std::byte*>(buf.data()), buf.size(), offset, buf_index);
  }
  fsync_op fsync() noexcept { return fsync_op(fd_, 0); }
  fsync_op fdatasync() noexcept { return fsync_op(fd_, IORING_FSYNC_DATASYNC); }

  // Reads exactly buf.size() bytes at `offset`; EOF before that is errc::file_read_fail.
  task<result<void>> read_exact_at(std::span<std::byte> buf, std::uint64_t offset);
  // Writes every byte at `offset`, looping over short writes.
  task<result<void>> write_all_at(std::span<const std::byte> buf, std::uint64_t offset);

  result<std::uint64_t> size() const noexcept;
  int fd() const noexcept { return fd_; }
  bool is_open() const noexcept { return fd_ >= 0; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void close() noexcept;

 private:
  int fd_ = -1;
};

}  // namespace yutu::io
