// Minimal leveled logging to stderr, configured by YUTU_LOG (error, warn, info, debug; default warn).
//
// Used on control paths only (connects, fallbacks, restarts), never per operation.
#pragma once

#include <fmt/format.h>

#include <cstdio>
#include <cstdlib>
#include <string_view>

namespace yutu::log {

enum class level : int { error = 0, warn = 1, info = 2, debug = 3 };

inline level threshold() noexcept {
  static const level l = [] {
    const char* v = std::getenv("YUTU_LOG");
    if (!v) return level::warn;
    std::string_view s(v);
    if (s == "error") return level::error;
    if (s == "info") return level::info;
    if (s == "debug") return level::debug;
    return level::warn;
  }();
  return l;
}

template <class... A>
void write(level l, fmt::format_string<A...> f, A&&... a) {
  if (static_cast<int>(l) > static_cast<int>(threshold())) return;
  static constexpr const char* names[] = {"error", "warn", "info", "debug"};
  std::string line = fmt::format("yutu [{}] ", names[static_cast<int>(l)]);
  line += fmt::format(f, std::forward<A>(a)...);
  line += '\n';
  std::fwrite(line.data(), 1, line.size(), stderr);
}

template <class... A>
void error(fmt::format_string<A...> f, A&&... a) { write(level::error, f, std::forward<A>(a)...); }
template <class... A>
void warn(fmt::format_string<A...> f, A&&... a) { write(level::warn, f, std::forward<A>(a)...); }
template <class... A>
void info(fmt::format_string<A...> f, A&&... a) { write(level::info, f, std::forward<A>(a)...); }
template <class... A>
void debug(fmt::format_string<A...> f, A&&... a) { write(level::debug, f, std::forward<A>(a)...); }

}  // namespace yutu::log
