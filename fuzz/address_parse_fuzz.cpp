// Fuzzes io::address::parse: it must never crash on any text, and whatever it accepts must print
// (to_string) as text that parses back to the same address.
//
// parse falls back to getaddrinfo for host names. A fuzzer must not query DNS (slow, not
// reproducible, and CI has no network), so this harness defines getaddrinfo/freeaddrinfo itself: the
// static link binds the library's calls to these, which know only "localhost" and "ip6-localhost".
#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string_view>

#include "yutu/io/address.hpp"

namespace {
struct fake_result {
  addrinfo info;
  sockaddr_storage addr;
};
}  // namespace

extern "C" int getaddrinfo(const char* node, const char*, const addrinfo*, addrinfo** res) {
  if (!node || !res) return EAI_NONAME;
  const std::string_view name(node);
  auto* r = new fake_result{};
  if (name == "localhost") {
    auto* v4 = reinterpret_cast<sockaddr_in*>(&r->addr);
    v4->sin_family = AF_INET;
    v4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    r->info.ai_family = AF_INET;
    r->info.ai_addrlen = sizeof(sockaddr_in);
  } else if (name == "ip6-localhost") {
    auto* v6 = reinterpret_cast<sockaddr_in6*>(&r->addr);
    v6->sin6_family = AF_INET6;
    v6->sin6_addr = in6addr_loopback;
    r->info.ai_family = AF_INET6;
    r->info.ai_addrlen = sizeof(sockaddr_in6);
  } else {
    delete r;
    return EAI_NONAME;
  }
  r->info.ai_socktype = SOCK_STREAM;
  r->info.ai_addr = reinterpret_cast<sockaddr*>(&r->addr);
  *res = &r->info;
  return 0;
}

extern "C" void freeaddrinfo(addrinfo* ai) {
  // ai is the first member of the fake_result it was allocated in.
  delete reinterpret_cast<fake_result*>(ai);
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto a = yutu::io::address::parse(text);
  if (!a) {
    if (a.error() != yutu::errc::invalid_params) std::abort();
    return 0;
  }
  if (a->family() != AF_INET && a->family() != AF_INET6) std::abort();
  const auto printed = a->to_string();
  auto again = yutu::io::address::parse(printed);
  if (!again || !(*again == *a) || again->port() != a->port()) std::abort();
  return 0;
}
