// A small in-memory master_service for the RPC tests: enough of the master's semantics (distinct
// segments per replica, PROCESSING -> COMPLETE, leases, typed errors) to check that every call and
// every error crosses the wire intact, without depending on the real state machine. Keys starting
// with "slow:" make exist() wait 50 ms on the serving reactor, so responses can overtake each other.
#pragma once

#include <chrono>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "yutu/io/op.hpp"
#include "yutu/store/master_service.hpp"

namespace yutu::test {

class fake_master final : public store::master_service {
 public:
  using replica_desc = store::replica_desc;

  task<result<void>> mount_segment(store::client_id client, store::segment_info seg) override {
    std::lock_guard lk(mu_);
    if (segments_.count(seg.name)) co_return fail(errc::segment_already_exists);
    segments_.emplace(seg.name, segment{std::move(client), seg, 0});
    co_return ok();
  }
  task<result<void>> unmount_segment(store::client_id client, std::string name) override {
    std::lock_guard lk(mu_);
    auto it = segments_.find(name);
    if (it == segments_.end()) co_return fail(errc::segment_not_found);
    if (it->second.owner != client) co_return fail(errc::illegal_client);
    segments_.erase(it);
    co_return ok();
  }
  task<result<store::ping_result>> ping(store::client_id client) override {
    std::lock_guard lk(mu_);
    bool known = false;
    for (auto& [n, s] : segments_) known = known || s.owner == client;
    co_return store::ping_result{7, !known};
  }
  task<result<std::vector<replica_desc>>> put_start(store::client_id c, std::string key, std::uint64_t size,
                                                  store::replicate_config cfg) override {
    std::lock_guard lk(mu_);
    co_return start_locked(c, std::move(key), size, cfg, false);
  }
  task<result<void>> put_end(store::client_id, std::string key) override {
    std::lock_guard lk(mu_);
    co_return end_locked(key);
  }
  task<result<void>> put_revoke(store::client_id, std::string key) override {
    std::lock_guard lk(mu_);
    co_return revoke_locked(key);
  }
  task<result<std::vector<replica_desc>>> upsert_start(store::client_id c, std::string key, std::uint64_t size,
                                                     store::replicate_config cfg) override {
    std::lock_guard lk(mu_);
    co_return start_locked(c, std::move(key), size, cfg, true);
  }
  task<std::vector<result<std::vector<replica_desc>>>> batch_put_start(store::client_id c, std::vector<std::string> keys,
                                                                     std::vector<std::uint64_t> sizes,
                                                                     store::replicate_config cfg) override {
    std::lock_guard lk(mu_);
    std::vector<result<std::vector<replica_desc>>> out;
    for (std::size_t i = 0; i < keys.size(); ++i) out.push_back(start_locked(c, keys[i], sizes[i], cfg, false));
    co_return out;
  }
  task<std::vector<result<void>>> batch_put_end(store::client_id, std::vector<std::string> keys) override {
    std::lock_guard lk(mu_);
    std::vector<result<void>> out;
    for (auto& k : keys) out.push_back(end_locked(k));
    co_return out;
  }
  task<std::vector<result<void>>> batch_put_revoke(store::client_id, std::vector<std::string> keys) override {
    std::lock_guard lk(mu_);
    std::vector<result<void>> out;
    for (auto& k : keys) out.push_back(revoke_locked(k));
    co_return out;
  }
  // Reserved puts are not modelled here: the client falls back to an ordinary put.
  task<std::vector<result<void>>> batch_put_commit(store::client_id, std::vector<std::string>,
                                                   std::vector<std::string> keys) override {
    co_return std::vector<result<void>>(keys.size(), fail(errc::invalid_write));
  }
  task<result<store::replica_list>> get_replica_list(std::string key) override {
    std::lock_guard lk(mu_);
    co_return list_locked(key);
  }
  task<std::vector<result<store::replica_list>>> batch_get_replica_list(std::vector<std::string> keys) override {
    std::lock_guard lk(mu_);
    std::vector<result<store::replica_list>> out;
    for (auto& k : keys) out.push_back(list_locked(k));
    co_return out;
  }
  task<result<store::match_result>> match_prefix(std::vector<std::string> keys) override {
    std::lock_guard lk(mu_);
    store::match_result m;
    for (auto& k : keys) {
      auto l = list_locked(k);
      if (!l) break;
      ++m.hits;
      m.replicas.push_back(std::move(*l));
    }
    co_return m;
  }
  task<result<bool>> exist(std::string key) override {
    if (key.starts_with("slow:")) co_await io::sleep_for(std::chrono::milliseconds(50));
    std::lock_guard lk(mu_);
    auto it = objects_.find(key);
    co_return it != objects_.end() && it->second.complete;
  }
  task<std::vector<result<bool>>> batch_exist(std::vector<std::string> keys) override {
    std::lock_guard lk(mu_);
    std::vector<result<bool>> out;
    for (auto& k : keys) {
      auto it = objects_.find(k);
      out.push_back(it != objects_.end() && it->second.complete);
    }
    co_return out;
  }
  task<result<std::uint64_t>> get_size(std::string key) override {
    std::lock_guard lk(mu_);
    auto it = objects_.find(key);
    if (it == objects_.end()) co_return fail(errc::object_not_found);
    co_return it->second.size;
  }
  task<result<void>> remove(std::string key, bool force) override {
    std::lock_guard lk(mu_);
    co_return remove_locked(key, force);
  }
  task<std::vector<result<void>>> batch_remove(std::vector<std::string> keys, bool force) override {
    std::lock_guard lk(mu_);
    std::vector<result<void>> out;
    for (auto& k : keys) out.push_back(remove_locked(k, force));
    co_return out;
  }
  task<result<std::uint64_t>> remove_all(bool force) override {
    std::lock_guard lk(mu_);
    std::uint64_t n = 0;
    for (auto it = objects_.begin(); it != objects_.end();) {
      if (it->second.complete || force) {
        it = objects_.erase(it);
        ++n;
      } else {
        ++it;
      }
    }
    co_return n;
  }

