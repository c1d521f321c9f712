// The store RPC codec: every request and response round-trips through whole frames, and the decoder
// rejects truncated, oversized, foreign-version and malformed input with typed errors.
#include <doctest/doctest.h>

#include <cstring>
#include <future>
#include <string>
#include <vector>

#include "yutu/store/rpc.hpp"

using namespace yutu;
using namespace yutu::store;
namespace rpc = yutu::store::rpc;
using rpc::op;

namespace {

std::span<const std::byte> bytes(const std::string& s) { return std::as_bytes(std::span(s.data(), s.size())); }

segment_info sample_segment() {
  return {"hostA:1234/0x7f0000000000", "hostA:1234", "hostA", 0x7f0000000000, 1ull << 30, "rdma"};
}
replicate_config sample_config() {
  replicate_config c;
  c.replica_num = 3;
  c.with_soft_pin = true;
  c.soft_pin_ttl = std::chrono::milliseconds(123456);
  c.with_hard_pin = true;
  c.preferred_segments = {"hostB:1", "hostC:2"};
  c.prefer_local = true;
  c.local_host = "hostA";
  c.group_id = "group-7";
  return c;
}
replica_desc sample_replica(std::uint64_t i) {
  return {"seg" + std::to_string(i), "eng" + std::to_string(i), 0x1000 * i, 4096 + i,
          i % 2 ? replica_status::complete : replica_status::processing};
}
replica_list sample_list(std::uint64_t n) {
  replica_list l;
  l.size = 4096 * n;
  for (std::uint64_t i = 0; i < n; ++i) l.replicas.push_back(sample_replica(i));
  l.lease_ttl = std::chrono::milliseconds(10000 + n);
  return l;
}

void check_eq(const segment_info& a, const segment_info& b) {
  CHECK(a.name == b.name);
  CHECK(a.engine_segment == b.engine_segment);
  CHECK(a.host == b.host);
  CHECK(a.base == b.base);
  CHECK(a.size == b.size);
  CHECK(a.transport == b.transport);
}
void check_eq(const replicate_config& a, const replicate_config& b) {
  CHECK(a.replica_num == b.replica_num);
  CHECK(a.with_soft_pin == b.with_soft_pin);
  CHECK(a.soft_pin_ttl == b.soft_pin_ttl);
  CHECK(a.with_hard_pin == b.with_hard_pin);
  CHECK(a.preferred_segments == b.preferred_segments);
  CHECK(a.prefer_local == b.prefer_local);
  CHECK(a.local_host == b.local_host);
  CHECK(a.group_id == b.group_id);
}
void check_eq(const replica_desc& a, const replica_desc& b) {
  CHECK(a.segment == b.segment);
  CHECK(a.engine_segment == b.engine_segment);
  CHECK(a.addr == b.addr);
  CHECK(a.size == b.size);
  CHECK(a.status == b.status);
}
void check_eq(const std::vector<replica_desc>& a, const std::vector<replica_desc>& b) {
  REQUIRE(a.size() == b.size());
  for (std::size_t i = 0; i < a.size(); ++i) check_eq(a[i], b[i]);
}
void check_eq(const replica_list& a, const replica_list& b) {
  CHECK(a.size == b.size);
  CHECK(a.lease_ttl == b.lease_ttl);
  check_eq(a.replicas, b.replicas);
}

// Encodes a request frame, reads it back through a frame_buffer fed in small pieces, decodes it.
template <op O>
rpc::request_t<O> request_round_trip(const rpc::request_t<O>& in) {
  std::string wire;
  rpc::append_request<O>(wire, 42, in);
  rpc::frame_buffer fb(16);
  std::optional<rpc::frame_buffer::frame> f;
  for (std::size_t i = 0; i < wire.size();) {
    std::size_t n = std::min<std::size_t>(7, wire.size() - i);
    auto dst = fb.prepare(n);
    std::memcpy(dst.data(), wire.data() + i, n);
    fb.commit(n);
    i += n;
    auto r = fb.next({});
    REQUIRE(r);
    if (*r) {
      CHECK(i == wire.size());  // the frame completes with its last byte, not before
      f = **r;
    }
  }
  REQUIRE(f);
  CHECK(f->h.id == 42);
  CHECK(f->h.type == rpc::request_type(O));
  auto kind = rpc::check_request(f->h);
  REQUIRE(kind);
  CHECK(*kind == O);
  auto any = rpc::decode_request(O, f->payload, {});
  REQUIRE(any);
  CHECK(any->kind == O);
  // Canonical: the decoded body re-encodes to the same payload bytes.
  std::string again;
  rpc::reencode_request(*any, again);
  CHECK(again == wire.substr(rpc::header_size));
  return std::get<rpc::request_t<O>>(any->body);
}

template <op O>
result<rpc::response_t<O>> response_round_trip(const result<rpc::response_t<O>>& in) {
  std::string wire;
  rpc::append_response<O>(wire, 9, in);
  rpc::frame_buffer fb;
  auto dst = fb.prepare(wire.size());
  std::memcpy(dst.data(), wire.data(), wire.size());
  fb.commit(wire.size());
  auto f = fb.next({});
  REQUIRE(f);
  REQUIRE(*f);
  auto kind = rpc::check_response((*f)->h);
  REQUIRE(kind);
  REQUIRE(*kind);
  CHECK(**kind == O);
  CHECK((*f)->h.id == 9);
  std::string again;
  CHECK(rpc::reencode_response(O, (*f)->payload, {}, again));
  CHECK(again == wire.substr(rpc::header_size));
  return rpc::decode_response<O>((*f)->payload, {});
}

// Every strict prefix of a valid payload is rejected as malformed (the format is prefix-free).
template <op O>
void check_truncations(const rpc::request_t<O>& req) {
  std::string payload;
  rpc::writer w(payload);
  put(w, req);
  for (std::size_t n = 0; n < payload.size(); ++n) {
    auto r = rpc::decode_request(O, bytes(payload.substr(0, n)), {});
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::protocol_error);
  }
  payload.push_back('\0');
  auto r = rpc::decode_request(O, bytes(payload), {});
  REQUIRE_FALSE(r);
  CHECK(r.error() == errc::protocol_error);  // trailing bytes
}

}  // namespace

