// The client of an HTTP key-value metadata server (Mooncake's http_metadata_server protocol, and
// yutu-metadata's): GET/PUT/DELETE <path>?key=<urlencoded key>; GET answers 404 for a missing key.
#include <fmt/format.h>

#include "metadata_backends.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/http.hpp"

namespace yutu::transfer::detail {
namespace {

using io::http_status;
using io::http_verb;

class http_store final : public metadata_store {
 public:
  http_store(const io::address& at, std::string url, std::string path, metadata_options opts)
      : client_(at, client_options(opts)), url_(std::move(url)), path_(std::move(path)), opts_(opts) {}

  task<result<std::optional<std::string>>> get(std::string key) override {
    auto r = co_await client_.request(make(http_verb::get, key), opts_.deadline);
    if (!r) co_return fail(metadata_failure(where("GET", key), r.error()));
    if (r->result() == http_status::not_found) co_return std::optional<std::string>{};
    if (r->result() != http_status::ok) co_return fail(unexpected_status("GET", key, *r));
    co_return std::optional<std::string>(std::move(r->body()));
  }

  task<result<void>> put(std::string key, std::string value, put_options) override {
    io::http_request req = make(http_verb::put, key);
    req.set(io::http_field::content_type, "application/octet-stream");
    req.body() = std::move(value);
    auto r = co_await client_.request(std::move(req), opts_.deadline);
    if (!r) co_return fail(metadata_failure(where("PUT", key), r.error()));
    if (boost::beast::http::to_status_class(r->result()) != boost::beast::http::status_class::successful)
      co_return fail(unexpected_status("PUT", key, *r));
    co_return ok();
  }

  task<result<void>> remove(std::string key) override {
    auto r = co_await client_.request(make(http_verb::delete_, key), opts_.deadline);
    if (!r) co_return fail(metadata_failure(where("DELETE", key), r.error()));
    if (r->result() == http_status::not_found) co_return ok();
    if (boost::beast::http::to_status_class(r->result()) != boost::beast::http::status_class::successful)
      co_return fail(unexpected_status("DELETE", key, *r));
    co_return ok();
  }

  std::string describe() const override { return url_; }

 private:
  static io::http_client_options client_options(const metadata_options& o) {
    io::http_client_options c;
    c.default_deadline = o.deadline;
    return c;
  }
  io::http_request make(http_verb v, std::string_view key) const {
    io::http_request req{v, path_ + "?key=" + io::url_encode(key), 11};
    return req;
  }
  std::string where(std::string_view verb, std::string_view key) const {
    return fmt::format("{} {} key {}", verb, url_, key);
  }
  std::error_code unexpected_status(std::string_view verb, std::string_view key, const io::http_response& r) const {
    log::warn("metadata {}: HTTP {} {}", where(verb, key), r.result_int(), std::string_view(r.reason()));
    return make_error_code(te_errc::metadata_error);
  }

  io::http_client client_;
  std::string url_, path_;
  metadata_options opts_;
};

}  // namespace

result<std::unique_ptr<metadata_store>> make_http_metadata_store(std::string_view url, const metadata_options& opts) {
  std::string_view rest = url;
  if (rest.starts_with("http://")) rest.remove_prefix(7);
  auto slash = rest.find('/');
  std::string_view hostport = rest.substr(0, slash);
  std::string path = slash == std::string_view::npos ? std::string("/metadata") : std::string(rest.substr(slash));
  if (hostport.empty()) return fail(errc::invalid_params);
  std::string hp(hostport);
  // No port: HTTP's. An IPv6 literal without a port is "[::1]", whose last ':' is inside brackets.
  if (auto colon = hp.rfind(':'); colon == std::string::npos || hp.back() == ']') hp += ":80";
  auto at = io::address::parse(hp);
  if (!at) {
    log::warn("metadata: cannot resolve {}: {}", hp, at.error().message());
    return fail(at.error());
  }
  return std::unique_ptr<metadata_store>(
      std::make_unique<http_store>(*at, "http://" + std::string(hostport) + path, std::move(path), opts));
}

}  // namespace yutu::transfer::detail
