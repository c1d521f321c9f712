// HTTP/1.1 on the ring: Beast's parser and serializer around yutu's tcp_stream (see http.hpp).
#include "yutu/io/http.hpp"

#include <boost/beast/http/error.hpp>
#include <boost/beast/http/parser.hpp>
#include <boost/beast/http/write.hpp>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <mutex>
#include <sstream>
#include <stop_token>
#include <vector>

#include "yutu/coro/async_scope.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/log.hpp"

namespace yutu::io {

namespace bhttp = boost::beast::http;

// --- error category ---

namespace {
class http_category_impl final : public std::error_category {
 public:
  const char* name() const noexcept override { return "yutu.http"; }
  std::string message(int c) const override {
    switch (static_cast<http_errc>(c)) {
      case http_errc::bad_message: return "malformed HTTP message";
      case http_errc::header_too_large: return "HTTP header block too large";
      case http_errc::body_too_large: return "HTTP body too large";
      case http_errc::partial_message: return "connection closed in the middle of an HTTP message";
      case http_errc::bad_response: return "unusable HTTP response";
    }
    return "unknown HTTP error";
  }
};

std::error_code from_beast(const boost::system::error_code& ec) noexcept {
  if (ec == bhttp::error::header_limit) return make_error_code(http_errc::header_too_large);
  if (ec == bhttp::error::body_limit || ec == bhttp::error::buffer_overflow)
    return make_error_code(http_errc::body_too_large);
  if (ec == bhttp::error::partial_message) return make_error_code(http_errc::partial_message);
  return make_error_code(http_errc::bad_message);
}
}  // namespace

const std::error_category& http_category() noexcept {
  static const http_category_impl c;
  return c;
}

// --- decoder ---

namespace detail {

template <bool IsRequest>
class http_decoder_impl {
 public:
  using message = typename http_decoder<IsRequest>::message;
  using parser_type = bhttp::parser<IsRequest, bhttp::string_body>;

  explicit http_decoder_impl(http_limits l) : limits_(l) {}

  std::span<char> prepare(std::size_t n) {
    std::size_t used = end_ - begin_;
    if (begin_ > 0 && (used == 0 || cap_ - end_ < n)) {
      if (used) std::memmove(buf_.get(), buf_.get() + begin_, used);
      begin_ = 0;
      end_ = used;
    }
    if (cap_ - end_ < n) {
      std::size_t cap = std::max(cap_ * 2, end_ + n);
      auto fresh = std::make_unique_for_overwrite<char[]>(cap);
      if (end_) std::memcpy(fresh.get(), buf_.get(), end_);
      buf_ = std::move(fresh);
      cap_ = cap;
    }
    return {buf_.get() + end_, cap_ - end_};
  }
  void commit(std::size_t n) noexcept { end_ += std::min(n, cap_ - end_); }

  result<std::optional<message>> next() {
    if (error_) return fail(error_);
    ensure_parser();
    for (;;) {
      if (parser_->is_done()) return take();
      if (begin_ == end_) return std::optional<message>{};
      // Beast 1.81 asserts (BOOST_ASSERT, live in our debug-assert builds) when it re-parses a final
      // chunk header "0\r\n" with fewer than 5 bytes buffered (boostorg/beast#2861, fixed after 1.81):
      // a client sending "0\r\n" then "\r" would abort the server. A chunked body always has at
      // least "0\r\n\r\n" still to come, so waiting for 5 bytes never starves a valid message.
      if (parser_->is_header_done() && parser_->chunked() && end_ - begin_ < 5) return std::optional<message>{};
      boost::system::error_code ec;
      std::size_t n = parser_->put(boost::asio::const_buffer(buf_.get() + begin_, end_ - begin_), ec);
      begin_ += n;
      if (ec == bhttp::error::need_more) {
        if (n == 0) return std::optional<message>{};
        continue;
      }
      if (ec) return failed(from_beast(ec));
      if (n == 0 && !parser_->is_done()) return std::optional<message>{};
    }
  }

