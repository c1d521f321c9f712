// yutu-metadata: the HTTP key-value metadata server as a process, a drop-in for Mooncake's
// mooncake_http_metadata_server (same default port, same protocol). Engines point at it with
// metadata "http://<host>:<port>/metadata". SIGINT/SIGTERM stop it cleanly: the listener closes and
// requests in progress are answered first.
#include <signal.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "yutu/coro/async_scope.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/transfer/metadata_server.hpp"

namespace {

constexpr const char* usage =
    "usage: yutu-metadata [--host ADDR] [--port PORT]\n"
    "  HTTP metadata server (GET/PUT/DELETE /metadata?key=K), compatible with Mooncake's.\n"
    "  --host ADDR   address to listen on (default 0.0.0.0)\n"
    "  --port PORT   port to listen on (default 8080)\n"
    "  --help        this text\n";

// Waits for SIGINT/SIGTERM on the reactor, then stops the server.
yutu::task<void> stop_on_signal(int sfd, yutu::transfer::metadata_server& srv) {
  auto ready = co_await yutu::io::poll(sfd, POLLIN);
  if (ready) {
    signalfd_siginfo si{};
    if (::read(sfd, &si, sizeof si) == static_cast<ssize_t>(sizeof si))
      std::fprintf(stderr, "yutu-metadata: %s, stopping\n", ::strsignal(static_cast<int>(si.ssi_signo)));
  }
  srv.stop();
}

yutu::task<void> run(int sfd, yutu::transfer::metadata_server& srv) {
  yutu::async_scope scope;
  scope.spawn(stop_on_signal(sfd, srv));
  co_await srv.serve();
  scope.request_stop();  // serve() may also end on a fatal accept error: the watcher must end too
  co_await scope.join();
}

}  // namespace

int main(int argc, char** argv) {
  std::string host = "0.0.0.0";
  std::string port = "8080";
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    auto value = [&](std::string_view name, std::string& out) {
      if (a == name) {
        if (i + 1 >= argc) return false;
        out = argv[++i];
        return true;
      }
      if (a.size() > name.size() + 1 && a.starts_with(name) && a[name.size()] == '=') {
        out = std::string(a.substr(name.size() + 1));
        return true;
      }
      return false;
    };
    if (a == "--help" || a == "-h") {
      std::fputs(usage, stdout);
      return 0;
    }
    if (value("--host", host) || value("--port", port)) continue;
    std::fprintf(stderr, "yutu-metadata: unknown or incomplete argument '%s'\n%s", argv[i], usage);
    return 2;
  }
  char* end = nullptr;
  long p = std::strtol(port.c_str(), &end, 10);
  if (port.empty() || *end != '\0' || p < 0 || p > 65535) {
    std::fprintf(stderr, "yutu-metadata: bad port '%s'\n", port.c_str());
    return 2;
  }
  std::string where = host.find(':') != std::string::npos && host.front() != '[' ? fmt::format("[{}]:{}", host, p)
                                                                                  : fmt::format("{}:{}", host, p);
  auto at = yutu::io::address::parse(where);
  if (!at) {
    std::fprintf(stderr, "yutu-metadata: bad address '%s': %s\n", where.c_str(), at.error().message().c_str());
    return 2;
  }

  // Signals arrive through a signalfd the reactor polls, so stopping runs on the reactor thread.
  sigset_t mask;
  sigemptyset(&mask);
  sigaddset(&mask, SIGINT);
  sigaddset(&mask, SIGTERM);
  if (::sigprocmask(SIG_BLOCK, &mask, nullptr) != 0) {
    std::perror("yutu-metadata: sigprocmask");
    return 1;
  }
  int sfd = ::signalfd(-1, &mask, SFD_CLOEXEC);
  if (sfd < 0) {
    std::perror("yutu-metadata: signalfd");
    return 1;
  }

  auto srv = yutu::transfer::metadata_server::bind(*at);
  if (!srv) {
    std::fprintf(stderr, "yutu-metadata: cannot listen on %s: %s\n", where.c_str(), srv.error().message().c_str());
    ::close(sfd);
    return 1;
  }
  std::printf("yutu-metadata listening on %s\n", srv->local_address().to_string().c_str());
  std::fflush(stdout);

  yutu::io::reactor r;
  r.block_on(run(sfd, *srv));
  ::close(sfd);
  return 0;
}
