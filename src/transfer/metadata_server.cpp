// The HTTP key-value metadata server (see metadata_server.hpp).
#include "yutu/transfer/metadata_server.hpp"

#include <map>
#include <mutex>

#include "yutu/io/http.hpp"
#include "yutu/log.hpp"

namespace yutu::transfer {

using io::http_status;
using io::http_verb;

struct metadata_server::state {
  io::http_server http;
  metadata_server_options opts;
  mutable std::mutex mu;  // the handler runs on one reactor, size() may be asked from any thread
  std::map<std::string, std::string, std::less<>> kv;

  io::http_response handle(const io::http_request& req) {
    std::string_view target(req.target().data(), req.target().size());
    if (io::target_path(target) != opts.path) return io::make_response(http_status::not_found, "not found\n");
    auto key = io::query_param(target, "key");
    if (!key || key->empty()) return io::make_response(http_status::bad_request, "missing key\n");
    switch (req.method()) {
      case http_verb::get: {
        std::lock_guard lock(mu);
        auto it = kv.find(*key);
        if (it == kv.end()) return io::make_response(http_status::not_found, "metadata not found\n");
        return io::make_response(http_status::ok, it->second, "application/json");
      }
      case http_verb::put: {
        std::lock_guard lock(mu);
        kv.insert_or_assign(std::move(*key), req.body());
        return io::make_response(http_status::ok, "metadata updated\n");
      }
      case http_verb::delete_: {
        std::lock_guard lock(mu);
        auto it = kv.find(*key);
        if (it == kv.end()) return io::make_response(http_status::not_found, "metadata not found\n");
        kv.erase(it);
        return io::make_response(http_status::ok, "metadata deleted\n");
      }
      default: {
        io::http_response r = io::make_response(http_status::method_not_allowed, "method not allowed\n");
        r.set(io::http_field::allow, "GET, PUT, DELETE");
        return r;
      }
    }
  }
};

metadata_server::metadata_server(std::unique_ptr<state> s) noexcept : s_(std::move(s)) {}
metadata_server::metadata_server(metadata_server&&) noexcept = default;
metadata_server& metadata_server::operator=(metadata_server&&) noexcept = default;
metadata_server::~metadata_server() = default;

result<metadata_server> metadata_server::bind(const io::address& at, metadata_server_options opts) {
  io::http_server_options h;
  h.limits.body_limit = opts.max_value_size;
  h.request_timeout = opts.request_timeout;
  h.idle_timeout = opts.idle_timeout;
  auto srv = io::http_server::bind(at, h);
  if (!srv) return fail(srv.error());
  auto st = std::unique_ptr<state>(new state{std::move(*srv), std::move(opts), {}, {}});
  return metadata_server(std::move(st));
}

io::address metadata_server::local_address() const { return s_->http.local_address(); }

namespace {
task<io::http_response> answer(metadata_server::state* st, const io::http_request& req) {
  co_return st->handle(req);
}
}  // namespace

task<void> metadata_server::serve() {
  state* st = s_.get();
  return st->http.serve([st](const io::http_request& req) { return answer(st, req); });
}

void metadata_server::stop() noexcept { s_->http.stop(); }

std::size_t metadata_server::size() const {
  std::lock_guard lock(s_->mu);
  return s_->kv.size();
}

}  // namespace yutu::transfer
