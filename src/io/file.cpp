// file: open/size/close and the whole-range loops.
#include "yutu/io/file.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <new>

namespace yutu::io {

aligned_buffer::aligned_buffer(std::size_t size, std::size_t align) : size_(size) {
  const std::size_t rounded = (size + align - 1) / align * align;
  p_.reset(static_cast<std::byte*>(std::aligned_alloc(align, rounded ? rounded : align)));
  if (!p_) throw std::bad_alloc();
  std::memset(p_.get(), 0, rounded);
}

result<file> file::open(const std::filesystem::path& path, int flags, mode_t mode) noexcept {
  int fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  if (fd < 0) return fail_errno(-errno);
  return file(fd);
}

task<result<void>> file::read_exact_at(std::span<std::byte> buf, std::uint64_t offset) {
  while (!buf.empty()) {
    auto n = co_await read_at(buf, offset);
    if (!n) co_return fail(n.error());
    if (*n == 0) co_return fail(errc::file_read_fail);
    buf = buf.subspan(*n);
    offset += *n;
  }
  co_return ok();
}

task<result<void>> file::write_all_at(std::span<const std::byte> buf, std::uint64_t offset) {
  while (!buf.empty()) {
    auto n = co_await write_at(buf, offset);
    if (!n) co_return fail(n.error());
    if (*n == 0) co_return fail(errc::file_write_fail);
    buf = buf.subspan(*n);
    offset += *n;
  }
  co_return ok();
}

result<std::uint64_t> file::size() const noexcept {
  struct stat st{};
  if (::fstat(fd_, &st) != 0) return fail_errno(-errno);
  return static_cast<std::uint64_t>(st.st_size);
}

void file::close() noexcept {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

}  // namespace yutu::io
