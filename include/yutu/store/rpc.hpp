// The store's RPC protocol between clients and the master: frames, message types and a binary codec
// that trusts nothing it decodes.
//
// A frame is a fixed 24-byte little-endian header, then `length` payload bytes:
//
//   offset 0  u32 magic "YTMS"     offset 8   u32 flags (reserved, 0)
//   offset 4  u16 version          offset 12  u32 payload length
//   offset 6  u16 type             offset 16  u64 request id (echoed by the response)
//
// Magic, version, length and id keep their offsets in every version, so a receiver can skip a frame
// of a version it does not speak and answer it with errc::invalid_version: the stream stays in sync.
// The type is an op (one per master_service operation) for a request, op | response_bit for its
// response, or error_type for a request that could not even be decoded as an op.
//
// Payloads: fixed-width little-endian integers, strings and vectors prefixed by a u32 count. Every
// response payload starts with a status (an error code); the body follows only when it is ok. The
// reader checks every field against the bytes left in the payload before it allocates anything, and
// against configured maxima (key length, string length, vector length, frame size): a malformed
// payload is errc::protocol_error, a field over a maximum errc::invalid_params (invalid_key for a
// key), a foreign version errc::invalid_version. Decoding is canonical: bytes that decode re-encode
// to the same bytes, which the fuzzer (fuzz/store_rpc_fuzz.cpp) checks.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <variant>
#include <vector>

#include "yutu/error.hpp"
#include "yutu/store/master_service.hpp"
#include "yutu/store/types.hpp"

namespace yutu::store::rpc {

inline constexpr std::uint32_t magic = 0x534D5459;  // "YTMS" as bytes on the wire
inline constexpr std::uint16_t version = 1;
inline constexpr std::size_t header_size = 24;

// One per master_service operation. Numbers are part of the protocol: append, never renumber.
enum class op : std::uint8_t {
  mount_segment = 1,
  unmount_segment = 2,
  ping = 3,
  put_start = 4,
  put_end = 5,
  put_revoke = 6,
  upsert_start = 7,
  batch_put_start = 8,
  batch_put_end = 9,
  batch_put_revoke = 10,
  get_replica_list = 11,
  batch_get_replica_list = 12,
  match_prefix = 13,
  exist = 14,
  batch_exist = 15,
  get_size = 16,
  remove = 17,
  batch_remove = 18,
  remove_all = 19,
  batch_put_commit = 20,
};
inline constexpr std::uint8_t op_max = 20;
inline constexpr std::uint16_t response_bit = 0x100;
inline constexpr std::uint16_t error_type = 0x1FF;

constexpr std::uint16_t request_type(op o) noexcept { return static_cast<std::uint16_t>(o); }
constexpr std::uint16_t response_type(op o) noexcept { return static_cast<std::uint16_t>(o) | response_bit; }
// The op a request or response type belongs to; nullopt for error_type and unknown types.
std::optional<op> op_of(std::uint16_t type) noexcept;
constexpr bool is_response(std::uint16_t type) noexcept { return (type & response_bit) != 0; }
// "put_start", ...: metric labels and logs.
std::string_view op_name(op o) noexcept;

// Bounds the decoder enforces. Both ends use the same defaults; a master may lower them.
struct limits {
  std::size_t max_key_length = 4096;
  std::size_t max_string_length = 64 * 1024;  // names, hosts, client ids, group ids
  std::size_t max_batch = 16384;              // elements of any vector
  std::size_t max_frame = std::size_t{64} << 20;  // payload bytes of one frame
};

struct header {
  std::uint16_t version = rpc::version;
  std::uint16_t type = 0;
  std::uint32_t flags = 0;
  std::uint32_t length = 0;
  std::uint64_t id = 0;
};
using header_bytes = std::array<std::byte, header_size>;

namespace detail {
template <class T>
inline void store_le(std::byte* p, T v) noexcept {
  std::memcpy(p, &v, sizeof v);  // x86-64 and aarch64 Linux are little-endian
}
template <class T>
inline T load_le(const std::byte* p) noexcept {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
}  // namespace detail

void encode_header(std::byte* out, const header& h) noexcept;
inline header_bytes encode_header(const header& h) noexcept {
  header_bytes b;
  encode_header(b.data(), h);
  return b;
}
// Checks what every version keeps: the magic, and the payload length against lim.max_frame. Failing
// here (errc::protocol_error) leaves the stream out of sync: the connection must be closed.
result<header> decode_header(std::span<const std::byte, header_size> b, const limits& lim) noexcept;
// Checks a request header whose payload can be skipped: errc::invalid_version, or
// errc::protocol_error for an unknown type, a response type or nonzero flags.
result<op> check_request(const header& h) noexcept;
// The same for a response (a response type or error_type; nullopt op for error_type).
result<std::optional<op>> check_response(const header& h) noexcept;

// --- payload codec ---

// Appends to a byte string. Strings and vectors longer than a u32 count are broken invariants
// (the caller's limits are far below).
class writer {
 public:
  explicit writer(std::string& out) noexcept : out_(&out) {}
  void u8(std::uint8_t v) { raw(&v, 1); }
  void u32(std::uint32_t v) { raw(&v, 4); }
  void u64(std::uint64_t v) { raw(&v, 8); }
  void i32(std::int32_t v) { raw(&v, 4); }
  void i64(std::int64_t v) { raw(&v, 8); }
  void boolean(bool v) { u8(v ? 1 : 0); }
  void count(std::size_t n);
  void str(std::string_view s) {
    count(s.size());
    out_->append(s);
  }
  std::string& out() noexcept { return *out_; }

