// The consumer example: a program outside yutu's tree that runs one reactor, awaits a timer and a
// batch of no-ops through it, and prints what happened. Exits non-zero if anything failed.
#include <chrono>
#include <cstdio>

#include <yutu/error.hpp>
#include <yutu/io/op.hpp>
#include <yutu/io/reactor.hpp>

using namespace std::chrono_literals;

namespace {

yutu::task<yutu::result<int>> work() {
  if (auto slept = co_await yutu::io::sleep_for(2ms); !slept) co_return yutu::fail(slept.error());
  int nops = 0;
  for (int i = 0; i < 100; ++i) {
    if (auto r = co_await yutu::io::nop(); !r) co_return yutu::fail(r.error());
    ++nops;
  }
  co_return nops;
}

}  // namespace

int main() {
  yutu::io::reactor r;
  auto res = r.block_on(work());
  if (!res) {
    std::printf("consumer: failed: %s\n", res.error().message().c_str());
    return 1;
  }
  std::printf("consumer: slept 2 ms and completed %d nops through yutu's reactor\n", *res);
  return *res == 100 ? 0 : 1;
}
