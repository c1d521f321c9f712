// The TCP transport's and handshake's frame format, with a decoder that trusts nothing.
//
// Every frame starts with a fixed 48-byte little-endian header; payload bytes (if any) follow. The
// decoder checks magic, version, type and the payload bound for that type before anything is
// allocated or any memory is touched: a malformed or hostile header yields errc::protocol_error and
// the connection is closed; no other connection notices.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>

#include "yutu/error.hpp"

namespace yutu::transfer::wire {

inline constexpr std::uint32_t magic = 0x55545559;  // "YUTU"
inline constexpr std::uint8_t version = 1;
inline constexpr std::size_t header_size = 48;
inline constexpr std::uint64_t max_control_payload = 1u << 20;  // descriptors, notifications

enum class frame_type : std::uint8_t {
  write = 1,       // initiator -> target: header + `length` payload bytes for target `addr`
  read = 2,        // initiator -> target: send me `length` bytes at `addr`
  write_ack = 3,   // target -> initiator: status of a write, after it was applied
  read_resp = 4,   // target -> initiator: status; if ok, `length` payload bytes follow
  desc_req = 5,    // who are you: the target answers with its descriptor
  desc_resp = 6,   // payload: descriptor JSON
  notify = 7,      // payload: a short message for the target's notification stream
  notify_ack = 8,
  transport_req = 9,   // payload: transport name, NUL, a transport's own control message (RDMA QP handshake)
  transport_resp = 10, // status; payload: the transport's answer
};

struct header {
  frame_type type{};
  std::uint16_t flags = 0;
  std::int32_t status = 0;        // 0 or a te_errc value (responses)
  std::uint64_t id = 0;           // request id, echoed by responses
  std::uint64_t incarnation = 0;  // the target incarnation the initiator expects (0 = any)
  std::uint64_t addr = 0;
  std::uint64_t length = 0;
};

using header_bytes = std::array<std::byte, header_size>;

namespace detail {
template <class T>
inline void put(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);  // x86-64 and aarch64 Linux are little-endian
}
template <class T>
inline T get(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace detail

inline header_bytes encode(const header& h) noexcept {
  header_bytes b{};
  std::byte* p = b.data();
  detail::put<std::uint32_t>(p + 0, magic);
  detail::put<std::uint8_t>(p + 4, version);
  detail::put<std::uint8_t>(p + 5, static_cast<std::uint8_t>(h.type));
  detail::put<std::uint16_t>(p + 6, h.flags);
  detail::put<std::int32_t>(p + 8, h.status);
  detail::put<std::uint32_t>(p + 12, 0);
  detail::put<std::uint64_t>(p + 16, h.id);
  detail::put<std::uint64_t>(p + 24, h.incarnation);
  detail::put<std::uint64_t>(p + 32, h.addr);
  detail::put<std::uint64_t>(p + 40, h.length);
  return b;
}

// `max_data_payload` bounds write payloads and read lengths (one slice).
inline result<header> decode(std::span<const std::byte, header_size> b, std::uint64_t max_data_payload) noexcept {
  const std::byte* p = b.data();
  if (detail::get<std::uint32_t>(p) != magic) return fail(errc::protocol_error);
  if (detail::get<std::uint8_t>(p + 4) != version) return fail(errc::invalid_version);
  header h;
  auto t = detail::get<std::uint8_t>(p + 5);
  if (t < 1 || t > 10) return fail(errc::protocol_error);
  h.type = static_cast<frame_type>(t);
  h.flags = detail::get<std::uint16_t>(p + 6);
  h.status = detail::get<std::int32_t>(p + 8);
  if (detail::get<std::uint32_t>(p + 12) != 0) return fail(errc::protocol_error);
  h.id = detail::get<std::uint64_t>(p + 16);
  h.incarnation = detail::get<std::uint64_t>(p + 24);
  h.addr = detail::get<std::uint64_t>(p + 32);
  h.length = detail::get<std::uint64_t>(p + 40);
  switch (h.type) {
    case frame_type::write:
    case frame_type::read:
    case frame_type::read_resp:
      if (h.length > max_data_payload) return fail(errc::protocol_error);
      if (h.addr + h.length < h.addr) return fail(errc::protocol_error);
      break;
    case frame_type::desc_resp:
    case frame_type::notify:
    case frame_type::transport_req:
    case frame_type::transport_resp:
      if (h.length > max_control_payload) return fail(errc::protocol_error);
      break;
    case frame_type::write_ack:
    case frame_type::desc_req:
    case frame_type::notify_ack:
      if (h.length != 0) return fail(errc::protocol_error);
      break;
  }
  return h;
}

}  // namespace yutu::transfer::wire
