// Integers out of untrusted JSON: descriptors from peers and metadata servers, traces. nlohmann's
// get<T>() converts with a plain cast, so a float out of T's range is undefined behaviour (the
// transfer_frame fuzzer found one: "incarnation": 5.5e21 in a segment descriptor) and a wider
// integer is silently truncated (a port of 70000). json_int<T> takes only an integer that fits T.
#pragma once

#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

#include <nlohmann/json.hpp>

namespace yutu {

template <class T>
std::optional<T> json_int(const nlohmann::json& v) noexcept {
  static_assert(std::is_integral_v<T> && !std::is_same_v<T, bool>);
  constexpr auto max = static_cast<std::uint64_t>(std::numeric_limits<T>::max());
  if (v.is_number_unsigned()) {
    const auto x = v.get<std::uint64_t>();
    if (x > max) return std::nullopt;
    return static_cast<T>(x);
  }
  if (v.is_number_integer()) {
    const auto x = v.get<std::int64_t>();
    if (x < 0) {
      if constexpr (std::is_unsigned_v<T>) {
        return std::nullopt;
      } else {
        if (x < static_cast<std::int64_t>(std::numeric_limits<T>::min())) return std::nullopt;
        return static_cast<T>(x);
      }
    }
    if (static_cast<std::uint64_t>(x) > max) return std::nullopt;
    return static_cast<T>(x);
  }
  return std::nullopt;  // a float, a string, anything else
}

// An array of such integers; nullopt if `v` is not an array or any element does not fit.
template <class T>
std::optional<std::vector<T>> json_ints(const nlohmann::json& v) {
  if (!v.is_array()) return std::nullopt;
  std::vector<T> out;
  out.reserve(v.size());
  for (const auto& e : v) {
    auto x = json_int<T>(e);
    if (!x) return std::nullopt;
    out.push_back(*x);
  }
  return out;
}

}  // namespace yutu
