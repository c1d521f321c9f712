// Base64 (RFC 4648, standard alphabet, padded) for etcd's JSON gateway, which carries keys and values
// as base64 strings.
//
// Written here rather than taken from boost::beast::detail::base64: that one is in Beast's detail
// namespace (no stability promise) and its decoder stops at the first invalid character without
// saying so, whereas a metadata value that does not decode must be an error, not a silent truncation.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace yutu::transfer::detail {

inline std::string base64_encode(std::string_view in) {
  static constexpr char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  std::size_t i = 0;
  for (; i + 3 <= in.size(); i += 3) {
    std::uint32_t v = (std::uint32_t(std::uint8_t(in[i])) << 16) | (std::uint32_t(std::uint8_t(in[i + 1])) << 8) |
                      std::uint8_t(in[i + 2]);
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += alphabet[(v >> 6) & 63];
    out += alphabet[v & 63];
  }
  std::size_t rest = in.size() - i;
  if (rest) {
    std::uint32_t v = std::uint32_t(std::uint8_t(in[i])) << 16;
    if (rest == 2) v |= std::uint32_t(std::uint8_t(in[i + 1])) << 8;
    out += alphabet[(v >> 18) & 63];
    out += alphabet[(v >> 12) & 63];
    out += rest == 2 ? alphabet[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// nullopt for anything but canonical padded base64 (wrong length, a foreign character, padding in the
// middle, non-zero bits in the padding).
inline std::optional<std::string> base64_decode(std::string_view in) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  if (in.size() % 4 != 0) return std::nullopt;
  std::string out;
  out.reserve(in.size() / 4 * 3);
  for (std::size_t i = 0; i < in.size(); i += 4) {
    const bool last = i + 4 == in.size();
    int pad = 0;
    if (last) pad = (in[i + 3] == '=') + (in[i + 2] == '=' && in[i + 3] == '=');
    std::uint32_t v = 0;
    for (int k = 0; k < 4 - pad; ++k) {
      int d = value(in[i + k]);
      if (d < 0) return std::nullopt;
      v |= std::uint32_t(d) << (18 - 6 * k);
    }
    if (pad == 2 && (v & 0xFFFF)) return std::nullopt;
    if (pad == 1 && (v & 0xFF)) return std::nullopt;
    out += char((v >> 16) & 0xFF);
    if (pad < 2) out += char((v >> 8) & 0xFF);
    if (pad < 1) out += char(v & 0xFF);
  }
  return out;
}

}  // namespace yutu::transfer::detail
