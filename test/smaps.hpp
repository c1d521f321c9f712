// Reading this process's /proc/self/smaps in tests: how much of chosen mappings the page tables map
// (Rss), to check that memory was or was not populated.
#pragma once

#include <cstddef>
#include <cstdio>
#include <cstring>

#include <doctest/doctest.h>

namespace yutu::test {

// The summed Rss, in bytes, of the mappings whose header line (start address, and the line itself,
// which ends with the mapping's name) `match(start, line)` accepts.
template <class Match>
std::size_t mapped_rss(Match match) {
  std::FILE* f = std::fopen("/proc/self/smaps", "r");
  REQUIRE(f != nullptr);
  char line[512];
  bool in = false;
  std::size_t total = 0, kib = 0;
  while (std::fgets(line, sizeof line, f)) {
    unsigned long lo = 0, hi = 0;
    // A header is "lo-hi perms ...": the first '-' comes before the first space. Field lines
    // ("Rss:  12 kB") have no '-' there.
    if (std::sscanf(line, "%lx-%lx ", &lo, &hi) == 2 && std::strchr(line, '-') < std::strchr(line, ' ')) {
      in = match(lo, static_cast<const char*>(line));
      continue;
    }
    if (in && std::sscanf(line, "Rss: %zu kB", &kib) == 1) total += kib * 1024;
  }
  std::fclose(f);
  return total;
}

}  // namespace yutu::test
