// engine_config from JSON and from YUTU_* environment variables.
#include "yutu/transfer/config.hpp"

#include <charconv>
#include <cstdlib>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "yutu/log.hpp"

namespace yutu::transfer {
namespace {

// A configuration error is te_errc::invalid_argument; the log line says which key or variable.
std::error_code bad(std::string_view what) {
  log::error("engine config: {}", what);
  return make_error_code(te_errc::invalid_argument);
}

template <class T>
result<T> parse_uint(std::string_view s) {
  T v{};
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc{} || p != s.data() + s.size()) return fail(te_errc::invalid_argument);
  return v;
}

bool known_transport(std::string_view t) { return t == "local" || t == "shm" || t == "tcp" || t == "rdma"; }

}  // namespace

std::vector<std::string> split_list(std::string_view s) {
  std::vector<std::string> out;
  while (!s.empty()) {
    auto c = s.find(',');
    auto item = s.substr(0, c);
    if (!item.empty()) out.emplace_back(item);
    if (c == std::string_view::npos) break;
    s.remove_prefix(c + 1);
  }
  return out;
}

result<engine_config> engine_config::from_json(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return fail(bad("not a JSON object"));
  // A misspelt key would otherwise be ignored and its default used without a word.
  static const std::set<std::string, std::less<>> keys = {
      "local_segment_name", "metadata", "listen_host", "listen_port", "threads", "transports",
      "tcp_connections_per_peer", "tcp_slice_size", "max_slice_size", "nontemporal_write_threshold",
      "shm_prefault", "batch_deadline_ms", "connect_timeout_ms", "descriptor_lease_ms", "max_batch_size", "rdma"};
  static const std::set<std::string, std::less<>> rdma_keys = {
      "devices", "slice_size", "qps_per_endpoint", "max_send_wr", "wrs_per_post", "max_endpoints", "priority_matrix",
      "gid_index", "port", "max_mr_size", "busy_poll", "op_timeout_ms", "max_retries"};
  for (const auto& [k, _] : j.items())
    if (!keys.contains(k)) return fail(bad(fmt::format("unknown key \"{}\"", k)));
  if (auto r = j.find("rdma"); r != j.end()) {
    if (!r->is_object()) return fail(bad("\"rdma\" is not an object"));
    for (const auto& [k, v] : r->items()) {
      if (!rdma_keys.contains(k)) return fail(bad(fmt::format("unknown key \"rdma.{}\"", k)));
      // gid_index -1 means "choose"; every other rdma number is a size or a count.
      if (k != "gid_index" && v.is_number_integer() && v.get<long long>() < 0)
        return fail(bad(fmt::format("\"rdma.{}\" is negative", k)));
      if (v.is_number_float()) return fail(bad(fmt::format("\"rdma.{}\" is not an integer", k)));
    }
  }
  // Every number here is a count, size, port or time in integers. A negative one would wrap to a
  // huge unsigned value in the conversions below, and j.value() would cast a float unchecked
  // (undefined behaviour past the target's range).
  for (const auto& [k, v] : j.items()) {
    if (v.is_number_integer() && v.get<long long>() < 0) return fail(bad(fmt::format("\"{}\" is negative", k)));
    if (v.is_number_float()) return fail(bad(fmt::format("\"{}\" is not an integer", k)));
  }
  engine_config c;
  try {
    c.local_segment_name = j.value("local_segment_name", c.local_segment_name);
    c.metadata = j.value("metadata", c.metadata);
    c.listen_host = j.value("listen_host", c.listen_host);
    c.listen_port = j.value("listen_port", c.listen_port);
    c.threads = j.value("threads", c.threads);
    c.transports = j.value("transports", c.transports);
    c.tcp_connections_per_peer = j.value("tcp_connections_per_peer", c.tcp_connections_per_peer);
    c.tcp_slice_size = j.value("tcp_slice_size", c.tcp_slice_size);
    c.max_slice_size = j.value("max_slice_size", c.max_slice_size);
    c.nontemporal_write_threshold = j.value("nontemporal_write_threshold", c.nontemporal_write_threshold);
    c.shm_prefault = j.value("shm_prefault", c.shm_prefault);
    c.batch_deadline = std::chrono::milliseconds(j.value("batch_deadline_ms", c.batch_deadline.count()));
    c.connect_timeout = std::chrono::milliseconds(j.value("connect_timeout_ms", c.connect_timeout.count()));
    c.descriptor_lease = std::chrono::milliseconds(j.value("descriptor_lease_ms", c.descriptor_lease.count()));
    c.max_batch_size = j.value("max_batch_size", c.max_batch_size);
    if (auto r = j.find("rdma"); r != j.end()) {
      auto& o = c.rdma;
      o.devices = r->value("devices", o.devices);
      o.slice_size = r->value("slice_size", o.slice_size);
      o.qps_per_endpoint = r->value("qps_per_endpoint", o.qps_per_endpoint);
      o.max_send_wr = r->value("max_send_wr", o.max_send_wr);
      o.wrs_per_post = r->value("wrs_per_post", o.wrs_per_post);
      o.max_endpoints = r->value("max_endpoints", o.max_endpoints);
      // The override in Mooncake's shape, as an object or as its JSON text.
      if (auto m = r->find("priority_matrix"); m != r->end()) o.priority_matrix = m->is_string() ? m->get<std::string>() : m->dump();
      o.gid_index = r->value("gid_index", o.gid_index);
      o.port = r->value("port", o.port);
      o.max_mr_size = r->value("max_mr_size", o.max_mr_size);
      o.busy_poll = r->value("busy_poll", o.busy_poll);
      o.op_timeout = std::chrono::milliseconds(r->value("op_timeout_ms", o.op_timeout.count()));
      o.retry.max_retries = r->value("max_retries", o.retry.max_retries);
    }
  } catch (const nlohmann::json::exception& e) {
    return fail(bad(fmt::format("a value of the wrong type ({})", e.what())));
  }
  if (c.transports.empty()) return fail(bad("\"transports\" is empty"));
  for (auto& t : c.transports)
    if (!known_transport(t)) return fail(bad(fmt::format("unknown transport \"{}\"", t)));
  if (c.threads == 0 || c.threads > 1024) return fail(bad("\"threads\" must be 1-1024"));
  if (c.tcp_connections_per_peer == 0 || c.tcp_connections_per_peer > 256)
    return fail(bad("\"tcp_connections_per_peer\" must be 1-256"));
  if (c.tcp_slice_size == 0 || c.tcp_slice_size > c.max_slice_size)
    return fail(bad("\"tcp_slice_size\" must be 1..max_slice_size"));
  // A work request carries at most 2 GiB; a slice may grow by half through tail merging.
  if (c.rdma.slice_size == 0 || c.rdma.slice_size > (1ull << 30) || c.rdma.qps_per_endpoint == 0 ||
      c.rdma.max_send_wr == 0 || c.rdma.wrs_per_post == 0 || c.rdma.max_endpoints == 0 || c.rdma.retry.max_retries < 0)
    return fail(bad("an \"rdma\" value is out of range"));
  return c;
}

