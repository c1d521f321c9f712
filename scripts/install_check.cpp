// Built by scripts/test.sh against an installed yutu (meson install --destdir, then yutu.pc): proves
// the installed headers, the generated yutu_config.hpp and libyutu.a are enough on their own, and that
// they compile without a warning under -Wall -Wextra -Wpedantic -Werror.
#include <cstdio>
#include <cstring>

#include <yutu_config.hpp>

#include <yutu/error.hpp>
#include <yutu/io/op.hpp>
#include <yutu/io/reactor.hpp>

namespace {
yutu::task<bool> one_nop() {
  auto r = co_await yutu::io::nop();
  co_return r.has_value();
}
}  // namespace

int main() {
  yutu::io::reactor r;
  const bool ok = r.block_on(one_nop());
  const auto msg = yutu::make_error_code(yutu::errc::object_not_found).message();
  std::printf("install_check: yutu %s, nop %s, \"%s\"\n", YUTU_VERSION, ok ? "ok" : "FAILED", msg.c_str());
  return ok && msg == "object not found" && std::strlen(YUTU_VERSION) > 0 ? 0 : 1;
}
