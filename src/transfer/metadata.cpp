// make_metadata_store: Mooncake's metadata connection strings onto yutu's back ends.
#include "yutu/transfer/metadata.hpp"

#include "metadata_backends.hpp"

namespace yutu::transfer {

result<std::unique_ptr<metadata_store>> make_metadata_store(std::string_view conn) {
  return make_metadata_store(conn, metadata_options{});
}

result<std::unique_ptr<metadata_store>> make_metadata_store(std::string_view conn, metadata_options opts) {
  if (conn.empty() || conn == "memory") return detail::make_memory_metadata_store();
  if (conn == "P2PHANDSHAKE" || conn == "p2p") return std::unique_ptr<metadata_store>();
  if (conn.starts_with("http://")) return detail::make_http_metadata_store(conn, opts);
  if (conn.starts_with("etcd://")) return detail::make_etcd_metadata_store(conn.substr(7), opts);
  if (conn.starts_with("redis://") || conn.starts_with("https://")) {
    log::warn("metadata: {} is not supported", conn);
    return fail(errc::not_supported);
  }
  if (conn.find("://") != std::string_view::npos) {
    log::warn("metadata: unknown scheme in {}", conn);
    return fail(errc::invalid_params);
  }
  // No scheme: etcd, as Mooncake reads it.
  return detail::make_etcd_metadata_store(conn, opts);
}

}  // namespace yutu::transfer
