// Messages of yutu's error categories and the mapping of any error code onto Mooncake's numbers.
#include "yutu/error.hpp"

namespace yutu {
namespace {

struct store_category_impl final : std::error_category {
  const char* name() const noexcept override { return "yutu.store"; }
  std::string message(int v) const override {
    switch (static_cast<errc>(v)) {
      case errc::ok: return "ok";
      case errc::internal_error: return "internal error";
      case errc::buffer_overflow: return "buffer overflow: the destination is smaller than the object";
      case errc::segment_not_found: return "segment not found";
      case errc::segment_already_exists: return "segment already exists";
      case errc::client_not_found: return "client not found";
      case errc::no_available_handle: return "no available space (no allocation handle)";
      case errc::invalid_version: return "invalid or unsupported protocol version";
      case errc::invalid_key: return "invalid key";
      case errc::write_fail: return "write failed";
      case errc::invalid_params: return "invalid parameters";
      case errc::illegal_client: return "illegal client";
      case errc::invalid_write: return "invalid write";
      case errc::invalid_read: return "invalid read";
      case errc::invalid_replica: return "invalid replica";
      case errc::replica_is_not_ready: return "replica is not ready";
      case errc::object_not_found: return "object not found";
      case errc::object_already_exists: return "object already exists";
      case errc::object_has_lease: return "object has a lease";
      case errc::lease_expired: return "lease expired";
      case errc::transfer_fail: return "transfer failed";
      case errc::checksum_mismatch: return "checksum mismatch";
      case errc::rpc_fail: return "rpc failed";
      case errc::rpc_timeout: return "rpc timed out";
      case errc::etcd_operation_error: return "etcd operation error";
      case errc::etcd_key_not_exist: return "etcd key does not exist";
      case errc::etcd_transaction_fail: return "etcd transaction failed";
      case errc::unavailable_in_current_status: return "unavailable in current status";
      case errc::not_supported: return "not supported";
      case errc::file_not_found: return "file not found";
      case errc::file_open_fail: return "file open failed";
      case errc::file_read_fail: return "file read failed";
      case errc::file_write_fail: return "file write failed";
      case errc::need_remount: return "the master does not know this client: remount its segments";
      case errc::protocol_error: return "protocol error: malformed frame";
      case errc::closed: return "closed";
    }
    return "unknown yutu store error " + std::to_string(v);
  }
};

struct engine_category_impl final : std::error_category {
  const char* name() const noexcept override { return "yutu.transfer"; }
  std::string message(int v) const override {
    switch (static_cast<te_errc>(v)) {
      case te_errc::ok: return "ok";
      case te_errc::invalid_argument: return "invalid argument";
      case te_errc::too_many_requests: return "too many requests";
      case te_errc::address_not_registered: return "address not registered";
      case te_errc::batch_busy: return "batch busy";
      case te_errc::device_not_found: return "device not found";
      case te_errc::address_overlapped: return "address overlaps a registered buffer";
      case te_errc::handshake_socket: return "handshake: socket error";
      case te_errc::handshake_invalid_message: return "handshake: invalid message";
      case te_errc::handshake_reject: return "handshake: rejected by peer";
      case te_errc::handshake_timeout: return "handshake: timed out";
      case te_errc::metadata_error: return "metadata error";
      case te_errc::endpoint_error: return "endpoint error";
      case te_errc::no_transport: return "no transport shared by both peers worked";
      case te_errc::stale_segment: return "stale segment descriptor: the peer restarted";
      case te_errc::peer_unreachable: return "peer unreachable";
      case te_errc::retries_exhausted: return "retries exhausted: every rail failed or is paused";
    }
    return "unknown yutu transfer error " + std::to_string(v);
  }
};

}  // namespace

const std::error_category& store_category() noexcept {
  static const store_category_impl c;
  return c;
}
const std::error_category& engine_category() noexcept {
  static const engine_category_impl c;
  return c;
}

int to_mooncake_code(const std::error_code& ec) noexcept {
  if (!ec) return 0;
  if (ec.category() == store_category()) return ec.value();
  if (ec.category() == engine_category()) {
    switch (static_cast<te_errc>(ec.value())) {
      case te_errc::invalid_argument:
      case te_errc::address_not_registered:
      case te_errc::address_overlapped: return static_cast<int>(errc::invalid_params);
      case te_errc::metadata_error: return static_cast<int>(errc::etcd_operation_error);
      default: return static_cast<int>(errc::transfer_fail);
    }
  }
  if (ec == std::errc::timed_out) return static_cast<int>(errc::rpc_timeout);
  if (ec == std::errc::invalid_argument) return static_cast<int>(errc::invalid_params);
  if (ec == std::errc::no_such_file_or_directory) return static_cast<int>(errc::file_not_found);
  if (ec == std::errc::not_supported) return static_cast<int>(errc::not_supported);
  if (ec == std::errc::connection_refused || ec == std::errc::connection_reset ||
      ec == std::errc::broken_pipe || ec == std::errc::host_unreachable ||
      ec == std::errc::network_unreachable)
    return static_cast<int>(errc::rpc_fail);
  return static_cast<int>(errc::internal_error);
}

}  // namespace yutu
