// The in-process metadata store: one map per process, so engines in one process (tests, a prefill and
// a decode instance sharing a host process) find each other without any service.
#include <map>
#include <mutex>

#include "metadata_backends.hpp"

namespace yutu::transfer::detail {
namespace {

struct process_map {
  std::mutex mu;
  std::map<std::string, std::string, std::less<>> kv;
};

process_map& the_map() {
  static process_map m;
  return m;
}

class memory_store final : public metadata_store {
 public:
  task<result<std::optional<std::string>>> get(std::string key) override {
    process_map& m = the_map();
    std::optional<std::string> v;
    {
      std::lock_guard lock(m.mu);
      if (auto it = m.kv.find(key); it != m.kv.end()) v = it->second;
    }
    co_return v;
  }
  task<result<void>> put(std::string key, std::string value, put_options) override {
    process_map& m = the_map();
    {
      std::lock_guard lock(m.mu);
      m.kv.insert_or_assign(std::move(key), std::move(value));
    }
    co_return ok();
  }
  task<result<void>> remove(std::string key) override {
    process_map& m = the_map();
    {
      std::lock_guard lock(m.mu);
      if (auto it = m.kv.find(key); it != m.kv.end()) m.kv.erase(it);
    }
    co_return ok();
  }
  std::string describe() const override { return "memory"; }
};

}  // namespace

std::unique_ptr<metadata_store> make_memory_metadata_store() { return std::make_unique<memory_store>(); }

}  // namespace yutu::transfer::detail