TEST_CASE("every request round-trips") {
  {
    auto r = request_round_trip<op::mount_segment>({"client-1", sample_segment()});
    CHECK(r.client == "client-1");
    check_eq(r.segment, sample_segment());
  }
  {
    auto r = request_round_trip<op::unmount_segment>({"client-1", "segname"});
    CHECK(r.client == "client-1");
    CHECK(r.segment_name == "segname");
  }
  CHECK(request_round_trip<op::ping>({"c"}).client == "c");
  for (op o : {op::put_start, op::upsert_start}) {
    rpc::put_start_request in{"c", "model@tp0@hash", 1ull << 40, sample_config()};
    auto r = o == op::put_start ? request_round_trip<op::put_start>(in) : request_round_trip<op::upsert_start>(in);
    CHECK(r.client == "c");
    CHECK(r.key == "model@tp0@hash");
    CHECK(r.size == 1ull << 40);
    check_eq(r.config, sample_config());
  }
  for (op o : {op::put_end, op::put_revoke}) {
    rpc::client_key_request in{"c", "k"};
    auto r = o == op::put_end ? request_round_trip<op::put_end>(in) : request_round_trip<op::put_revoke>(in);
    CHECK(r.client == "c");
    CHECK(r.key == "k");
  }
  {
    rpc::batch_put_start_request in{"c", {"a", "b", ""}, {1, 2, 3}, sample_config()};
    auto r = request_round_trip<op::batch_put_start>(in);
    CHECK(r.keys == in.keys);
    CHECK(r.sizes == in.sizes);
    check_eq(r.config, in.config);
  }
  for (op o : {op::batch_put_end, op::batch_put_revoke}) {
    rpc::client_keys_request in{"c", {"x", "y"}};
    auto r = o == op::batch_put_end ? request_round_trip<op::batch_put_end>(in)
                                    : request_round_trip<op::batch_put_revoke>(in);
    CHECK(r.client == "c");
    CHECK(r.keys == in.keys);
  }
  {
    rpc::batch_put_commit_request in{"c", {"\x7fr/1", "\x7fr/2"}, {"x", "y"}};
    auto r = request_round_trip<op::batch_put_commit>(in);
    CHECK(r.client == "c");
    CHECK(r.placeholders == in.placeholders);
    CHECK(r.keys == in.keys);
  }
  CHECK(request_round_trip<op::get_replica_list>({"k1"}).key == "k1");
  CHECK(request_round_trip<op::exist>({"k2"}).key == "k2");
  CHECK(request_round_trip<op::get_size>({"k3"}).key == "k3");
  std::vector<std::string> keys{"a", "bb", std::string(4096, 'k')};
  CHECK(request_round_trip<op::batch_get_replica_list>({keys}).keys == keys);
  CHECK(request_round_trip<op::match_prefix>({keys}).keys == keys);
  CHECK(request_round_trip<op::batch_exist>({keys}).keys == keys);
  {
    auto r = request_round_trip<op::remove>({"k", true});
    CHECK(r.key == "k");
    CHECK(r.force);
  }
  {
    auto r = request_round_trip<op::batch_remove>({keys, true});
    CHECK(r.keys == keys);
    CHECK(r.force);
  }
  CHECK(request_round_trip<op::remove_all>({true}).force);
  CHECK_FALSE(request_round_trip<op::remove_all>({false}).force);
}

