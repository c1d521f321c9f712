// Descriptor (de)serialization and small helpers of the transfer vocabulary.
#include "yutu/transfer/types.hpp"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <fstream>
#include <nlohmann/json.hpp>

#include "yutu/json_int.hpp"

namespace yutu::transfer {

std::string_view to_string(transfer_status s) noexcept {
  switch (s) {
    case transfer_status::waiting: return "WAITING";
    case transfer_status::pending: return "PENDING";
    case transfer_status::completed: return "COMPLETED";
    case transfer_status::failed: return "FAILED";
    case transfer_status::timeout: return "TIMEOUT";
    case transfer_status::canceled: return "CANCELED";
  }
  return "UNKNOWN";
}

result<location> location::parse(std::string_view s) {
  location l;
  if (s.empty() || s == "*") return l;
  auto colon = s.find(':');
  std::string_view kind = s.substr(0, colon);
  if (kind == "cpu")
    l.type = kind::cpu;
  else if (kind == "cuda")
    l.type = kind::cuda;
  else
    return fail(te_errc::invalid_argument);
  if (colon == std::string_view::npos) {
    l.index = 0;
    return l;
  }
  std::string_view idx = s.substr(colon + 1);
  auto [p, ec] = std::from_chars(idx.data(), idx.data() + idx.size(), l.index);
  if (ec != std::errc{} || p != idx.data() + idx.size() || l.index < 0) return fail(te_errc::invalid_argument);
  return l;
}

std::string location::to_string() const {
  switch (type) {
    case kind::any: return "*";
    case kind::cpu: return "cpu:" + std::to_string(index);
    case kind::cuda: return "cuda:" + std::to_string(index);
  }
  return "*";
}

bool segment_desc::speaks(std::string_view t) const noexcept {
  return std::find(transports.begin(), transports.end(), t) != transports.end();
}

const buffer_desc* segment_desc::find(std::uint64_t addr, std::uint64_t len) const noexcept {
  // buffers is sorted by addr: the candidate is the last one starting at or below addr.
  auto it = std::upper_bound(buffers.begin(), buffers.end(), addr,
                             [](std::uint64_t a, const buffer_desc& b) { return a < b.addr; });
  if (it == buffers.begin()) return nullptr;
  --it;
  if (addr - it->addr > it->length || len > it->length - (addr - it->addr)) return nullptr;
  return &*it;
}

std::string segment_desc::to_json() const {
  nlohmann::json j;
  j["name"] = name;
  j["incarnation"] = incarnation;
  j["host_id"] = host_id;
  j["pid"] = pid;
  j["tcp"] = {{"host", tcp_host}, {"port", tcp_port}};
  j["transports"] = transports;
  auto& bufs = j["buffers"] = nlohmann::json::array();
  for (const auto& b : buffers) {
    nlohmann::json jb{{"addr", b.addr}, {"length", b.length}, {"location", b.location}};
    if (b.shm_fd >= 0)
      jb["shm"] = {{"fd", b.shm_fd},   {"offset", b.shm_offset}, {"size", b.shm_size},
                   {"id", b.shm_id},   {"guard", b.shm_guard},   {"reg", b.shm_reg}};
    bufs.push_back(std::move(jb));
  }
  for (const auto& [k, v] : extensions) {
    auto e = nlohmann::json::parse(v, nullptr, /*allow_exceptions=*/false);
    if (!e.is_discarded()) j["ext"][k] = std::move(e);
  }
  j["version"] = 1;
  return j.dump();
}

namespace {
// A field that is not an integer fitting its type (json_int.hpp says why get<T>() is not enough).
struct bad_number {};
template <class T>
T need_int(const nlohmann::json& v) {
  auto x = json_int<T>(v);
  if (!x) throw bad_number{};
  return *x;
}
}  // namespace

result<segment_desc> segment_desc::from_json(std::string_view text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return fail(te_errc::metadata_error);
  try {
    segment_desc d;
    d.name = j.at("name").get<std::string>();
    d.incarnation = need_int<std::uint64_t>(j.at("incarnation"));
    d.host_id = j.value("host_id", "");
    if (auto p = j.find("pid"); p != j.end()) d.pid = need_int<int>(*p);
    if (auto t = j.find("tcp"); t != j.end()) {
      d.tcp_host = t->at("host").get<std::string>();
      d.tcp_port = need_int<std::uint16_t>(t->at("port"));
    }
    d.transports = j.value("transports", std::vector<std::string>{});
    if (auto e = j.find("ext"); e != j.end() && e->is_object())
      for (auto it = e->begin(); it != e->end(); ++it) d.extensions[it.key()] = it.value().dump();
    for (const auto& jb : j.at("buffers")) {
      buffer_desc b;
      b.addr = need_int<std::uint64_t>(jb.at("addr"));
      b.length = need_int<std::uint64_t>(jb.at("length"));
      b.location = jb.value("location", "cpu:0");
      if (auto s = jb.find("shm"); s != jb.end()) {
        b.shm_fd = need_int<int>(s->at("fd"));
        b.shm_offset = need_int<std::uint64_t>(s->at("offset"));
        b.shm_size = need_int<std::uint64_t>(s->at("size"));
        if (auto id = s->find("id"); id != s->end()) b.shm_id = need_int<std::uint64_t>(*id);
        if (auto g = s->find("guard"); g != s->end()) b.shm_guard = need_int<std::uint64_t>(*g);
        if (auto g = s->find("reg"); g != s->end()) b.shm_reg = need_int<std::uint64_t>(*g);
      }
      if (b.addr + b.length < b.addr) return fail(te_errc::metadata_error);
      // A peer copies straight into its mapping of the memfd: the buffer must lie inside it.
      if (b.shm_fd >= 0 && (b.shm_offset > b.shm_size || b.length > b.shm_size - b.shm_offset))
        return fail(te_errc::metadata_error);
      // The guard word: aligned, inside the memfd, outside the buffer (a peer's copy never touches it).
      if (b.shm_guard != 0) {
        const bool inside = b.shm_size >= 8 && b.shm_guard <= b.shm_size - 8;
        const bool overlaps = b.shm_guard < b.shm_offset + b.length && b.shm_guard + 8 > b.shm_offset;
        if (b.shm_fd < 0 || b.shm_guard % 8 != 0 || !inside || overlaps) return fail(te_errc::metadata_error);
      }
      d.buffers.push_back(std::move(b));
    }
    std::sort(d.buffers.begin(), d.buffers.end(), [](auto& a, auto& b) { return a.addr < b.addr; });
    return d;
  } catch (const nlohmann::json::exception&) {
    return fail(te_errc::metadata_error);
  } catch (const bad_number&) {
    return fail(te_errc::metadata_error);
  }
}

std::string local_host_id() {
  static const std::string machine = [] {
    std::string boot;
    std::ifstream f("/proc/sys/kernel/random/boot_id");
    std::getline(f, boot);
    char host[256] = {};
    ::gethostname(host, sizeof host - 1);
    return boot + "/" + host;
  }();
  // Per call, not cached: namespaces belong to threads, and setns(2) moves one.
  auto ns = [](const char* path) {
    struct stat st {};
    return ::stat(path, &st) == 0 ? std::to_string(st.st_ino) : std::string("?");
  };
  return machine + "/net:" + ns("/proc/thread-self/ns/net") + "/pid:" + ns("/proc/thread-self/ns/pid");
}

}  // namespace yutu::transfer
