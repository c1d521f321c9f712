// The metadata back ends behind make_metadata_store, and the error rule they share (metadata.hpp).
#pragma once

#include <memory>
#include <string_view>
#include <system_error>

#include "yutu/error.hpp"
#include "yutu/log.hpp"
#include "yutu/transfer/metadata.hpp"

namespace yutu::transfer::detail {

std::unique_ptr<metadata_store> make_memory_metadata_store();
// `url` is "http://host:port[/path]"; the path defaults to /metadata.
result<std::unique_ptr<metadata_store>> make_http_metadata_store(std::string_view url, const metadata_options& opts);
// `endpoints` is "host:port[;host:port...]", each optionally with an http:// prefix.
result<std::unique_ptr<metadata_store>> make_etcd_metadata_store(std::string_view endpoints,
                                                                 const metadata_options& opts);

// Deadlines and cancellation keep their generic codes; every other failure of a remote back end is
// te_errc::metadata_error, its cause logged so the single code does not hide it.
inline std::error_code metadata_failure(std::string_view where, const std::error_code& cause) {
  if (is_timeout(cause) || is_canceled(cause)) return cause;
  log::warn("metadata {}: {}", where, cause.message());
  return make_error_code(te_errc::metadata_error);
}

}  // namespace yutu::transfer::detail