TEST_CASE("every response round-trips, errors of every category included") {
  for (std::error_code ec : {make_error_code(errc::object_not_found), make_error_code(te_errc::stale_segment),
                             std::make_error_code(std::errc::timed_out)}) {
    auto r = response_round_trip<op::put_end>(result<void>(fail(ec)));
    REQUIRE_FALSE(r);
    CHECK(r.error() == ec);
  }
  {
    // A category the protocol does not carry arrives as internal_error.
    auto r = response_round_trip<op::put_end>(result<void>(fail(std::error_code(5, std::future_category()))));
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::internal_error);
  }
  CHECK(response_round_trip<op::mount_segment>(ok()));
  CHECK(response_round_trip<op::unmount_segment>(ok()));
  CHECK(response_round_trip<op::put_revoke>(ok()));
  CHECK(response_round_trip<op::remove>(ok()));
  {
    auto r = response_round_trip<op::ping>(ping_result{99, true});
    REQUIRE(r);
    CHECK(r->view_version == 99);
    CHECK(r->need_remount);
  }
  std::vector<replica_desc> reps{sample_replica(1), sample_replica(2)};
  for (op o : {op::put_start, op::upsert_start}) {
    auto r = o == op::put_start ? response_round_trip<op::put_start>(reps) : response_round_trip<op::upsert_start>(reps);
    REQUIRE(r);
    check_eq(*r, reps);
  }
  {
    std::vector<result<std::vector<replica_desc>>> in{reps, fail(errc::no_available_handle), std::vector<replica_desc>{}};
    auto r = response_round_trip<op::batch_put_start>(in);
    REQUIRE(r);
    REQUIRE(r->size() == 3);
    REQUIRE((*r)[0]);
    check_eq(*(*r)[0], reps);
    REQUIRE_FALSE((*r)[1]);
    CHECK((*r)[1].error() == errc::no_available_handle);
    REQUIRE((*r)[2]);
    CHECK((*r)[2]->empty());
  }
  for (op o : {op::batch_put_end, op::batch_put_revoke, op::batch_remove, op::batch_put_commit}) {
    std::vector<result<void>> in{ok(), fail(errc::object_not_found), ok()};
    auto r = o == op::batch_put_end      ? response_round_trip<op::batch_put_end>(in)
             : o == op::batch_put_revoke ? response_round_trip<op::batch_put_revoke>(in)
             : o == op::batch_remove     ? response_round_trip<op::batch_remove>(in)
                                         : response_round_trip<op::batch_put_commit>(in);
    REQUIRE(r);
    REQUIRE(r->size() == 3);
    CHECK((*r)[0]);
    CHECK((*r)[1].error() == errc::object_not_found);
    CHECK((*r)[2]);
  }
  {
    auto r = response_round_trip<op::get_replica_list>(sample_list(3));
    REQUIRE(r);
    check_eq(*r, sample_list(3));
  }
  {
    std::vector<result<replica_list>> in{sample_list(1), fail(errc::lease_expired)};
    auto r = response_round_trip<op::batch_get_replica_list>(in);
    REQUIRE(r);
    REQUIRE(r->size() == 2);
    check_eq(*(*r)[0], sample_list(1));
    CHECK((*r)[1].error() == errc::lease_expired);
  }
  {
    match_result m;
    m.hits = 2;
    m.replicas = {sample_list(1), sample_list(2)};
    auto r = response_round_trip<op::match_prefix>(m);
    REQUIRE(r);
    CHECK(r->hits == 2);
    REQUIRE(r->replicas.size() == 2);
    check_eq(r->replicas[1], sample_list(2));
  }
  {
    auto r = response_round_trip<op::exist>(true);
    REQUIRE(r);
    CHECK(*r);
    auto rb = response_round_trip<op::batch_exist>(std::vector<result<bool>>{true, false, fail(errc::invalid_key)});
    REQUIRE(rb);
    REQUIRE(rb->size() == 3);
    CHECK(*(*rb)[0]);
    CHECK_FALSE(*(*rb)[1]);
    CHECK((*rb)[2].error() == errc::invalid_key);
  }
  CHECK(*response_round_trip<op::get_size>(std::uint64_t{1} << 33) == std::uint64_t{1} << 33);
  CHECK(*response_round_trip<op::remove_all>(std::uint64_t{17}) == 17);
}

