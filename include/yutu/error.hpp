// Error model of yutu: result<T> (an expected over std::error_code) and the error categories.
//
// Every path that can fail at run time returns result<T>. Codes keep the numbers of Mooncake's error
// codes so the C and Python bindings can hand them to vLLM, SGLang and LMCache unchanged. Two
// categories exist because Mooncake numbers its store and its transfer engine independently (-101 is
// SEGMENT_NOT_FOUND in one and a handshake failure in the other). Cancellation and deadlines use the
// generic category (std::errc::operation_canceled, std::errc::timed_out); to_mooncake_code() maps
// any code onto the store's numbering for bindings.
#pragma once

#include <string>
#include <system_error>
#include <type_traits>
#include <utility>

#include <tl/expected.hpp>

namespace yutu {

// Mooncake Store's error codes, same numbers.
enum class errc : int {
  ok = 0,
  internal_error = -1,
  buffer_overflow = -10,
  segment_not_found = -101,
  segment_already_exists = -102,
  client_not_found = -103,
  no_available_handle = -200,
  invalid_version = -300,
  invalid_key = -400,
  write_fail = -500,
  invalid_params = -600,
  illegal_client = -601,
  invalid_write = -700,
  invalid_read = -701,
  invalid_replica = -702,
  replica_is_not_ready = -703,
  object_not_found = -704,
  object_already_exists = -705,
  object_has_lease = -706,
  lease_expired = -707,
  transfer_fail = -800,
  checksum_mismatch = -801,
  rpc_fail = -900,
  rpc_timeout = -901,
  etcd_operation_error = -1000,
  etcd_key_not_exist = -1001,
  etcd_transaction_fail = -1002,
  unavailable_in_current_status = -1010,
  not_supported = -1012,
  file_not_found = -1100,
  file_open_fail = -1101,
  file_read_fail = -1102,
  file_write_fail = -1103,
  // yutu's own, outside every range Mooncake uses.
  need_remount = -2001,
  protocol_error = -2002,  // a malformed or hostile frame; the connection is closed
  closed = -2003,          // a channel, connection or engine that was closed
};

// Mooncake Transfer Engine's error codes, same numbers.
enum class te_errc : int {
  ok = 0,
  invalid_argument = -1,
  too_many_requests = -2,
  address_not_registered = -3,
  batch_busy = -4,
  device_not_found = -6,
  address_overlapped = -7,
  handshake_socket = -101,
  handshake_invalid_message = -102,
  handshake_reject = -103,
  handshake_timeout = -104,
  metadata_error = -200,
  endpoint_error = -201,
  // yutu's own.
  no_transport = -2101,      // no transport that both peers share worked
  stale_segment = -2102,     // the peer restarted: its incarnation id changed
  peer_unreachable = -2103,
  retries_exhausted = -2104,  // RDMA: every retry of a slice failed, or every rail is paused
};

const std::error_category& store_category() noexcept;
const std::error_category& engine_category() noexcept;

inline std::error_code make_error_code(errc e) noexcept { return {static_cast<int>(e), store_category()}; }
inline std::error_code make_error_code(te_errc e) noexcept { return {static_cast<int>(e), engine_category()}; }

template <class T>
using result = tl::expected<T, std::error_code>;

using tl::unexpected;

// `return yutu::ok();` for result<void>.
inline result<void> ok() noexcept { return {}; }

// `return yutu::fail(errc::object_not_found);` for any result<T>.
template <class E>
  requires std::is_error_code_enum_v<E> || std::is_error_condition_enum_v<E>
inline tl::unexpected<std::error_code> fail(E e) noexcept {
  return tl::unexpected<std::error_code>(make_error_code(e));
}
inline tl::unexpected<std::error_code> fail(std::error_code ec) noexcept {
  return tl::unexpected<std::error_code>(ec);
}
// From a negative errno as io_uring reports it.
inline tl::unexpected<std::error_code> fail_errno(int negative_errno) noexcept {
  return tl::unexpected<std::error_code>(std::error_code(-negative_errno, std::system_category()));
}

inline bool is_canceled(const std::error_code& ec) noexcept {
  return ec == std::errc::operation_canceled;
}
inline bool is_timeout(const std::error_code& ec) noexcept { return ec == std::errc::timed_out; }

// The number a Mooncake-shaped binding returns for this code (store numbering).
int to_mooncake_code(const std::error_code& ec) noexcept;

}  // namespace yutu

template <>
struct std::is_error_code_enum<yutu::errc> : std::true_type {};
template <>
struct std::is_error_code_enum<yutu::te_errc> : std::true_type {};