 private:
  void raw(const void* p, std::size_t n) { out_->append(static_cast<const char*>(p), n); }
  std::string* out_;
};

// Reads a payload with a sticky error: after the first failure every read yields a zero value and
// the error stays; check ok() (or finish()) once at the end. Vector counts are bounded by the bytes
// left, so no hostile count can make the decoder allocate more than the payload's size allows.
class reader {
 public:
  reader(std::span<const std::byte> payload, const limits& lim) noexcept : p_(payload), lim_(&lim) {}
  std::uint8_t u8() noexcept { return fixed<std::uint8_t>(); }
  std::uint32_t u32() noexcept { return fixed<std::uint32_t>(); }
  std::uint64_t u64() noexcept { return fixed<std::uint64_t>(); }
  std::int32_t i32() noexcept { return fixed<std::int32_t>(); }
  std::int64_t i64() noexcept { return fixed<std::int64_t>(); }
  bool boolean() noexcept;
  // A vector's length: at most lim.max_batch (else invalid_params), and at most as many elements of
  // at least `min_element_size` bytes as the payload has left (else protocol_error).
  std::size_t count(std::size_t min_element_size) noexcept;
  void str(std::string& out) { bounded_str(out, lim_->max_string_length, errc::invalid_params); }
  void key(std::string& out) { bounded_str(out, lim_->max_key_length, errc::invalid_key); }

  // Marks the payload malformed (or over a limit); the first error stays.
  void set_error(std::error_code ec) noexcept {
    if (!ec_) ec_ = ec;
  }
  bool ok() const noexcept { return !ec_; }
  std::error_code error() const noexcept { return ec_; }
  std::size_t remaining() const noexcept { return p_.size() - pos_; }
  const limits& lim() const noexcept { return *lim_; }
  // Ok only if nothing failed and every byte was consumed (trailing bytes are protocol_error).
  result<void> finish() noexcept;