TEST_CASE("error frames carry a status only") {
  std::string wire;
  rpc::append_error(wire, rpc::error_type, 5, make_error_code(errc::invalid_version));
  auto h = rpc::decode_header(std::span<const std::byte, rpc::header_size>(bytes(wire).first<rpc::header_size>()), {});
  REQUIRE(h);
  auto kind = rpc::check_response(*h);
  REQUIRE(kind);
  CHECK_FALSE(*kind);
  rpc::reader r(bytes(wire).subspan(rpc::header_size), {});
  CHECK(rpc::get_status(r) == errc::invalid_version);
  CHECK(r.finish());
}

TEST_CASE("truncated payloads and trailing bytes are protocol errors") {
  check_truncations<op::mount_segment>({"c", sample_segment()});
  check_truncations<op::put_start>({"c", "key", 10, sample_config()});
  check_truncations<op::batch_put_start>({"c", {"a", "b"}, {1, 2}, sample_config()});
  check_truncations<op::batch_remove>({{"a", "b"}, true});
  check_truncations<op::remove_all>({false});
  check_truncations<op::batch_put_commit>({"c", {"p1", "p2"}, {"a", "b"}});
  // Responses too.
  std::string payload;
  rpc::writer w(payload);
  put(w, result<replica_list>(sample_list(2)));
  for (std::size_t n = 0; n < payload.size(); ++n) {
    auto r = rpc::decode_response<op::get_replica_list>(bytes(payload.substr(0, n)), {});
    REQUIRE_FALSE(r);
    CHECK(r.error() == errc::protocol_error);
  }
}

TEST_CASE("fields over the configured maxima are typed errors") {
  rpc::limits lim;
  lim.max_key_length = 8;
  lim.max_string_length = 16;
  lim.max_batch = 4;
  auto decode = [&](op o, const auto& req) {
    std::string payload;
    rpc::writer w(payload);
    put(w, req);
    return rpc::decode_request(o, bytes(payload), lim);
  };
  CHECK(decode(op::exist, rpc::key_request{"12345678"}));
  CHECK(decode(op::exist, rpc::key_request{"123456789"}).error() == errc::invalid_key);
  CHECK(decode(op::batch_exist, rpc::keys_request{{"a", "b", "c", "d"}}));
  CHECK(decode(op::batch_exist, rpc::keys_request{{"a", "b", "c", "d", "e"}}).error() == errc::invalid_params);
  CHECK(decode(op::batch_exist, rpc::keys_request{{"a", "b", "123456789"}}).error() == errc::invalid_key);
  CHECK(decode(op::ping, rpc::ping_request{std::string(17, 'c')}).error() == errc::invalid_params);
  CHECK(decode(op::batch_put_start, rpc::batch_put_start_request{"c", {"a", "b"}, {1}, {}}).error() ==
        errc::invalid_params);
  CHECK(decode(op::batch_put_commit, rpc::batch_put_commit_request{"c", {"a", "b"}, {"x"}}).error() ==
        errc::invalid_params);
  CHECK(decode(op::batch_put_commit, rpc::batch_put_commit_request{"c", {"a"}, {"123456789"}}).error() ==
        errc::invalid_key);

  // A vector count beyond what the payload can hold is malformed, whatever the batch limit.
  std::string payload;
  rpc::writer w(payload);
  w.u32(4);
  w.u32(0);
  CHECK(rpc::decode_request(op::batch_exist, bytes(payload), lim).error() == errc::protocol_error);
  // A string length beyond the payload.
  payload.clear();
  w.u32(6);
  payload += "abc";
  CHECK(rpc::decode_request(op::exist, bytes(payload), lim).error() == errc::protocol_error);
  // Non-canonical values.
  payload.clear();
  w.u8(2);
  CHECK(rpc::decode_request(op::remove_all, bytes(payload), lim).error() == errc::protocol_error);
  payload.clear();
  w.u8(1);  // a store error...
  w.i32(0);  // ...with code 0
  CHECK(rpc::decode_response<op::put_end>(bytes(payload), lim).error() == errc::protocol_error);
  payload.clear();
  w.u8(9);  // an unknown status category
  w.i32(-1);
  CHECK(rpc::decode_response<op::put_end>(bytes(payload), lim).error() == errc::protocol_error);
  payload.clear();
  put(w, result<match_result>(match_result{3, {}}));  // hits without their replica lists
  CHECK(rpc::decode_response<op::match_prefix>(bytes(payload), lim).error() == errc::protocol_error);
}