  result<std::optional<message>> finish() {
    if (error_) return fail(error_);
    ensure_parser();
    if (parser_->is_done()) return take();
    if (begin_ != end_) return failed(make_error_code(http_errc::partial_message));
    if (!parser_->got_some()) return std::optional<message>{};
    boost::system::error_code ec;
    parser_->put_eof(ec);
    if (ec) return failed(from_beast(ec));
    if (parser_->is_done()) return take();
    return failed(make_error_code(http_errc::partial_message));
  }

  bool idle() const noexcept { return begin_ == end_ && (!parser_ || !parser_->got_some()); }
  void expect_head_response() noexcept { head_ = true; }

  // 100-continue: true once, when a request's header asked for it and its body has not arrived yet.
  bool take_continue() noexcept {
    if constexpr (IsRequest) {
      if (!parser_ || continue_sent_ || !parser_->is_header_done() || parser_->is_done()) return false;
      auto it = parser_->get().find(bhttp::field::expect);
      if (it == parser_->get().end() || !boost::beast::iequals(it->value(), "100-continue")) return false;
      continue_sent_ = true;
      return true;
    } else {
      return false;
    }
  }

 private:
  void ensure_parser() {
    if (parser_) return;
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(std::min<std::size_t>(limits_.header_limit, UINT32_MAX)));
    parser_->body_limit(static_cast<std::uint64_t>(limits_.body_limit));
    parser_->eager(true);
    if constexpr (!IsRequest) {
      if (head_) parser_->skip(true);
    }
    head_ = false;
    continue_sent_ = false;
  }
  result<std::optional<message>> take() {
    message m = parser_->release();
    parser_.reset();
    return std::optional<message>(std::move(m));
  }
  tl::unexpected<std::error_code> failed(std::error_code ec) {
    error_ = ec;
    parser_.reset();
    return fail(ec);
  }

  http_limits limits_;
  std::unique_ptr<char[]> buf_;
  std::size_t cap_ = 0, begin_ = 0, end_ = 0;
  std::optional<parser_type> parser_;
  std::error_code error_;
  bool head_ = false;
  bool continue_sent_ = false;
};

}  // namespace detail

template <bool R>
http_decoder<R>::http_decoder(http_limits limits)
    : impl_(std::make_unique<detail::http_decoder_impl<R>>(limits)) {}
template <bool R>
http_decoder<R>::~http_decoder() = default;
template <bool R>
http_decoder<R>::http_decoder(http_decoder&&) noexcept = default;
template <bool R>
http_decoder<R>& http_decoder<R>::operator=(http_decoder&&) noexcept = default;
template <bool R>
std::span<char> http_decoder<R>::prepare(std::size_t n) {
  return impl_->prepare(n);
}
template <bool R>
void http_decoder<R>::commit(std::size_t n) noexcept {
  impl_->commit(n);
}
template <bool R>
void http_decoder<R>::append(std::string_view bytes) {
  if (bytes.empty()) return;
  std::span<char> s = impl_->prepare(bytes.size());
  std::memcpy(s.data(), bytes.data(), bytes.size());
  impl_->commit(bytes.size());
}
template <bool R>
auto http_decoder<R>::next() -> result<std::optional<message>> {
  return impl_->next();
}
template <bool R>
auto http_decoder<R>::finish() -> result<std::optional<message>> {
  return impl_->finish();
}
template <bool R>
bool http_decoder<R>::idle() const noexcept {
  return impl_->idle();
}
template <bool R>
void http_decoder<R>::expect_head_response() noexcept {
  impl_->expect_head_response();
}
template <bool R>
bool http_decoder<R>::take_continue() noexcept {
  return impl_->take_continue();
}

template class http_decoder<true>;
template class http_decoder<false>;

// --- serialization ---

namespace {
template <class M>
std::string header_of(M& m) {
  m.prepare_payload();
  std::ostringstream os;
  os << m.base();
  return std::move(os).str();
}
}  // namespace

