// Registry snapshots, memfd allocation and peer mappings.
#include "yutu/transfer/memory.hpp"

#include <fcntl.h>
#include <linux/memfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <string>

namespace yutu::transfer {

const registered_buffer* memory_registry::snapshot::find(std::uint64_t addr, std::uint64_t len) const noexcept {
  auto it = std::upper_bound(buffers.begin(), buffers.end(), addr,
                             [](std::uint64_t a, const registered_buffer& b) { return a < b.addr; });
  if (it == buffers.begin()) return nullptr;
  --it;
  std::uint64_t off = addr - it->addr;
  if (off >= it->length || len > it->length - off) return nullptr;
  return &*it;
}

result<void> memory_registry::add(registered_buffer b) {
  if (b.length == 0 || b.addr == 0 || b.addr + b.length < b.addr) return fail(te_errc::invalid_argument);
  std::lock_guard lk(mu_);
  auto next = by_addr_.lower_bound(b.addr);
  if (next != by_addr_.end() && next->first < b.addr + b.length) return fail(te_errc::address_overlapped);
  if (next != by_addr_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.length > b.addr) return fail(te_errc::address_overlapped);
  }
  by_addr_.emplace(b.addr, b);
  auto s = std::make_shared<snapshot>();
  s->buffers.reserve(by_addr_.size());
  for (auto& [_, v] : by_addr_) s->buffers.push_back(v);
  snap_.store(std::shared_ptr<const snapshot>(std::move(s)), std::memory_order_release);
  version_.fetch_add(1, std::memory_order_acq_rel);
  return ok();
}

result<registered_buffer> memory_registry::remove(std::uint64_t addr) {
  std::lock_guard lk(mu_);
  auto it = by_addr_.find(addr);
  if (it == by_addr_.end()) return fail(te_errc::address_not_registered);
  registered_buffer b = it->second;
  by_addr_.erase(it);
  auto s = std::make_shared<snapshot>();
  for (auto& [_, v] : by_addr_) s->buffers.push_back(v);
  snap_.store(std::shared_ptr<const snapshot>(std::move(s)), std::memory_order_release);
  version_.fetch_add(1, std::memory_order_acq_rel);
  return b;
}

std::shared_ptr<const memory_registry::snapshot> memory_registry::current() const {
  return snap_.load(std::memory_order_acquire);
}

std::vector<registered_buffer> memory_registry::list() const { return current()->buffers; }

result<shm_block> shm_allocate(std::uint64_t size, bool hugepages) {
  if (size == 0 || size > (std::uint64_t{1} << 62)) return fail(te_errc::invalid_argument);
  unsigned flags = MFD_CLOEXEC;
  if (hugepages) flags |= MFD_HUGETLB;
  int fd = ::memfd_create("yutu-shm", flags);
  if (fd < 0) return fail_errno(-errno);
  // A hugetlb memfd grows in whole huge pages: st_blksize says how large they are.
  std::uint64_t page = 4096;
  if (struct stat st {}; ::fstat(fd, &st) == 0 && st.st_blksize > 0) page = static_cast<std::uint64_t>(st.st_blksize);
  const std::uint64_t guard = (size + 7) & ~std::uint64_t{7};
  std::uint64_t mapped = (size + page - 1) / page * page;
  if (guard + sizeof(std::uint64_t) > mapped) mapped += page;
  if (::ftruncate(fd, static_cast<off_t>(mapped)) != 0) {
    int e = errno;
    ::close(fd);
    return fail_errno(-e);
  }
  void* p = ::mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) {
    int e = errno;
    ::close(fd);
    return fail_errno(-e);
  }
  shm_block b;
  b.addr = p;
  b.size = size;
  b.mapped = mapped;
  b.guard = guard;
  b.fd = fd;
  return b;
}

void shm_free(const shm_block& b) noexcept {
  if (b.addr) ::munmap(b.addr, b.mapped);
  if (b.fd >= 0) ::close(b.fd);
}

result<shm_mapping> shm_mapping::open(int pid, int fd, std::uint64_t size) {
  std::string path = "/proc/" + std::to_string(pid) + "/fd/" + std::to_string(fd);
  int local = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (local < 0) return fail_errno(-errno);
  // A file shorter than the descriptor says would fault (SIGBUS) past its end: refused instead.
  struct stat st {};
  if (::fstat(local, &st) != 0 || static_cast<std::uint64_t>(st.st_size) < size) {
    ::close(local);
    return fail_errno(-EINVAL);
  }
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, local, 0);
  int e = errno;
  ::close(local);
  if (p == MAP_FAILED) return fail_errno(-e);
  shm_mapping m;
  m.addr_ = p;
  m.size_ = size;
  return m;
}

shm_mapping::shm_mapping(shm_mapping&& o) noexcept
    : addr_(std::exchange(o.addr_, nullptr)), size_(std::exchange(o.size_, 0)), guard_(std::exchange(o.guard_, 0)) {}
shm_mapping& shm_mapping::operator=(shm_mapping&& o) noexcept {
  if (this != &o) {
    if (addr_) ::munmap(addr_, size_);
    addr_ = std::exchange(o.addr_, nullptr);
    size_ = std::exchange(o.size_, 0);
    guard_ = std::exchange(o.guard_, 0);
  }
  return *this;
}
void shm_mapping::retire() noexcept {
  if (addr_)
    (void)::mmap(addr_, size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
}

bool shm_mapping::released_by_owner() const noexcept {
  if (!addr_ || guard_ == 0 || guard_ + sizeof(std::uint64_t) > size_) return false;
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(data() + guard_))
             .load(std::memory_order_acquire) == 0;
}

shm_mapping::~shm_mapping() {
  if (addr_) ::munmap(addr_, size_);
}

}  // namespace yutu::transfer
