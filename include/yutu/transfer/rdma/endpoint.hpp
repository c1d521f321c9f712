// The pieces of an RDMA connection that are logic, not verbs: the endpoint state machine, the RC
// queue pair's legal state changes, the handshake message and its codec, GID choice and MTU
// negotiation. Kept apart from the verbs calls so they are unit-tested on machines without RDMA.
//
// An endpoint is one (local NIC, peer NIC) pair with a few RC queue pairs. It is created lazily on
// first use through a handshake over the engine's TCP service (a transport_req frame): the initiator
// sends its QP numbers, PSNs, LID/GID and MTU; the target creates its side, moves it to RTR/RTS and
// answers with its own. A QP that goes to the error state (a failed work request, a flush) takes its
// endpoint to `failed`; the next use tears the QPs down and handshakes again.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "yutu/error.hpp"
#include "yutu/transfer/rdma/verbs.hpp"

namespace yutu::transfer::rdma {

// RC queue pair transitions the transport (and the fake verbs) accept: RESET->INIT->RTR->RTS, any
// state -> ERROR, any state -> RESET.
bool valid_transition(qp_state from, qp_state to) noexcept;

enum class endpoint_state : std::uint8_t { idle, connecting, connected, failed, closed };
std::string_view to_string(endpoint_state s) noexcept;

// Who may do what with an endpoint. One connect at a time; a failed endpoint is reconnected (its
// QPs recreated) by the next request; a closed one never again.
class endpoint_fsm {
 public:
  endpoint_state state() const noexcept { return s_; }
  // Number of times the endpoint was (re)connected.
  std::uint32_t generation() const noexcept { return gen_; }
  // idle|failed -> connecting. False if another connect runs, it is usable, or it is closed.
  bool begin_connect() noexcept;
  // connecting -> connected.
  bool connected() noexcept;
  // connecting -> failed (the handshake failed) or connected -> failed (a QP went to error).
  bool fail() noexcept;
  void close() noexcept { s_ = endpoint_state::closed; }
  bool usable() const noexcept { return s_ == endpoint_state::connected; }

 private:
  endpoint_state s_ = endpoint_state::idle;
  std::uint32_t gen_ = 0;
};

// Handshake message, both directions (the response echoes the NIC names and fills its side).
struct handshake_msg {
  static constexpr std::uint32_t magic = 0x4d445259;  // "YRDM"
  static constexpr std::uint8_t version = 1;
  static constexpr std::size_t max_qps = 16;
  static constexpr std::size_t max_name = 255;

  std::int32_t status = 0;  // response: 0 or a te_errc value
  std::uint64_t src_incarnation = 0;
  std::uint64_t dst_incarnation = 0;  // the target incarnation the initiator planned with
  std::string src_segment;
  std::string src_nic;
  std::string dst_nic;
  std::uint16_t lid = 0;
  gid gid_value{};
  mtu path_mtu = mtu::m1024;
  bool use_gid = false;
  struct qp {
    std::uint32_t qp_num = 0;
    std::uint32_t psn = 0;
    friend bool operator==(const qp&, const qp&) = default;
  };
  std::vector<qp> qps;
  friend bool operator==(const handshake_msg&, const handshake_msg&) = default;
};

std::string encode(const handshake_msg& m);
// Bounded and canonical: wrong magic/version, oversized names, too many QPs, a bad MTU or trailing
// bytes are handshake_invalid_message.
result<handshake_msg> decode_handshake(std::string_view bytes);

// The path MTU both ends can carry.
inline mtu negotiate_mtu(mtu a, mtu b) noexcept { return a < b ? a : b; }

// The GID an RoCE port should use: the override when given (it must exist and be non-zero); else a
// RoCE v2 entry holding the address the engine is bound to (IPv4-mapped for IPv4); else the first
// RoCE v2 entry with an IPv4-mapped address; else the first RoCE v2 one; else the first non-zero
// entry. InfiniBand ports use index 0 unless overridden. device_not_found when nothing fits.
result<int> choose_gid(std::span<const gid_entry> table, link_layer link, std::optional<int> override_index,
                       std::optional<gid> bound_address);
// "10.0.0.1" -> ::ffff:10.0.0.1, an IPv6 literal as is; nullopt for anything else or a wildcard or
// loopback address (which no GID holds).
std::optional<gid> gid_of_address(std::string_view ip);
std::string to_string(const gid& g);

}  // namespace yutu::transfer::rdma