  std::size_t objects() const {
    std::lock_guard lk(mu_);
    return objects_.size();
  }

 private:
  struct segment {
    std::string owner;
    store::segment_info info;
    std::uint64_t used = 0;
  };
  struct object {
    std::uint64_t size = 0;
    std::vector<replica_desc> replicas;
    bool complete = false;
  };

  result<std::vector<replica_desc>> start_locked(const std::string&, std::string key, std::uint64_t size,
                                                 const store::replicate_config& cfg, bool upsert) {
    if (key.empty()) return fail(errc::invalid_key);
    if (size == 0 || cfg.replica_num == 0) return fail(errc::invalid_params);
    if (!upsert && objects_.count(key)) return fail(errc::object_already_exists);
    std::vector<replica_desc> reps;
    for (auto& [name, s] : segments_) {
      if (reps.size() == cfg.replica_num) break;
      if (s.used + size > s.info.size) continue;
      reps.push_back({name, s.info.engine_segment, s.info.base + s.used, size, store::replica_status::processing});
      s.used += size;
    }
    if (reps.size() < cfg.replica_num) return fail(errc::no_available_handle);
    objects_[key] = object{size, reps, false};
    return reps;
  }
  result<void> end_locked(const std::string& key) {
    auto it = objects_.find(key);
    if (it == objects_.end()) return fail(errc::object_not_found);
    if (it->second.complete) return fail(errc::invalid_write);
    it->second.complete = true;
    for (auto& r : it->second.replicas) r.status = store::replica_status::complete;
    return ok();
  }
  result<void> revoke_locked(const std::string& key) {
    auto it = objects_.find(key);
    if (it == objects_.end()) return fail(errc::object_not_found);
    if (it->second.complete) return fail(errc::invalid_write);
    objects_.erase(it);
    return ok();
  }
  result<store::replica_list> list_locked(const std::string& key) {
    auto it = objects_.find(key);
    if (it == objects_.end()) return fail(errc::object_not_found);
    if (!it->second.complete) return fail(errc::replica_is_not_ready);
    return store::replica_list{it->second.size, it->second.replicas, std::chrono::milliseconds(10000)};
  }
  result<void> remove_locked(const std::string& key, bool force) {
    auto it = objects_.find(key);
    if (it == objects_.end()) return fail(errc::object_not_found);
    if (!it->second.complete && !force) return fail(errc::replica_is_not_ready);
    objects_.erase(it);
    return ok();
  }

  mutable std::mutex mu_;
  std::map<std::string, segment> segments_;
  std::map<std::string, object> objects_;
};

}  // namespace yutu::test