namespace {
// Reads variable `name` into `out` when it is set. A value that is not a number in [lo, hi] is an
// error naming the variable and its value (logged by bad()); `out` is then left as it was.
template <class T>
result<void> env_uint(const char* name, T& out, T lo, T hi) {
  const char* v = std::getenv(name);
  if (!v) return ok();
  auto p = parse_uint<T>(v);
  if (!p || *p < lo || *p > hi) return fail(bad(fmt::format("{}=\"{}\" is not valid", name, v)));
  out = *p;
  return ok();
}
// Reads "0" or "1" from variable `name` into `out` when it is set; anything else is an error naming
// it, and `out` is left as it was.
result<void> env_bool(const char* name, bool& out) {
  const char* v = std::getenv(name);
  if (!v) return ok();
  std::string_view b = v;
  if (b != "0" && b != "1") return fail(bad(fmt::format("{}=\"{}\" is not valid", name, v)));
  out = b == "1";
  return ok();
}
}  // namespace

result<void> engine_config::apply_env() {
  auto str = [](const char* name) -> const char* { return std::getenv(name); };
  if (auto v = str("YUTU_SEGMENT_NAME")) local_segment_name = v;
  if (auto v = str("YUTU_METADATA")) metadata = v;
  if (auto v = str("YUTU_LISTEN_HOST")) listen_host = v;
  // The same bounds as the JSON keys of from_json.
  std::uint64_t deadline_ms = static_cast<std::uint64_t>(batch_deadline.count());
  std::uint64_t connect_ms = static_cast<std::uint64_t>(connect_timeout.count());
  unsigned gid = rdma.gid_index < 0 ? 0u : static_cast<unsigned>(rdma.gid_index);
  const bool gid_set = std::getenv("YUTU_RDMA_GID_INDEX") != nullptr;
  constexpr auto u64_max = std::numeric_limits<std::uint64_t>::max();
  for (auto r : {env_uint<std::uint16_t>("YUTU_LISTEN_PORT", listen_port, 0, 65535),
                 env_uint<std::size_t>("YUTU_THREADS", threads, 1, 1024),
                 env_uint<std::size_t>("YUTU_TCP_CONNECTIONS", tcp_connections_per_peer, 1, 256),
                 env_uint<std::uint64_t>("YUTU_TCP_SLICE_SIZE", tcp_slice_size, 1, max_slice_size),
                 env_uint<std::uint64_t>("YUTU_NONTEMPORAL_WRITE_THRESHOLD", nontemporal_write_threshold, 0, u64_max),
                 env_uint<std::uint64_t>("YUTU_BATCH_DEADLINE_MS", deadline_ms, 0, u64_max / 1000),
                 env_uint<std::uint64_t>("YUTU_CONNECT_TIMEOUT_MS", connect_ms, 0, u64_max / 1000),
                 env_uint<std::uint64_t>("YUTU_RDMA_SLICE_SIZE", rdma.slice_size, 1, 1ull << 30),
                 env_uint<unsigned>("YUTU_RDMA_GID_INDEX", gid, 0, 255)})
    if (!r) return r;
  batch_deadline = std::chrono::milliseconds(deadline_ms);
  connect_timeout = std::chrono::milliseconds(connect_ms);
  if (gid_set) rdma.gid_index = static_cast<int>(gid);
  if (auto v = str("YUTU_TRANSPORTS")) {
    auto list = split_list(v);
    bool valid = !list.empty();
    for (auto& t : list) valid = valid && known_transport(t);
    if (!valid) return fail(bad(fmt::format("YUTU_TRANSPORTS=\"{}\" is not valid", v)));
    transports = std::move(list);
  }
  if (auto v = str("YUTU_RDMA_DEVICES")) rdma.devices = split_list(v);
  if (auto v = str("YUTU_RDMA_PRIORITY_MATRIX")) rdma.priority_matrix = v;
  for (auto r : {env_bool("YUTU_RDMA_BUSY_POLL", rdma.busy_poll), env_bool("YUTU_SHM_PREFAULT", shm_prefault)})
    if (!r) return r;
  return ok();
}

}  // namespace yutu::transfer