 private:
  template <class T>
  T fixed() noexcept {
    if (ec_ || remaining() < sizeof(T)) {
      set_error(make_error_code(errc::protocol_error));
      return T{};
    }
    T v = detail::load_le<T>(p_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }
  void bounded_str(std::string& out, std::size_t max, errc over);

  std::span<const std::byte> p_;
  std::size_t pos_ = 0;
  const limits* lim_;
  std::error_code ec_;
};

// --- requests: one struct per shape; several ops share a shape ---

struct mount_segment_request {
  client_id client;
  segment_info segment;
};
struct unmount_segment_request {
  client_id client;
  std::string segment_name;
};
struct ping_request {
  client_id client;
};
struct put_start_request {  // put_start, upsert_start
  client_id client;
  std::string key;
  std::uint64_t size = 0;
  replicate_config config;
};
struct client_key_request {  // put_end, put_revoke
  client_id client;
  std::string key;
};
struct batch_put_start_request {
  client_id client;
  std::vector<std::string> keys;
  std::vector<std::uint64_t> sizes;  // as many as keys (checked by the decoder)
  replicate_config config;
};
struct client_keys_request {  // batch_put_end, batch_put_revoke
  client_id client;
  std::vector<std::string> keys;
};
struct batch_put_commit_request {
  client_id client;
  std::vector<std::string> placeholders;
  std::vector<std::string> keys;  // as many as placeholders (checked by the decoder)
};
struct key_request {  // get_replica_list, exist, get_size
  std::string key;
};
struct keys_request {  // batch_get_replica_list, match_prefix, batch_exist
  std::vector<std::string> keys;
};
struct remove_request {
  std::string key;
  bool force = false;
};
struct batch_remove_request {
  std::vector<std::string> keys;
  bool force = false;
};
struct remove_all_request {
  bool force = false;
};

// The request and response shapes of each op. `response` is the value of the call's result: a
// response payload is an encoded result<response>.
template <op O>
struct op_traits;
#define YUTU_RPC_OP(O, Req, Resp)      \
  template <>                          \
  struct op_traits<op::O> {            \
    using request = Req;               \
    using response = Resp;             \
  };
YUTU_RPC_OP(mount_segment, mount_segment_request, void)
YUTU_RPC_OP(unmount_segment, unmount_segment_request, void)
YUTU_RPC_OP(ping, ping_request, ping_result)
YUTU_RPC_OP(put_start, put_start_request, std::vector<replica_desc>)
YUTU_RPC_OP(put_end, client_key_request, void)
YUTU_RPC_OP(put_revoke, client_key_request, void)
YUTU_RPC_OP(upsert_start, put_start_request, std::vector<replica_desc>)
YUTU_RPC_OP(batch_put_start, batch_put_start_request, std::vector<result<std::vector<replica_desc>>>)
YUTU_RPC_OP(batch_put_end, client_keys_request, std::vector<result<void>>)
YUTU_RPC_OP(batch_put_revoke, client_keys_request, std::vector<result<void>>)
YUTU_RPC_OP(get_replica_list, key_request, replica_list)
YUTU_RPC_OP(batch_get_replica_list, keys_request, std::vector<result<replica_list>>)
YUTU_RPC_OP(match_prefix, keys_request, match_result)
YUTU_RPC_OP(exist, key_request, bool)
YUTU_RPC_OP(batch_exist, keys_request, std::vector<result<bool>>)
YUTU_RPC_OP(get_size, key_request, std::uint64_t)
YUTU_RPC_OP(remove, remove_request, void)
YUTU_RPC_OP(batch_remove, batch_remove_request, std::vector<result<void>>)
YUTU_RPC_OP(remove_all, remove_all_request, std::uint64_t)
YUTU_RPC_OP(batch_put_commit, batch_put_commit_request, std::vector<result<void>>)
#undef YUTU_RPC_OP

template <op O>
using request_t = typename op_traits<O>::request;
template <op O>
using response_t = typename op_traits<O>::response;

// A decoded request of any op (what the server dispatches on).
struct any_request {
  op kind{};
  std::variant<mount_segment_request, unmount_segment_request, ping_request, put_start_request, client_key_request,
               batch_put_start_request, client_keys_request, key_request, keys_request, remove_request,
               batch_remove_request, remove_all_request, batch_put_commit_request>
      body;
};

// --- field encoders: put(writer, value) / get(reader, value) for every type on the wire ---

void put(writer& w, const std::string& s);
void get(reader& r, std::string& s);
void put(writer& w, std::uint64_t v);
void get(reader& r, std::uint64_t& v);
void put(writer& w, bool v);
void get(reader& r, bool& v);
void put(writer& w, const segment_info& v);
void get(reader& r, segment_info& v);
void put(writer& w, const replicate_config& v);
void get(reader& r, replicate_config& v);
void put(writer& w, const replica_desc& v);
void get(reader& r, replica_desc& v);
void put(writer& w, const replica_list& v);
void get(reader& r, replica_list& v);
void put(writer& w, const ping_result& v);
void get(reader& r, ping_result& v);
void put(writer& w, const match_result& v);
void get(reader& r, match_result& v);
// A status: u8 category tag (0 ok, 1 store errc, 2 engine te_errc, 3 generic errno) and, unless ok,
// an i32 code (never 0). Codes of other categories travel as errc::internal_error.
void put_status(writer& w, const std::error_code& ec);
std::error_code get_status(reader& r);
// Keys: strings bounded by max_key_length.
void put_keys(writer& w, const std::vector<std::string>& keys);
void get_keys(reader& r, std::vector<std::string>& keys);

// The fewest bytes one encoded element of T takes (bounds vector counts before allocating).
template <class T>
struct min_size;
template <>
struct min_size<std::string> : std::integral_constant<std::size_t, 4> {};
template <>
struct min_size<std::uint64_t> : std::integral_constant<std::size_t, 8> {};
template <>
struct min_size<bool> : std::integral_constant<std::size_t, 1> {};
template <>
struct min_size<replica_desc> : std::integral_constant<std::size_t, 4 + 4 + 8 + 8 + 1> {};
template <>
struct min_size<replica_list> : std::integral_constant<std::size_t, 8 + 4 + 8> {};
template <class T>
struct min_size<result<T>> : std::integral_constant<std::size_t, 1> {};
template <class T>
struct min_size<std::vector<T>> : std::integral_constant<std::size_t, 4> {};

template <class T>
void put(writer& w, const std::vector<T>& v);
template <class T>
void get(reader& r, std::vector<T>& v);
template <class T>
void put(writer& w, const result<T>& v);
template <class T>
void get(reader& r, result<T>& v);

template <class T>
void put(writer& w, const std::vector<T>& v) {
  w.count(v.size());
  for (const T& e : v) put(w, e);
}
template <class T>
void get(reader& r, std::vector<T>& v) {
  std::size_t n = r.count(min_size<T>::value);
  v.clear();
  v.reserve(n);
  for (std::size_t i = 0; i < n && r.ok(); ++i) get(r, v.emplace_back());
}
template <class T>
void put(writer& w, const result<T>& v) {
  if (!v) {
    put_status(w, v.error());
    return;
  }
  put_status(w, {});
  if constexpr (!std::is_void_v<T>) put(w, *v);
}
template <class T>
void get(reader& r, result<T>& v) {
  std::error_code ec = get_status(r);
  if (ec) {
    v = fail(ec);
    return;
  }
  if constexpr (std::is_void_v<T>) {
    v = ok();
  } else {
    T value{};
    get(r, value);
    v = std::move(value);
  }
}

// Message bodies.
void put(writer& w, const mount_segment_request& v);
void get(reader& r, mount_segment_request& v);
void put(writer& w, const unmount_segment_request& v);
void get(reader& r, unmount_segment_request& v);
void put(writer& w, const ping_request& v);
void get(reader& r, ping_request& v);
void put(writer& w, const put_start_request& v);
void get(reader& r, put_start_request& v);
void put(writer& w, const client_key_request& v);
void get(reader& r, client_key_request& v);
void put(writer& w, const batch_put_start_request& v);
void get(reader& r, batch_put_start_request& v);
void put(writer& w, const client_keys_request& v);
void get(reader& r, client_keys_request& v);
void put(writer& w, const key_request& v);
void get(reader& r, key_request& v);
void put(writer& w, const keys_request& v);
void get(reader& r, keys_request& v);
void put(writer& w, const remove_request& v);
void get(reader& r, remove_request& v);
void put(writer& w, const batch_remove_request& v);
void get(reader& r, batch_remove_request& v);
void put(writer& w, const remove_all_request& v);
void get(reader& r, remove_all_request& v);
void put(writer& w, const batch_put_commit_request& v);
void get(reader& r, batch_put_commit_request& v);

// --- whole frames ---

// Appends a frame (header + payload) to `out`: the header is written first with length 0 and patched
// once the payload is known, so the payload is encoded in place, without a copy. Returns the offset
// of the header in `out` (for patching the id later).
template <class F>
std::size_t append_frame(std::string& out, std::uint16_t type, std::uint64_t id, F&& encode_payload) {
  const std::size_t at = out.size();
  out.resize(at + header_size);
  writer w(out);
  encode_payload(w);
  header h;
  h.type = type;
  h.id = id;
  h.length = static_cast<std::uint32_t>(out.size() - at - header_size);
  encode_header(reinterpret_cast<std::byte*>(out.data() + at), h);
  return at;
}
// Rewrites the request id of the frame at `at` in `out`.
inline void patch_id(std::string& out, std::size_t at, std::uint64_t id) noexcept {
  detail::store_le<std::uint64_t>(reinterpret_cast<std::byte*>(out.data() + at + 16), id);
}

template <op O>
std::size_t append_request(std::string& out, std::uint64_t id, const request_t<O>& req) {
  return append_frame(out, request_type(O), id, [&](writer& w) { put(w, req); });
}
template <op O>
std::size_t append_response(std::string& out, std::uint64_t id, const result<response_t<O>>& resp) {
  return append_frame(out, response_type(O), id, [&](writer& w) { put(w, resp); });
}
// The answer to a request that could not be decoded (or a foreign version): a status only.
std::size_t append_error(std::string& out, std::uint16_t type, std::uint64_t id, std::error_code ec);

// Decodes a request payload of op `o`.
result<any_request> decode_request(op o, std::span<const std::byte> payload, const limits& lim);

template <op O>
result<request_t<O>> decode_request_as(std::span<const std::byte> payload, const limits& lim) {
  request_t<O> v{};
  reader r(payload, lim);
  get(r, v);
  if (auto f = r.finish(); !f) return fail(f.error());
  return v;
}

// Decodes a response payload of op `O`: the call's result, or protocol_error for malformed bytes.
template <op O>
result<response_t<O>> decode_response(std::span<const std::byte> payload, const limits& lim) {
  result<response_t<O>> v;
  reader r(payload, lim);
  get(r, v);
  if (auto f = r.finish(); !f) return fail(f.error());
  return v;
}
// Re-encodes a decoded response payload of op `o` (the fuzzer's canonical check); false if it does
// not decode.
bool reencode_response(op o, std::span<const std::byte> payload, const limits& lim, std::string& out);
// The same for a request body.
void reencode_request(const any_request& req, std::string& out);

// --- incremental framing over a byte stream ---

// A receive buffer that yields whole frames. The connection code, the tests and the fuzzer all go
// through it. A frame's payload view is valid until the next prepare().
class frame_buffer {
 public:
  explicit frame_buffer(std::size_t initial = 64 * 1024) : buf_(initial), initial_(initial) {}

  struct frame {
    header h;
    std::span<const std::byte> payload;
  };

  // Space for at least `n` bytes (moves buffered bytes to the front, grows if a frame needs it).
  std::span<std::byte> prepare(std::size_t n);
  void commit(std::size_t n) noexcept { end_ += n; }
  // The next complete frame, nullopt if more bytes are needed, or decode_header's error (the stream
  // is then out of sync and must be closed).
  result<std::optional<frame>> next(const limits& lim) noexcept;
  // Bytes of an incomplete frame are buffered.
  bool partial() const noexcept { return end_ > begin_; }
  std::size_t buffered() const noexcept { return end_ - begin_; }

 private:
  std::vector<std::byte> buf_;
  std::size_t initial_;  // the size it shrinks back to once a large frame was consumed
  std::size_t begin_ = 0;
  std::size_t end_ = 0;
  std::size_t need_ = header_size;  // bytes the frame at begin_ needs in all
};

}  // namespace yutu::store::rpc
