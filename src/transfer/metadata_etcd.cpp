// etcd as the metadata store, through its v3 JSON gateway (grpc-gateway: POST /v3/kv/put, /v3/kv/range,
// /v3/kv/deleterange, /v3/lease/grant, /v3/lease/keepalive, /v3/lease/revoke; keys and values are
// base64, 64-bit integers are decimal strings).
//
// Leases: a put with put_options::lease_ttl ties the key to the store's lease (one per store, granted
// on first use with that first TTL). A detached coroutine on the reactor of that first put renews it
// every TTL/3; destroying or closing the store stops it and revokes the lease, and a process that dies
// simply stops renewing, so its descriptors expire after the TTL either way. If etcd forgets the lease
// (it was unreachable for longer than the TTL), the loop grants a new one and puts the leased keys
// again. Endpoints are tried in order, starting with the last one that answered, within one deadline
// for the whole call.
#include <fmt/format.h>

#include <nlohmann/json.hpp>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <map>
#include <mutex>
#include <stop_token>
#include <vector>

#include "metadata_backends.hpp"
#include "yutu/io/address.hpp"
#include "yutu/json_int.hpp"
#include "yutu/io/http.hpp"
#include "yutu/io/op.hpp"
#include "yutu/transfer/detail/base64.hpp"

namespace yutu::transfer::detail {
namespace {

using json = nlohmann::json;
using std::chrono::milliseconds;

struct endpoint {
  std::string name;
  io::http_client client;
};

struct etcd_state {
  std::vector<endpoint> endpoints;
  std::string description;
  metadata_options opts;
  std::atomic<std::size_t> preferred{0};
  std::stop_source stop;  // ends the keepalive loop