TEST_CASE("headers: bad magic and oversized frames are fatal, foreign versions and types are not") {
  rpc::limits lim;
  lim.max_frame = 1000;
  auto decode = [&](const rpc::header& h) {
    auto b = rpc::encode_header(h);
    return rpc::decode_header(b, lim);
  };
  rpc::header h;
  h.type = rpc::request_type(op::ping);
  h.length = 1000;
  REQUIRE(decode(h));
  CHECK(*rpc::check_request(*decode(h)) == op::ping);
  h.length = 1001;
  CHECK(decode(h).error() == errc::protocol_error);
  h.length = 10;

  auto b = rpc::encode_header(h);
  b[0] = std::byte{'X'};
  CHECK(rpc::decode_header(b, lim).error() == errc::protocol_error);

  h.version = 2;
  REQUIRE(decode(h));
  CHECK(rpc::check_request(*decode(h)).error() == errc::invalid_version);
  CHECK(rpc::check_response(*decode(h)).error() == errc::invalid_version);
  h.version = rpc::version;
  for (std::uint16_t type : {std::uint16_t{0}, std::uint16_t{rpc::op_max + 1}, std::uint16_t{0x2001},
                             rpc::response_type(op::ping), rpc::error_type}) {
    h.type = type;
    CHECK(rpc::check_request(*decode(h)).error() == errc::protocol_error);
  }
  h.type = rpc::request_type(op::ping);
  CHECK(rpc::check_response(*decode(h)).error() == errc::protocol_error);
  h.flags = 1;
  CHECK(rpc::check_request(*decode(h)).error() == errc::protocol_error);

  // The frame buffer reports the fatal ones.
  rpc::frame_buffer fb;
  h = {};
  h.type = rpc::request_type(op::ping);
  h.length = 5000;
  b = rpc::encode_header(h);
  auto dst = fb.prepare(b.size());
  std::memcpy(dst.data(), b.data(), b.size());
  fb.commit(b.size());
  CHECK(fb.next(lim).error() == errc::protocol_error);
}

TEST_CASE("frame buffer: several frames in one read, and a large frame grows and shrinks the buffer") {
  std::string wire;
  rpc::append_request<op::exist>(wire, 1, {"a"});
  rpc::append_request<op::exist>(wire, 2, {"b"});
  rpc::append_request<op::exist>(wire, 3, {std::string(3000, 'c')});
  rpc::frame_buffer fb(64);
  std::size_t fed = 0;
  std::vector<std::uint64_t> ids;
  while (fed < wire.size() || fb.buffered()) {
    auto dst = fb.prepare(64);
    std::size_t n = std::min(dst.size(), wire.size() - fed);
    std::memcpy(dst.data(), wire.data() + fed, n);
    fb.commit(n);
    fed += n;
    for (;;) {
      auto f = fb.next({});
      REQUIRE(f);
      if (!*f) break;
      ids.push_back((*f)->h.id);
      auto req = rpc::decode_request(op::exist, (*f)->payload, {});
      REQUIRE(req);
    }
    if (n == 0 && fb.buffered()) FAIL("stuck with a partial frame");
  }
  CHECK(ids == std::vector<std::uint64_t>{1, 2, 3});
  CHECK_FALSE(fb.partial());
  CHECK(fb.prepare(16).size() <= 64 * 4);  // back to its initial size once the large frame is gone

  // A header announcing a large frame does not make the buffer allocate it up front.
  rpc::header h;
  h.type = rpc::request_type(op::exist);
  h.length = 32u << 20;
  auto hb = rpc::encode_header(h);
  auto dst = fb.prepare(hb.size());
  std::memcpy(dst.data(), hb.data(), hb.size());
  fb.commit(hb.size());
  auto f = fb.next({});
  REQUIRE(f);
  CHECK_FALSE(*f);
  CHECK(fb.partial());
  CHECK(fb.prepare(64).size() <= (std::size_t{1} << 20));
}