std::string serialize_header(http_request& m) { return header_of(m); }
std::string serialize_header(http_response& m) { return header_of(m); }
std::string serialize(http_request& m) { return header_of(m) + m.body(); }
std::string serialize(http_response& m) { return header_of(m) + m.body(); }

// --- URLs ---

std::string url_encode(std::string_view s) {
  static constexpr char hex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size() * 3);
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    bool unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
                      c == '.' || c == '_' || c == '~';
    if (unreserved) {
      out += ch;
    } else {
      out += '%';
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  return out;
}

namespace {
int hex_value(char c) noexcept {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

result<std::string> url_decode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (std::size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '+') {
      out += ' ';
    } else if (c == '%') {
      if (i + 2 >= s.size()) return fail(errc::invalid_params);
      int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
      if (hi < 0 || lo < 0) return fail(errc::invalid_params);
      out += static_cast<char>(hi * 16 + lo);
      i += 2;
    } else {
      out += c;
    }
  }
  return out;
}

std::string_view target_path(std::string_view target) noexcept {
  auto q = target.find('?');
  return q == std::string_view::npos ? target : target.substr(0, q);
}

std::optional<std::string> query_param(std::string_view target, std::string_view name) {
  auto q = target.find('?');
  if (q == std::string_view::npos) return std::nullopt;
  std::string_view rest = target.substr(q + 1);
  if (auto h = rest.find('#'); h != std::string_view::npos) rest = rest.substr(0, h);
  while (!rest.empty()) {
    auto amp = rest.find('&');
    std::string_view pair = rest.substr(0, amp);
    rest = amp == std::string_view::npos ? std::string_view{} : rest.substr(amp + 1);
    auto eq = pair.find('=');
    std::string_view k = pair.substr(0, eq);
    std::string_view v = eq == std::string_view::npos ? std::string_view{} : pair.substr(eq + 1);
    auto dk = url_decode(k);
    if (!dk || *dk != name) continue;
    auto dv = url_decode(v);
    if (!dv) return std::nullopt;
    return std::move(*dv);
  }
  return std::nullopt;
}

http_response make_response(http_status status, std::string body, std::string_view content_type) {
  http_response r{status, 11};
  if (!body.empty()) r.set(http_field::content_type, content_type);
  r.body() = std::move(body);
  return r;
}

// --- shared I/O helpers ---

namespace {

constexpr std::size_t recv_chunk = 64 * 1024;

// What is left of a deadline; timed_out once it passed.
result<clock::duration> remaining(clock::time_point deadline) noexcept {
  auto now = clock::now();
  if (now >= deadline) return fail(std::errc::timed_out);
  return deadline - now;
}

std::span<const std::byte> bytes_of(std::string_view s) noexcept {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

// Sends all of `data` before `deadline`. With `ignore_stop`, a stop request does not interrupt it
// (the server finishes a response it started).
task<result<void>> send_all_by(tcp_stream& s, std::string_view data, clock::time_point deadline, bool ignore_stop) {
  std::span<const std::byte> rest = bytes_of(data);
  while (!rest.empty()) {
    auto rem = remaining(deadline);
    if (!rem) co_return fail(rem.error());
    result<std::size_t> n = ignore_stop ? co_await s.send(rest).with_stop_token(std::stop_token{}).with_timeout(*rem)
                                        : co_await s.send(rest).with_timeout(*rem);
    if (!n) co_return fail(n.error());
    rest = rest.subspan(*n);
  }
  co_return ok();
}

// Header and body; one send when the body is small, two otherwise (no copy of a large body).
task<result<void>> send_message(tcp_stream& s, std::string& head, const std::string& body, clock::time_point deadline,
                                bool ignore_stop) {
  if (body.size() <= recv_chunk) {
    head += body;
    co_return co_await send_all_by(s, head, deadline, ignore_stop);
  }
  if (auto r = co_await send_all_by(s, head, deadline, ignore_stop); !r) co_return r;
  co_return co_await send_all_by(s, body, deadline, ignore_stop);
}

}  // namespace

// --- client ---

namespace {
struct client_connection {
  tcp_stream stream;
  http_response_decoder decoder;
};
}  // namespace

struct http_client::state {
  address target;
  std::string host;
  http_client_options opts;
  mutable std::mutex mu;
  std::vector<std::unique_ptr<client_connection>> idle;

