// The store RPC codec: headers, fields, messages and the frame buffer (see rpc.hpp).
#include "yutu/store/rpc.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>

namespace yutu::store::rpc {

namespace {
constexpr std::string_view op_names[] = {
    "",
    "mount_segment",
    "unmount_segment",
    "ping",
    "put_start",
    "put_end",
    "put_revoke",
    "upsert_start",
    "batch_put_start",
    "batch_put_end",
    "batch_put_revoke",
    "get_replica_list",
    "batch_get_replica_list",
    "match_prefix",
    "exist",
    "batch_exist",
    "get_size",
    "remove",
    "batch_remove",
    "remove_all",
    "batch_put_commit",
};
static_assert(std::size(op_names) == op_max + 1u);

std::error_code protocol_error() noexcept { return make_error_code(errc::protocol_error); }
}  // namespace

std::optional<op> op_of(std::uint16_t type) noexcept {
  std::uint16_t o = type & ~response_bit;
  if (o < 1 || o > op_max || (type & ~(response_bit | 0xFFu)) != 0) return std::nullopt;
  return static_cast<op>(o);
}

std::string_view op_name(op o) noexcept {
  auto i = static_cast<std::size_t>(o);
  return i >= 1 && i <= op_max ? op_names[i] : std::string_view("unknown");
}

// --- header ---

void encode_header(std::byte* p, const header& h) noexcept {
  detail::store_le<std::uint32_t>(p + 0, magic);
  detail::store_le<std::uint16_t>(p + 4, h.version);
  detail::store_le<std::uint16_t>(p + 6, h.type);
  detail::store_le<std::uint32_t>(p + 8, h.flags);
  detail::store_le<std::uint32_t>(p + 12, h.length);
  detail::store_le<std::uint64_t>(p + 16, h.id);
}

result<header> decode_header(std::span<const std::byte, header_size> b, const limits& lim) noexcept {
  const std::byte* p = b.data();
  if (detail::load_le<std::uint32_t>(p) != magic) return fail(errc::protocol_error);
  header h;
  h.version = detail::load_le<std::uint16_t>(p + 4);
  h.type = detail::load_le<std::uint16_t>(p + 6);
  h.flags = detail::load_le<std::uint32_t>(p + 8);
  h.length = detail::load_le<std::uint32_t>(p + 12);
  h.id = detail::load_le<std::uint64_t>(p + 16);
  if (h.length > lim.max_frame) return fail(errc::protocol_error);
  return h;
}

result<op> check_request(const header& h) noexcept {
  if (h.version != version) return fail(errc::invalid_version);
  if (h.flags != 0 || is_response(h.type)) return fail(errc::protocol_error);
  auto o = op_of(h.type);
  if (!o) return fail(errc::protocol_error);
  return *o;
}

result<std::optional<op>> check_response(const header& h) noexcept {
  if (h.version != version) return fail(errc::invalid_version);
  if (h.flags != 0) return fail(errc::protocol_error);
  if (h.type == error_type) return std::optional<op>();
  if (!is_response(h.type)) return fail(errc::protocol_error);
  auto o = op_of(h.type);
  if (!o) return fail(errc::protocol_error);
  return o;
}

// --- writer / reader ---

void writer::count(std::size_t n) {
  if (n > std::numeric_limits<std::uint32_t>::max()) throw std::length_error("rpc: vector or string too long");
  u32(static_cast<std::uint32_t>(n));
}

bool reader::boolean() noexcept {
  std::uint8_t v = u8();
  if (v > 1) set_error(protocol_error());  // canonical: only 0 and 1
  return v == 1;
}

std::size_t reader::count(std::size_t min_element_size) noexcept {
  std::uint32_t n = u32();
  if (!ok()) return 0;
  if (n > lim_->max_batch) {
    set_error(make_error_code(errc::invalid_params));
    return 0;
  }
  if (static_cast<std::uint64_t>(n) * min_element_size > remaining()) {
    set_error(protocol_error());
    return 0;
  }
  return n;
}

void reader::bounded_str(std::string& out, std::size_t max, errc over) {
  std::uint32_t n = u32();
  if (!ok()) return;
  if (n > max) {
    set_error(make_error_code(over));
    return;
  }
  if (n > remaining()) {
    set_error(protocol_error());
    return;
  }
  out.assign(reinterpret_cast<const char*>(p_.data() + pos_), n);
  pos_ += n;
}

result<void> reader::finish() noexcept {
  if (ec_) return fail(ec_);
  if (remaining() != 0) return fail(errc::protocol_error);
  return yutu::ok();
}

// --- fields ---

void put(writer& w, const std::string& s) { w.str(s); }
void get(reader& r, std::string& s) { r.str(s); }
void put(writer& w, std::uint64_t v) { w.u64(v); }
void get(reader& r, std::uint64_t& v) { v = r.u64(); }
void put(writer& w, bool v) { w.boolean(v); }
void get(reader& r, bool& v) { v = r.boolean(); }

void put(writer& w, const segment_info& v) {
  w.str(v.name);
  w.str(v.engine_segment);
  w.str(v.host);
  w.u64(v.base);
  w.u64(v.size);
  w.str(v.transport);
}
void get(reader& r, segment_info& v) {
  r.str(v.name);
  r.str(v.engine_segment);
  r.str(v.host);
  v.base = r.u64();
  v.size = r.u64();
  r.str(v.transport);
  if (v.base + v.size < v.base) r.set_error(make_error_code(errc::invalid_params));
}

void put(writer& w, const replicate_config& v) {
  w.u64(v.replica_num);
  w.boolean(v.with_soft_pin);
  w.i64(v.soft_pin_ttl.count());
  w.boolean(v.with_hard_pin);
  put(w, v.preferred_segments);
  w.boolean(v.prefer_local);
  w.str(v.local_host);
  w.str(v.group_id);
}
void get(reader& r, replicate_config& v) {
  std::uint64_t n = r.u64();
  if (n > r.lim().max_batch) r.set_error(make_error_code(errc::invalid_params));
  v.replica_num = static_cast<std::size_t>(n);
  v.with_soft_pin = r.boolean();
  v.soft_pin_ttl = std::chrono::milliseconds(r.i64());
  v.with_hard_pin = r.boolean();
  get(r, v.preferred_segments);
  v.prefer_local = r.boolean();
  r.str(v.local_host);
  r.str(v.group_id);
}

void put(writer& w, const replica_desc& v) {
  w.str(v.segment);
  w.str(v.engine_segment);
  w.u64(v.addr);
  w.u64(v.size);
  w.u8(static_cast<std::uint8_t>(v.status));
}
void get(reader& r, replica_desc& v) {
  r.str(v.segment);
  r.str(v.engine_segment);
  v.addr = r.u64();
  v.size = r.u64();
  std::uint8_t s = r.u8();
  if (s > static_cast<std::uint8_t>(replica_status::complete)) r.set_error(protocol_error());
  v.status = static_cast<replica_status>(s);
}

void put(writer& w, const replica_list& v) {
  w.u64(v.size);
  put(w, v.replicas);
  w.i64(v.lease_ttl.count());
}
void get(reader& r, replica_list& v) {
  v.size = r.u64();
  get(r, v.replicas);
  v.lease_ttl = std::chrono::milliseconds(r.i64());
}

void put(writer& w, const ping_result& v) {
  w.u64(v.view_version);
  w.boolean(v.need_remount);
}
void get(reader& r, ping_result& v) {
  v.view_version = r.u64();
  v.need_remount = r.boolean();
}

void put(writer& w, const match_result& v) {
  w.u64(v.hits);
  put(w, v.replicas);
}
void get(reader& r, match_result& v) {
  std::uint64_t hits = r.u64();
  v.hits = static_cast<std::size_t>(hits);
  get(r, v.replicas);
  if (hits != v.replicas.size()) r.set_error(protocol_error());  // one replica list per hit
}

namespace {
enum class status_tag : std::uint8_t { ok = 0, store = 1, engine = 2, generic = 3 };
}

void put_status(writer& w, const std::error_code& ec) {
  if (!ec) {
    w.u8(static_cast<std::uint8_t>(status_tag::ok));
    return;
  }
  if (ec.category() == store_category()) {
    w.u8(static_cast<std::uint8_t>(status_tag::store));
    w.i32(ec.value());
  } else if (ec.category() == engine_category()) {
    w.u8(static_cast<std::uint8_t>(status_tag::engine));
    w.i32(ec.value());
  } else if (ec.category() == std::generic_category() || ec.category() == std::system_category()) {
    // Linux: system error values are errno values, as generic ones are.
    w.u8(static_cast<std::uint8_t>(status_tag::generic));
    w.i32(ec.value());
  } else {
    w.u8(static_cast<std::uint8_t>(status_tag::store));
    w.i32(static_cast<std::int32_t>(errc::internal_error));
  }
}

std::error_code get_status(reader& r) {
  auto tag = static_cast<status_tag>(r.u8());
  if (!r.ok() || tag == status_tag::ok) return {};
  std::int32_t v = r.i32();
  if (!r.ok()) return {};
  if (v == 0) {  // canonical: an error is never code 0
    r.set_error(protocol_error());
    return {};
  }
  switch (tag) {
    case status_tag::store: return {v, store_category()};
    case status_tag::engine: return {v, engine_category()};
    case status_tag::generic: return {v, std::generic_category()};
    default: r.set_error(protocol_error()); return {};
  }
}

void put_keys(writer& w, const std::vector<std::string>& keys) {
  w.count(keys.size());
  for (const auto& k : keys) w.str(k);
}
void get_keys(reader& r, std::vector<std::string>& keys) {
  std::size_t n = r.count(min_size<std::string>::value);
  keys.clear();
  keys.reserve(n);
  for (std::size_t i = 0; i < n && r.ok(); ++i) r.key(keys.emplace_back());
}

// --- message bodies ---

void put(writer& w, const mount_segment_request& v) {
  w.str(v.client);
  put(w, v.segment);
}
void get(reader& r, mount_segment_request& v) {
  r.str(v.client);
  get(r, v.segment);
}
void put(writer& w, const unmount_segment_request& v) {
  w.str(v.client);
  w.str(v.segment_name);
}
void get(reader& r, unmount_segment_request& v) {
  r.str(v.client);
  r.str(v.segment_name);
}
void put(writer& w, const ping_request& v) { w.str(v.client); }
void get(reader& r, ping_request& v) { r.str(v.client); }
void put(writer& w, const put_start_request& v) {
  w.str(v.client);
  w.str(v.key);
  w.u64(v.size);
  put(w, v.config);
}
void get(reader& r, put_start_request& v) {
  r.str(v.client);
  r.key(v.key);
  v.size = r.u64();
  get(r, v.config);
}
void put(writer& w, const client_key_request& v) {
  w.str(v.client);
  w.str(v.key);
}
void get(reader& r, client_key_request& v) {
  r.str(v.client);
  r.key(v.key);
}
void put(writer& w, const batch_put_start_request& v) {
  w.str(v.client);
  put_keys(w, v.keys);
  put(w, v.sizes);
  put(w, v.config);
}
void get(reader& r, batch_put_start_request& v) {
  r.str(v.client);
  get_keys(r, v.keys);
  get(r, v.sizes);
  get(r, v.config);
  if (r.ok() && v.keys.size() != v.sizes.size()) r.set_error(make_error_code(errc::invalid_params));
}
void put(writer& w, const client_keys_request& v) {
  w.str(v.client);
  put_keys(w, v.keys);
}
void get(reader& r, client_keys_request& v) {
  r.str(v.client);
  get_keys(r, v.keys);
}
void put(writer& w, const key_request& v) { w.str(v.key); }
void get(reader& r, key_request& v) { r.key(v.key); }
void put(writer& w, const keys_request& v) { put_keys(w, v.keys); }
void get(reader& r, keys_request& v) { get_keys(r, v.keys); }
void put(writer& w, const remove_request& v) {
  w.str(v.key);
  w.boolean(v.force);
}
void get(reader& r, remove_request& v) {
  r.key(v.key);
  v.force = r.boolean();
}
void put(writer& w, const batch_remove_request& v) {
  put_keys(w, v.keys);
  w.boolean(v.force);
}
void get(reader& r, batch_remove_request& v) {
  get_keys(r, v.keys);
  v.force = r.boolean();
}
void put(writer& w, const remove_all_request& v) { w.boolean(v.force); }
void get(reader& r, remove_all_request& v) { v.force = r.boolean(); }
void put(writer& w, const batch_put_commit_request& v) {
  w.str(v.client);
  put_keys(w, v.placeholders);
  put_keys(w, v.keys);
}
void get(reader& r, batch_put_commit_request& v) {
  r.str(v.client);
  get_keys(r, v.placeholders);
  get_keys(r, v.keys);
  if (r.ok() && v.keys.size() != v.placeholders.size()) r.set_error(make_error_code(errc::invalid_params));
}

// --- frames ---

std::size_t append_error(std::string& out, std::uint16_t type, std::uint64_t id, std::error_code ec) {
  return append_frame(out, type, id, [&](writer& w) { put_status(w, ec); });
}

namespace {

template <op O>
result<any_request> decode_as(std::span<const std::byte> payload, const limits& lim) {
  auto v = decode_request_as<O>(payload, lim);
  if (!v) return fail(v.error());
  return any_request{O, std::move(*v)};
}

// Calls f.template operator()<O>() for the runtime op `o`.
template <class F>
decltype(auto) visit_op(op o, F&& f) {
  switch (o) {
    case op::mount_segment: return f.template operator()<op::mount_segment>();
    case op::unmount_segment: return f.template operator()<op::unmount_segment>();
    case op::ping: return f.template operator()<op::ping>();
    case op::put_start: return f.template operator()<op::put_start>();
    case op::put_end: return f.template operator()<op::put_end>();
    case op::put_revoke: return f.template operator()<op::put_revoke>();
    case op::upsert_start: return f.template operator()<op::upsert_start>();
    case op::batch_put_start: return f.template operator()<op::batch_put_start>();
    case op::batch_put_end: return f.template operator()<op::batch_put_end>();
    case op::batch_put_revoke: return f.template operator()<op::batch_put_revoke>();
    case op::get_replica_list: return f.template operator()<op::get_replica_list>();
    case op::batch_get_replica_list: return f.template operator()<op::batch_get_replica_list>();
    case op::match_prefix: return f.template operator()<op::match_prefix>();
    case op::exist: return f.template operator()<op::exist>();
    case op::batch_exist: return f.template operator()<op::batch_exist>();
    case op::get_size: return f.template operator()<op::get_size>();
    case op::remove: return f.template operator()<op::remove>();
    case op::batch_remove: return f.template operator()<op::batch_remove>();
    case op::remove_all: return f.template operator()<op::remove_all>();
    case op::batch_put_commit: return f.template operator()<op::batch_put_commit>();
  }
  throw std::logic_error("rpc: unknown op");
}

}  // namespace

result<any_request> decode_request(op o, std::span<const std::byte> payload, const limits& lim) {
  return visit_op(o, [&]<op O>() { return decode_as<O>(payload, lim); });
}

bool reencode_response(op o, std::span<const std::byte> payload, const limits& lim, std::string& out) {
  return visit_op(o, [&]<op O>() {
    result<response_t<O>> v;
    reader r(payload, lim);
    get(r, v);
    if (!r.finish()) return false;
    writer w(out);
    put(w, v);
    return true;
  });
}

void reencode_request(const any_request& req, std::string& out) {
  writer w(out);
  std::visit([&](const auto& body) { put(w, body); }, req.body);
}

// --- frame buffer ---

std::span<std::byte> frame_buffer::prepare(std::size_t n) {
  if (begin_ == end_) {
    begin_ = end_ = 0;
    if (buf_.size() > 4 * initial_ && n <= initial_) {
      buf_.resize(initial_);
      buf_.shrink_to_fit();
    }
  }
  // A large frame's space grows with the bytes that arrive, not with the length its header claims:
  // a peer that announces 64 MiB and stalls costs what it sent, not what it promised.
  const std::size_t missing = need_ > buffered() ? need_ - buffered() : 0;
  const std::size_t want = std::max(n, std::min(missing, std::size_t{256} << 10));
  if (buf_.size() - end_ < want) {
    if (begin_ > 0) {
      std::memmove(buf_.data(), buf_.data() + begin_, end_ - begin_);
      end_ -= begin_;
      begin_ = 0;
    }
    if (buf_.size() - end_ < want) buf_.resize(end_ + want);
  }
  return std::span(buf_.data() + end_, buf_.size() - end_);
}

result<std::optional<frame_buffer::frame>> frame_buffer::next(const limits& lim) noexcept {
  if (buffered() < header_size) {
    need_ = header_size;
    return std::optional<frame>();
  }
  auto h = decode_header(std::span<const std::byte, header_size>(buf_.data() + begin_, header_size), lim);
  if (!h) return fail(h.error());
  need_ = header_size + h->length;
  if (buffered() < need_) return std::optional<frame>();
  frame f{*h, std::span<const std::byte>(buf_.data() + begin_ + header_size, h->length)};
  begin_ += need_;
  need_ = header_size;
  return std::optional<frame>(f);
}

}  // namespace yutu::store::rpc
