// Endpoint state machine, QP transitions, the handshake codec, GID choice (see endpoint.hpp).
#include "yutu/transfer/rdma/endpoint.hpp"

#include <arpa/inet.h>

#include <cstring>
#include <fmt/format.h>

namespace yutu::transfer::rdma {

bool valid_transition(qp_state from, qp_state to) noexcept {
  if (to == qp_state::error || to == qp_state::reset) return true;
  switch (from) {
    case qp_state::reset: return to == qp_state::init;
    case qp_state::init: return to == qp_state::init || to == qp_state::rtr;
    case qp_state::rtr: return to == qp_state::rts;
    case qp_state::rts: return to == qp_state::rts || to == qp_state::sqd;
    case qp_state::sqd: return to == qp_state::rts || to == qp_state::sqd;
    case qp_state::sqe: return to == qp_state::rts;
    case qp_state::error: return false;
  }
  return false;
}

std::string_view to_string(endpoint_state s) noexcept {
  switch (s) {
    case endpoint_state::idle: return "idle";
    case endpoint_state::connecting: return "connecting";
    case endpoint_state::connected: return "connected";
    case endpoint_state::failed: return "failed";
    case endpoint_state::closed: return "closed";
  }
  return "?";
}

bool endpoint_fsm::begin_connect() noexcept {
  if (s_ != endpoint_state::idle && s_ != endpoint_state::failed) return false;
  s_ = endpoint_state::connecting;
  return true;
}

bool endpoint_fsm::connected() noexcept {
  if (s_ != endpoint_state::connecting) return false;
  s_ = endpoint_state::connected;
  ++gen_;
  return true;
}

bool endpoint_fsm::fail() noexcept {
  if (s_ != endpoint_state::connecting && s_ != endpoint_state::connected) return false;
  s_ = endpoint_state::failed;
  return true;
}

// --- the handshake codec: little-endian fixed fields, length-prefixed names ---
namespace {

struct writer {
  std::string out;
  template <class T>
  void put(T v) {
    char b[sizeof v];
    std::memcpy(b, &v, sizeof v);
    out.append(b, sizeof v);
  }
  void str(const std::string& s) {
    put<std::uint8_t>(static_cast<std::uint8_t>(s.size()));
    out += s;
  }
};

struct reader {
  std::string_view in;
  bool ok = true;
  template <class T>
  T get() {
    T v{};
    if (in.size() < sizeof v) {
      ok = false;
      return v;
    }
    std::memcpy(&v, in.data(), sizeof v);
    in.remove_prefix(sizeof v);
    return v;
  }
  std::string str() {
    auto n = get<std::uint8_t>();
    if (!ok || in.size() < n) {
      ok = false;
      return {};
    }
    std::string s(in.substr(0, n));
    in.remove_prefix(n);
    return s;
  }
};

}  // namespace

std::string encode(const handshake_msg& m) {
  writer w;
  w.put(handshake_msg::magic);
  w.put(handshake_msg::version);
  w.put<std::uint8_t>(static_cast<std::uint8_t>(std::min(m.qps.size(), handshake_msg::max_qps)));
  w.put<std::uint8_t>(static_cast<std::uint8_t>(m.path_mtu));
  w.put<std::uint8_t>(m.use_gid ? 1 : 0);
  w.put(m.status);
  w.put(m.src_incarnation);
  w.put(m.dst_incarnation);
  w.put(m.lid);
  w.out.append(reinterpret_cast<const char*>(m.gid_value.data()), m.gid_value.size());
  w.str(m.src_segment.substr(0, handshake_msg::max_name));
  w.str(m.src_nic.substr(0, handshake_msg::max_name));
  w.str(m.dst_nic.substr(0, handshake_msg::max_name));
  for (std::size_t i = 0; i < m.qps.size() && i < handshake_msg::max_qps; ++i) {
    w.put(m.qps[i].qp_num);
    w.put(m.qps[i].psn);
  }
  return std::move(w.out);
}

result<handshake_msg> decode_handshake(std::string_view bytes) {
  reader r{bytes};
  handshake_msg m;
  if (r.get<std::uint32_t>() != handshake_msg::magic || r.get<std::uint8_t>() != handshake_msg::version)
    return fail(te_errc::handshake_invalid_message);
  auto nqp = r.get<std::uint8_t>();
  auto mtu_v = r.get<std::uint8_t>();
  auto use_gid = r.get<std::uint8_t>();
  m.status = r.get<std::int32_t>();
  m.src_incarnation = r.get<std::uint64_t>();
  m.dst_incarnation = r.get<std::uint64_t>();
  m.lid = r.get<std::uint16_t>();
  if (!r.ok || nqp > handshake_msg::max_qps || mtu_v < 1 || mtu_v > 5 || use_gid > 1 || r.in.size() < 16)
    return fail(te_errc::handshake_invalid_message);
  m.path_mtu = static_cast<mtu>(mtu_v);
  m.use_gid = use_gid == 1;
  std::memcpy(m.gid_value.data(), r.in.data(), 16);
  r.in.remove_prefix(16);
  m.src_segment = r.str();
  m.src_nic = r.str();
  m.dst_nic = r.str();
  for (std::size_t i = 0; i < nqp; ++i) {
    handshake_msg::qp q;
    q.qp_num = r.get<std::uint32_t>();
    q.psn = r.get<std::uint32_t>();
    // PSNs are 24 bits, QP numbers too.
    if (q.psn >= (1u << 24) || q.qp_num >= (1u << 24)) return fail(te_errc::handshake_invalid_message);
    m.qps.push_back(q);
  }
  if (!r.ok || !r.in.empty()) return fail(te_errc::handshake_invalid_message);
  return m;
}

// --- GIDs ---

std::optional<gid> gid_of_address(std::string_view ip) {
  std::string s(ip);
  gid g{};
  in_addr a4{};
  if (::inet_pton(AF_INET, s.c_str(), &a4) == 1) {
    if (a4.s_addr == 0 || (ntohl(a4.s_addr) >> 24) == 127) return std::nullopt;
    g[10] = g[11] = 0xff;
    std::memcpy(g.data() + 12, &a4.s_addr, 4);
    return g;
  }
  in6_addr a6{};
  if (::inet_pton(AF_INET6, s.c_str(), &a6) == 1) {
    if (IN6_IS_ADDR_UNSPECIFIED(&a6) || IN6_IS_ADDR_LOOPBACK(&a6)) return std::nullopt;
    std::memcpy(g.data(), &a6, 16);
    return g;
  }
  return std::nullopt;
}

std::string to_string(const gid& g) {
  std::string s;
  for (std::size_t i = 0; i < g.size(); i += 2) {
    if (i) s += ':';
    s += fmt::format("{:02x}{:02x}", g[i], g[i + 1]);
  }
  return s;
}

result<int> choose_gid(std::span<const gid_entry> table, link_layer link, std::optional<int> override_index,
                       std::optional<gid> bound_address) {
  static constexpr gid zero{};
  auto is_v4_mapped = [](const gid& g) {
    for (int i = 0; i < 10; ++i)
      if (g[i]) return false;
    return g[10] == 0xff && g[11] == 0xff;
  };
  if (override_index) {
    for (const auto& e : table)
      if (e.index == *override_index && e.value != zero) return e.index;
    return fail(te_errc::device_not_found);
  }
  if (link == link_layer::infiniband) {
    for (const auto& e : table)
      if (e.index == 0) return 0;
    return fail(te_errc::device_not_found);
  }
  if (bound_address)
    for (const auto& e : table)
      if (e.type == gid_type::roce_v2 && e.value == *bound_address) return e.index;
  for (const auto& e : table)
    if (e.type == gid_type::roce_v2 && is_v4_mapped(e.value)) return e.index;
  for (const auto& e : table)
    if (e.type == gid_type::roce_v2 && e.value != zero) return e.index;
  for (const auto& e : table)
    if (e.value != zero) return e.index;
  return fail(te_errc::device_not_found);
}

}  // namespace yutu::transfer::rdma