  std::unique_ptr<client_connection> take_idle() {
    std::lock_guard lock(mu);
    if (idle.empty()) return nullptr;
    auto c = std::move(idle.back());
    idle.pop_back();
    return c;
  }
  void park(std::unique_ptr<client_connection> c) {
    std::lock_guard lock(mu);
    if (idle.size() < opts.max_idle_connections) idle.push_back(std::move(c));
  }
};

namespace {

// One request/response on `c`. `got_bytes` tells the caller whether any response byte arrived, which
// decides whether a failure on a reused connection may be retried.
task<result<http_response>> exchange(client_connection& c, std::string head, const std::string& body, bool is_head,
                                     clock::time_point deadline, bool& got_bytes) {
  if (auto r = co_await send_message(c.stream, head, body, deadline, false); !r) co_return fail(r.error());
  if (is_head) c.decoder.expect_head_response();
  for (;;) {
    auto m = c.decoder.next();
    if (!m) co_return fail(m.error());
    if (*m) co_return std::move(**m);
    auto rem = remaining(deadline);
    if (!rem) co_return fail(rem.error());
    std::span<char> buf = c.decoder.prepare(recv_chunk);
    auto n = co_await c.stream.recv(std::as_writable_bytes(buf)).with_timeout(*rem);
    if (!n) co_return fail(n.error());
    if (*n == 0) {
      auto f = c.decoder.finish();
      if (!f) co_return fail(f.error());
      if (*f) {
        (*f)->keep_alive(false);  // the server closed: the connection cannot be reused
        co_return std::move(**f);
      }
      co_return fail(errc::closed);
    }
    got_bytes = true;
    c.decoder.commit(*n);
  }
}

bool retryable(const std::error_code& ec) noexcept {
  return !is_timeout(ec) && !is_canceled(ec);
}

task<result<http_response>> client_request(std::shared_ptr<http_client::state> st, http_request req,
                                           std::chrono::milliseconds deadline_in) {
  const clock::time_point deadline = clock::now() + deadline_in;
  req.version(11);
  if (req.find(http_field::host) == req.end()) req.set(http_field::host, st->host);
  req.keep_alive(st->opts.max_idle_connections > 0);
  const std::string head = serialize_header(req);
  const bool is_head = req.method() == http_verb::head;
  for (int attempt = 0;; ++attempt) {
    std::unique_ptr<client_connection> c = attempt == 0 ? st->take_idle() : nullptr;
    const bool reused = c != nullptr;
    if (!c) {
      auto rem = remaining(deadline);
      if (!rem) co_return fail(rem.error());
      auto s = co_await tcp_stream::connect(st->target).with_timeout(*rem);
      if (!s) co_return fail(s.error());
      c = std::make_unique<client_connection>(client_connection{std::move(*s), http_response_decoder(st->opts.limits)});
    }
    bool got_bytes = false;
    auto r = co_await exchange(*c, head, req.body(), is_head, deadline, got_bytes);
    if (!r) {
      if (reused && !got_bytes && retryable(r.error())) continue;
      co_return fail(r.error());
    }
    if (r->keep_alive() && req.keep_alive() && c->decoder.idle()) st->park(std::move(c));
    co_return std::move(*r);
  }
}

}  // namespace

http_client::http_client(const address& target, http_client_options opts) : s_(std::make_shared<state>()) {
  s_->target = target;
  s_->host = target.to_string();
  s_->opts = opts;
}
http_client::~http_client() = default;
http_client::http_client(http_client&&) noexcept = default;
http_client& http_client::operator=(http_client&&) noexcept = default;

task<result<http_response>> http_client::request(http_request req, std::chrono::milliseconds deadline) {
  return client_request(s_, std::move(req), deadline);
}
task<result<http_response>> http_client::request(http_request req) {
  return client_request(s_, std::move(req), s_->opts.default_deadline);
}
const address& http_client::target() const noexcept { return s_->target; }
std::size_t http_client::idle_connections() const noexcept {
  std::lock_guard lock(s_->mu);
  return s_->idle.size();
}

task<result<http_response>> http_fetch(const address& target, http_request req, std::chrono::milliseconds deadline) {
  http_client_options o;
  o.default_deadline = deadline;
  o.max_idle_connections = 0;
  http_client c(target, o);
  co_return co_await c.request(std::move(req), deadline);
}

// --- server ---

struct http_server::state {
  tcp_listener listener;
  address local;
  http_server_options opts;
  handler h;
  coro::async_scope scope;  // one task per connection; its stop token is the server's
  std::atomic<std::size_t> open{0};
};

namespace {

using server_state = http_server::state;

// Reads the next request; the first byte must come within idle_timeout, the rest within
// request_timeout of it.
task<result<http_request>> read_request(server_state& st, tcp_stream& s, http_request_decoder& dec) {
  bool started = !dec.idle();
  clock::time_point deadline = clock::now() + (started ? st.opts.request_timeout : st.opts.idle_timeout);
  for (;;) {
    auto m = dec.next();
    if (!m) co_return fail(m.error());
    if (*m) co_return std::move(**m);
    if (!started && !dec.idle()) {
      started = true;
      deadline = clock::now() + st.opts.request_timeout;
    }
    if (dec.take_continue()) {
      http_response cont{http_status::continue_, 11};
      std::string h = serialize_header(cont);
      if (auto r = co_await send_all_by(s, h, deadline, false); !r) co_return fail(r.error());
    }
    auto rem = remaining(deadline);
    if (!rem) co_return fail(rem.error());
    std::span<char> buf = dec.prepare(16 * 1024);
    auto n = co_await s.recv(std::as_writable_bytes(buf)).with_timeout(*rem);
    if (!n) co_return fail(n.error());
    if (*n == 0) {
      auto f = dec.finish();
      if (!f) co_return fail(f.error());
      if (*f) co_return std::move(**f);
      co_return fail(errc::closed);
    }
    dec.commit(*n);
  }
}

// After an error answer: stop sending, and read what the client still sends for a short while, so
// closing with unread data does not reset the connection before the client read our answer.
task<void> lingering_close(tcp_stream& s) {
  (void)s.shutdown_write();
  std::vector<std::byte> sink(16 * 1024);
  const clock::time_point deadline = clock::now() + std::chrono::milliseconds(500);
  std::size_t total = 0;
  while (total < (std::size_t{4} << 20)) {
    auto rem = remaining(deadline);
    if (!rem) break;
    auto n = co_await s.recv(sink).with_stop_token(std::stop_token{}).with_timeout(*rem);
    if (!n || *n == 0) break;
    total += *n;
  }
  s.close();
}

task<http_response> call_handler(server_state& st, const http_request& req) {
  if (!st.h) co_return make_response(http_status::not_found, "no handler\n");
  bool failed = false;
  http_response resp;
  try {
    task<http_response> t = st.h(req);
    // Stopping the server lets requests being handled finish.
    resp = co_await std::move(t).with_stop_token(std::stop_token{});
  } catch (const std::exception& e) {
    log::warn("http_server: handler for {} threw: {}", std::string_view(req.target()), e.what());
    failed = true;
  } catch (...) {
    log::warn("http_server: handler for {} threw", std::string_view(req.target()));
    failed = true;
  }
  if (failed) resp = make_response(http_status::internal_server_error, "internal error\n");
  co_return resp;
}

struct open_guard {
  std::atomic<std::size_t>& n;
  explicit open_guard(std::atomic<std::size_t>& c) noexcept : n(c) { n.fetch_add(1, std::memory_order_relaxed); }
  ~open_guard() { n.fetch_sub(1, std::memory_order_relaxed); }
  open_guard(const open_guard&) = delete;
  open_guard& operator=(const open_guard&) = delete;
};

task<void> serve_connection(server_state& st, tcp_stream s) {
  open_guard guard(st.open);
  http_request_decoder dec(st.opts.limits);
  auto stop = co_await coro::get_stop_token();
  for (;;) {
    auto req = co_await read_request(st, s, dec);
    if (!req) {
      const std::error_code& ec = req.error();
      std::optional<http_status> answer;
      if (ec == http_errc::body_too_large)
        answer = http_status::payload_too_large;
      else if (ec == http_errc::header_too_large)
        answer = http_status::request_header_fields_too_large;
      else if (ec == http_errc::bad_message)
        answer = http_status::bad_request;
      else if (is_timeout(ec) && !dec.idle())
        answer = http_status::request_timeout;
      if (answer) {
        http_response resp = make_response(*answer, std::string(bhttp::obsolete_reason(*answer)) + "\n");
        resp.keep_alive(false);
        std::string head = serialize_header(resp);
        auto deadline = clock::now() + st.opts.send_timeout;
        if (co_await send_message(s, head, resp.body(), deadline, true)) co_await lingering_close(s);
      }
      co_return;
    }
    http_response resp = co_await call_handler(st, *req);
    const bool keep = req->keep_alive() && !stop.stop_requested();
    resp.version(req->version() == 10 ? 10 : 11);
    resp.keep_alive(keep);
    std::string head = serialize_header(resp);
    static const std::string no_body;
    const std::string& body = req->method() == http_verb::head ? no_body : resp.body();
    auto deadline = clock::now() + st.opts.send_timeout;
    auto sent = co_await send_message(s, head, body, deadline, true);
    if (!sent || !keep || stop.stop_requested()) co_return;
  }
}

bool transient_accept_error(const std::error_code& ec) noexcept {
  return ec == std::errc::too_many_files_open || ec == std::errc::too_many_files_open_in_system ||
         ec == std::errc::no_buffer_space || ec == std::errc::not_enough_memory;
}

task<void> serve_loop(server_state& st) {
  std::stop_token caller = co_await coro::get_stop_token();
  auto forward = [&st]() noexcept { st.scope.request_stop(); };
  std::stop_callback on_caller_stop(caller, forward);
  std::stop_token tok = st.scope.get_stop_token();
  while (!tok.stop_requested()) {
    auto s = co_await st.listener.accept().with_stop_token(tok);
    if (!s) {
      if (is_canceled(s.error())) break;
      log::warn("http_server {}: accept failed: {}", st.local.to_string(), s.error().message());
      if (transient_accept_error(s.error())) {
        // Out of descriptors or memory: back off instead of spinning on the same error.
        (void)co_await sleep_for(std::chrono::milliseconds(50)).with_stop_token(tok);
        continue;
      }
      if (s.error() == std::errc::connection_aborted || s.error() == std::errc::interrupted) continue;
      break;
    }
    if (st.open.load(std::memory_order_relaxed) >= st.opts.max_connections) {
      s->close();
      continue;
    }
    st.scope.spawn(serve_connection(st, std::move(*s)));
  }
  st.listener.close();
  co_await st.scope.join();
}

}  // namespace

http_server::http_server(std::unique_ptr<state> s) noexcept : s_(std::move(s)) {}
http_server::http_server(http_server&&) noexcept = default;
http_server& http_server::operator=(http_server&&) noexcept = default;
http_server::~http_server() = default;

result<http_server> http_server::bind(const address& at, http_server_options opts) {
  auto l = tcp_listener::bind(at);
  if (!l) return fail(l.error());
  auto st = std::make_unique<state>();
  st->local = l->local_address();
  st->listener = std::move(*l);
  st->opts = opts;
  return http_server(std::move(st));
}

address http_server::local_address() const { return s_->local; }

task<void> http_server::serve(handler h) {
  s_->h = std::move(h);
  return serve_loop(*s_);
}

void http_server::stop() noexcept { s_->scope.request_stop(); }

std::size_t http_server::connections() const noexcept { return s_->open.load(std::memory_order_relaxed); }

}  // namespace yutu::io