  std::mutex mu;  // guards what follows
  std::int64_t lease = 0;
  milliseconds lease_ttl{0};                // as granted
  std::map<std::string, std::string> leased;  // put again under a new lease if etcd lost ours
  bool keepalive_started = false;
};

struct reply {
  unsigned status = 0;
  json body;
};

// A coroutine nobody awaits; its frame frees itself when it returns. Whatever it uses it owns.
struct detached {
  struct promise_type {
    detached get_return_object() noexcept { return {}; }
    std::suspend_never initial_suspend() noexcept { return {}; }
    std::suspend_never final_suspend() noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
};

// An int64 field of an etcd answer: its JSON gateway writes them as strings, or as numbers.
std::optional<std::int64_t> etcd_int(const json& j, const char* name) {
  auto it = j.find(name);
  if (it == j.end()) return std::nullopt;
  if (it->is_string()) {
    const std::string& s = it->get_ref<const std::string&>();
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (end == s.c_str() || *end != '\0' || errno == ERANGE) return std::nullopt;
    return static_cast<std::int64_t>(v);
  }
  return yutu::json_int<std::int64_t>(*it);  // a number: only an integer that fits
}

// Request bodies are built outside the coroutines: g++ 12 miscompiles a braced json initializer with
// string literals inside a co_await expression ("array used as initializer").
json key_body(const std::string& key) { return json{{"key", base64_encode(key)}}; }
json id_body(std::int64_t id) { return json{{"ID", std::to_string(id)}}; }
json ttl_body(std::int64_t seconds) { return json{{"TTL", seconds}}; }
json put_body(const std::string& key, const std::string& value, std::int64_t lease) {
  json body = {{"key", base64_encode(key)}, {"value", base64_encode(value)}};
  if (lease) body["lease"] = std::to_string(lease);
  return body;
}

// POSTs `body` to `path` on the first endpoint that answers. 5xx (no leader, shutting down) and
// transport failures move on to the next endpoint; any other status is the call's answer.
task<result<reply>> call(etcd_state& st, std::string path, json body) {
  const io::clock::time_point deadline = io::clock::now() + st.opts.deadline;
  const std::string payload = body.dump();
  const std::size_t n = st.endpoints.size();
  const std::size_t first = st.preferred.load(std::memory_order_relaxed);
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t idx = (first + i) % n;
    endpoint& ep = st.endpoints[idx];
    auto left = std::chrono::duration_cast<milliseconds>(deadline - io::clock::now());
    if (left.count() <= 0) co_return fail(std::errc::timed_out);
    io::http_request req{io::http_verb::post, path, 11};
    req.set(io::http_field::content_type, "application/json");
    req.body() = payload;
    auto r = co_await ep.client.request(std::move(req), left);
    if (!r) {
      if (is_timeout(r.error()) || is_canceled(r.error())) co_return fail(r.error());
      log::warn("metadata etcd {}{}: {}", ep.name, path, r.error().message());
      continue;
    }
    if (r->result_int() >= 500) {
      log::warn("metadata etcd {}{}: HTTP {} {}", ep.name, path, r->result_int(), r->body());
      continue;
    }
    st.preferred.store(idx, std::memory_order_relaxed);
    json j = json::parse(r->body(), nullptr, false);
    if (j.is_discarded() || !j.is_object()) {
      log::warn("metadata etcd {}{}: answer is not a JSON object: {}", ep.name, path, r->body());
      co_return fail(te_errc::metadata_error);
    }
    co_return reply{r->result_int(), std::move(j)};
  }
  log::warn("metadata etcd {}: no endpoint answered {}", st.description, path);
  co_return fail(te_errc::metadata_error);
}

// An answer other than 200 as an error: etcd's "lease not found" as errc::lease_expired (the caller
// grants a new lease), anything else as metadata_error.
std::error_code answer_error(const etcd_state& st, std::string_view what, const reply& r) {
  std::string message = r.body.value("message", r.body.value("error", std::string("?")));
  // Not body.value("code", 0): that casts a float unchecked (undefined behaviour out of int's range).
  if (etcd_int(r.body, "code") == 5 && message.find("lease") != std::string::npos)
    return make_error_code(errc::lease_expired);
  log::warn("metadata etcd {} {}: HTTP {}: {}", st.description, what, r.status, message);
  return make_error_code(te_errc::metadata_error);
}

task<result<void>> kv_put(etcd_state& st, const std::string& key, const std::string& value, std::int64_t lease) {
  auto r = co_await call(st, "/v3/kv/put", put_body(key, value, lease));
  if (!r) co_return fail(r.error());
  if (r->status != 200) co_return fail(answer_error(st, "put " + key, *r));
  co_return ok();
}

task<result<void>> revoke(etcd_state& st, std::int64_t id) {
  auto r = co_await call(st, "/v3/lease/revoke", id_body(id));
  if (!r) co_return fail(r.error());
  if (r->status != 200) {
    auto ec = answer_error(st, "revoke", *r);
    if (ec == errc::lease_expired) co_return ok();  // gone already
    co_return fail(ec);
  }
  co_return ok();
}

detached keepalive_loop(std::shared_ptr<etcd_state> st);

// The store's lease, granted (and its keepalive started) on first use.
task<result<std::int64_t>> ensure_lease(std::shared_ptr<etcd_state> st, milliseconds ttl) {
  {
    std::lock_guard lock(st->mu);
    if (st->lease) co_return st->lease;
  }
  const auto seconds = std::max<std::int64_t>(1, (ttl.count() + 999) / 1000);
  auto r = co_await call(*st, "/v3/lease/grant", ttl_body(seconds));
  if (!r) co_return fail(r.error());
  if (r->status != 200) co_return fail(answer_error(*st, "lease grant", *r));
  auto id = etcd_int(r->body, "ID");
  auto granted = etcd_int(r->body, "TTL");
  if (!id || *id == 0) {
    log::warn("metadata etcd {}: lease grant without an ID: {}", st->description, r->body.dump());
    co_return fail(te_errc::metadata_error);
  }
  bool start = false;
  {
    std::lock_guard lock(st->mu);
    // Another put may have granted one meanwhile; ours then holds no key and expires alone.
    if (st->lease) co_return st->lease;
    st->lease = *id;
    st->lease_ttl = milliseconds(1000 * std::max<std::int64_t>(1, granted.value_or(seconds)));
    start = !std::exchange(st->keepalive_started, true);
  }
  if (start) keepalive_loop(st);
  co_return *id;
}

// etcd lost our lease: take a new one and put the leased keys again.
task<void> regrant(std::shared_ptr<etcd_state> st) {
  milliseconds ttl;
  {
    std::lock_guard lock(st->mu);
    st->lease = 0;
    ttl = st->lease_ttl;
  }
  auto id = co_await ensure_lease(st, ttl);
  if (!id) {
    log::warn("metadata etcd {}: cannot grant a new lease: {}", st->description, id.error().message());
    co_return;
  }
  std::map<std::string, std::string> keys;
  {
    std::lock_guard lock(st->mu);
    keys = st->leased;
  }
  for (auto& [k, v] : keys) {
    if (auto r = co_await kv_put(*st, k, v, *id); !r)
      log::warn("metadata etcd {}: re-put of {} failed: {}", st->description, k, r.error().message());
  }
}

detached keepalive_loop(std::shared_ptr<etcd_state> st) {
  const std::stop_token tok = st->stop.get_token();
  for (;;) {
    milliseconds period;
    std::int64_t id;
    {
      std::lock_guard lock(st->mu);
      period = std::max(milliseconds(100), st->lease_ttl / 3);
      id = st->lease;
    }
    (void)co_await io::sleep_for(period).with_stop_token(tok);
    if (tok.stop_requested()) break;
    if (id == 0) {
      co_await regrant(st);
      continue;
    }
    auto r = co_await call(*st, "/v3/lease/keepalive", id_body(id));
    if (tok.stop_requested()) break;
    if (!r) continue;  // logged; the next period tries again, the lease outlives a few misses
    const json& res = r->body.contains("result") ? r->body["result"] : r->body;
    if (r->status != 200 || etcd_int(res, "TTL").value_or(0) <= 0) {
      log::warn("metadata etcd {}: lease {:x} lost, granting a new one", st->description, id);
      co_await regrant(st);
    }
  }
  if (st->opts.revoke_lease_on_close) {
    std::int64_t id;
    {
      std::lock_guard lock(st->mu);
      id = std::exchange(st->lease, 0);
    }
    if (id) {
      if (auto r = co_await revoke(*st, id); !r)
        log::warn("metadata etcd {}: revoking lease {:x}: {}", st->description, id, r.error().message());
    }
  }
}

class etcd_store final : public metadata_store {
 public:
  explicit etcd_store(std::shared_ptr<etcd_state> st) : st_(std::move(st)) {}
  // The keepalive loop (if any) wakes on its reactor, revokes the lease and ends.
  ~etcd_store() override { st_->stop.request_stop(); }

