// Fuzzes the server's request decoding path: the bytes go through io::http_request_decoder exactly as
// the connection loop feeds it (in pieces, several requests per stream, finish() at EOF), and each
// request's target through the query helpers the metadata server applies. Nothing may crash, leak or
// grow without bound; every decoded message must respect the limits.
//
// The first input byte picks the piece size, so the fuzzer explores header and chunk boundaries that
// fall across reads.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "yutu/io/http.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  const std::size_t piece = 1 + data[0] % 64;
  std::string_view in(reinterpret_cast<const char*>(data + 1), size - 1);

  yutu::io::http_limits limits{.header_limit = 4096, .body_limit = 16 * 1024};
  yutu::io::http_request_decoder dec(limits);
  bool failed = false;
  auto drain = [&] {
    for (;;) {
      auto m = dec.next();
      if (!m) {
        failed = true;
        return;
      }
      if (!*m) return;
      const yutu::io::http_request& req = **m;
      if (req.body().size() > limits.body_limit) std::abort();
      std::string_view target(req.target().data(), req.target().size());
      (void)yutu::io::target_path(target);
      (void)yutu::io::query_param(target, "key");
      if (auto d = yutu::io::url_decode(target); d && d->size() > target.size()) std::abort();
    }
  };
  while (!in.empty() && !failed) {
    std::string_view chunk = in.substr(0, piece);
    in.remove_prefix(chunk.size());
    (void)dec.take_continue();
    dec.append(chunk);
    drain();
  }
  if (!failed) (void)dec.finish();
  return 0;
}
