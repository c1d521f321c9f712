// Fuzzes the error categories: every int must have a message, and to_mooncake_code must map any code
// of either category onto the store's numbering without inventing success.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>

#include "yutu/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < sizeof(int)) return -1;  // not worth adding to the corpus
  int v = 0;
  std::memcpy(&v, data, sizeof v);

  const std::error_code store(v, yutu::store_category());
  const std::error_code engine(v, yutu::engine_category());
  if (store.message().empty() || engine.message().empty()) std::abort();

  // The store's numbers pass through unchanged; anything non-zero never becomes success.
  if (yutu::to_mooncake_code(store) != v) std::abort();
  const int mapped = yutu::to_mooncake_code(engine);
  if ((v == 0) != (mapped == 0)) std::abort();
  if (mapped > 0) std::abort();
  return 0;
}