  task<result<std::optional<std::string>>> get(std::string key) override {
    auto r = co_await call(*st_, "/v3/kv/range", key_body(key));
    if (!r) co_return fail(r.error());
    if (r->status != 200) co_return fail(answer_error(*st_, "get " + key, *r));
    auto kvs = r->body.find("kvs");
    if (kvs == r->body.end() || !kvs->is_array() || kvs->empty()) co_return std::optional<std::string>{};
    const json& kv = (*kvs)[0];
    // grpc-gateway leaves empty fields out: no "value" is the empty value.
    std::string encoded = kv.is_object() ? kv.value("value", std::string()) : std::string();
    auto value = base64_decode(encoded);
    if (!value) {
      log::warn("metadata etcd {}: value of {} is not base64", st_->description, key);
      co_return fail(te_errc::metadata_error);
    }
    co_return std::optional<std::string>(std::move(*value));
  }

  task<result<void>> put(std::string key, std::string value, put_options opts) override {
    if (!opts.lease_ttl) {
      auto r = co_await kv_put(*st_, key, value, 0);
      if (r) {
        std::lock_guard lock(st_->mu);
        st_->leased.erase(key);
      }
      co_return r;
    }
    if (st_->stop.stop_requested()) co_return fail(errc::closed);
    for (int attempt = 0;; ++attempt) {
      auto lease = co_await ensure_lease(st_, *opts.lease_ttl);
      if (!lease) co_return fail(lease.error());
      auto r = co_await kv_put(*st_, key, value, *lease);
      if (!r && r.error() == errc::lease_expired && attempt == 0) {
        std::lock_guard lock(st_->mu);
        if (st_->lease == *lease) st_->lease = 0;
        continue;
      }
      if (!r) co_return fail(r.error() == errc::lease_expired ? make_error_code(te_errc::metadata_error) : r.error());
      std::lock_guard lock(st_->mu);
      st_->leased.insert_or_assign(std::move(key), std::move(value));
      co_return ok();
    }
  }

  task<result<void>> remove(std::string key) override {
    auto r = co_await call(*st_, "/v3/kv/deleterange", key_body(key));
    if (!r) co_return fail(r.error());
    if (r->status != 200) co_return fail(answer_error(*st_, "delete " + key, *r));
    std::lock_guard lock(st_->mu);
    st_->leased.erase(key);
    co_return ok();
  }

  std::string describe() const override { return st_->description; }

  task<result<void>> close() override {
    st_->stop.request_stop();
    if (!st_->opts.revoke_lease_on_close) co_return ok();
    std::int64_t id;
    {
      std::lock_guard lock(st_->mu);
      id = std::exchange(st_->lease, 0);
      st_->leased.clear();
    }
    if (!id) co_return ok();
    co_return co_await revoke(*st_, id);
  }

 private:
  std::shared_ptr<etcd_state> st_;
};

}  // namespace

result<std::unique_ptr<metadata_store>> make_etcd_metadata_store(std::string_view endpoints,
                                                                 const metadata_options& opts) {
  auto st = std::make_shared<etcd_state>();
  st->opts = opts;
  io::http_client_options copts;
  copts.default_deadline = opts.deadline;
  std::string names;
  while (!endpoints.empty()) {
    auto sep = endpoints.find_first_of(";,");
    std::string_view one = endpoints.substr(0, sep);
    endpoints = sep == std::string_view::npos ? std::string_view{} : endpoints.substr(sep + 1);
    if (one.starts_with("http://")) one.remove_prefix(7);
    while (one.ends_with('/')) one.remove_suffix(1);
    if (one.empty()) continue;
    auto at = io::address::parse(one);
    if (!at) {
      log::warn("metadata etcd: cannot resolve {}: {}", one, at.error().message());
      return fail(at.error());
    }
    st->endpoints.push_back(endpoint{std::string(one), io::http_client(*at, copts)});
    if (!names.empty()) names += ';';
    names += one;
  }
  if (st->endpoints.empty()) return fail(errc::invalid_params);
  st->description = "etcd://" + names;
  return std::unique_ptr<metadata_store>(std::make_unique<etcd_store>(std::move(st)));
}

}  // namespace yutu::transfer::detail
