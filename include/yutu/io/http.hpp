// HTTP/1.1 over yutu's own io_uring sockets: a small client and an embeddable server.
//
// Messages are Boost.Beast's (http_request / http_response below): Beast parses and serializes them,
// yutu's tcp_stream moves the bytes, so no asio socket or io_context is involved. Only Beast's message
// types are included here; its parser and serializer live in src/io/http.cpp behind the decoder
// classes, so code that includes this header does not compile them.
//
// Used for control-plane traffic (metadata servers, etcd's JSON gateway), not for KVCache bytes.
// Every remote call is bounded by a deadline (std::errc::timed_out); the server bounds how long a
// client may take to send a request and how large it may be, so a stalled or hostile client costs one
// connection slot for a bounded time and answers 400 / 408 / 413 / 431.
#pragma once

#include <boost/beast/http/message.hpp>
#include <boost/beast/http/string_body.hpp>

#include <chrono>
#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <system_error>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"

namespace yutu::io {

class address;

using http_request = boost::beast::http::request<boost::beast::http::string_body>;
using http_response = boost::beast::http::response<boost::beast::http::string_body>;
using http_verb = boost::beast::http::verb;
using http_status = boost::beast::http::status;
using http_field = boost::beast::http::field;

// Why bytes could not be decoded as a message. The server answers each with the status in brackets
// and closes the connection.
enum class http_errc : int {
  bad_message = 1,   // malformed start line, header or chunk encoding [400]
  header_too_large,  // the header block exceeds http_limits::header_limit [431]
  body_too_large,    // the body exceeds http_limits::body_limit [413]
  partial_message,   // the peer closed the stream in the middle of a message
  bad_response,      // a response the client cannot use (e.g. an HTTP/1.0 reply to keep-alive)
};
const std::error_category& http_category() noexcept;
inline std::error_code make_error_code(http_errc e) noexcept { return {static_cast<int>(e), http_category()}; }

struct http_limits {
  std::size_t header_limit = 64 * 1024;
  std::size_t body_limit = 1024 * 1024;
};

// --- codec: bytes in, messages out (Beast's parser underneath) ---

namespace detail {
template <bool IsRequest>
class http_decoder_impl;
}

// Incremental decoder of messages from a byte stream, with its own receive buffer. The connection
// code, the tests and the fuzzer all go through it, so what the fuzzer exercises is what the server
// runs. After an error the decoder stays failed: the stream is out of sync and must be closed.
template <bool IsRequest>
class http_decoder {
 public:
  using message = std::conditional_t<IsRequest, http_request, http_response>;

  explicit http_decoder(http_limits limits = {});
  ~http_decoder();
  http_decoder(http_decoder&&) noexcept;
  http_decoder& operator=(http_decoder&&) noexcept;

  // Space for at least `n` more bytes: receive into it, then commit what arrived.
  std::span<char> prepare(std::size_t n);
  void commit(std::size_t n) noexcept;
  // prepare + copy + commit.
  void append(std::string_view bytes);

  // The next complete message from the buffered bytes, or nullopt when more bytes are needed.
  result<std::optional<message>> next();
  // The peer closed the stream. Returns the message a response body "until EOF" completes, nullopt
  // when no message was begun, or http_errc::partial_message.
  result<std::optional<message>> finish();
  // True when no byte of an unfinished message is buffered or parsed.
  bool idle() const noexcept;
  // For a response decoder: the next response answers a HEAD request and has no body.
  void expect_head_response() noexcept;
  // For a request decoder: true once per request whose header carries "Expect: 100-continue" and
  // whose body has not arrived; the server then sends "100 Continue".
  bool take_continue() noexcept;

 private:
  std::unique_ptr<detail::http_decoder_impl<IsRequest>> impl_;
};
using http_request_decoder = http_decoder<true>;
using http_response_decoder = http_decoder<false>;
extern template class http_decoder<true>;
extern template class http_decoder<false>;

// The start line and header fields, blank line included; the body follows as is. Sets Content-Length
// (prepare_payload) first, so a message with a body is framed.
std::string serialize_header(http_request& m);
std::string serialize_header(http_response& m);
// Header and body in one string (tests, small messages).
std::string serialize(http_request& m);
std::string serialize(http_response& m);

// Query-string helpers. url_encode escapes every byte but RFC 3986's unreserved ones, so the result
// is safe as a query value ('/', '&', '=', '+', '%' and spaces included).
std::string url_encode(std::string_view s);
// Decodes %XX and '+' (a space, as HTML forms and Python's urlencode write it); a malformed escape is
// errc::invalid_params.
result<std::string> url_decode(std::string_view s);
// The decoded value of `name` in a request target's query ("/metadata?key=a%2Fb" -> "a/b"), nullopt
// when absent or malformed.
std::optional<std::string> query_param(std::string_view target, std::string_view name);
// The path of a request target, without its query.
std::string_view target_path(std::string_view target) noexcept;

// A response with `status`, a text body and the request's version; the server sets keep-alive.
http_response make_response(http_status status, std::string body = {}, std::string_view content_type = "text/plain");

// --- client ---

struct http_client_options {
  std::chrono::milliseconds default_deadline{5000};
  // Kept-alive connections parked per client; more concurrent requests open more connections.
  std::size_t max_idle_connections = 4;
  http_limits limits{.header_limit = 64 * 1024, .body_limit = std::size_t{64} << 20};
};

// A client for one target that reuses kept-alive connections. Safe to use from several coroutines and
// threads at once (each request holds its own connection). Errors: the socket's system error
// (connection refused, reset), std::errc::timed_out past the deadline, operation_canceled, or an
// http_errc for a response that could not be decoded. A request that fails on a reused connection
// before any response byte arrived (the server closed it while idle) is retried once on a new one.
class http_client {
 public:
  explicit http_client(const address& target, http_client_options opts = {});
  ~http_client();
  http_client(http_client&&) noexcept;
  http_client& operator=(http_client&&) noexcept;

  // Sends `req` (HTTP/1.1; Host, Content-Length and keep-alive are filled in) and reads the response.
  task<result<http_response>> request(http_request req, std::chrono::milliseconds deadline);
  task<result<http_response>> request(http_request req);  // with the default deadline
  const address& target() const noexcept;
  // Connections parked for reuse (for tests).
  std::size_t idle_connections() const noexcept;

  struct state;  // implementation (src/io/http.cpp)

 private:
  std::shared_ptr<state> s_;
};

// One request on a new connection, closed afterwards.
task<result<http_response>> http_fetch(const address& target, http_request req, std::chrono::milliseconds deadline);

// --- server ---

struct http_server_options {
  http_limits limits;
  // A kept-alive connection waiting for the first byte of its next request is closed after this.
  std::chrono::milliseconds idle_timeout{60000};
  // From a request's first byte to its last: a client that stalls longer gets 408 and is closed.
  std::chrono::milliseconds request_timeout{10000};
  // Sending one response; a client that does not read is closed.
  std::chrono::milliseconds send_timeout{10000};
  // Connections beyond this are accepted and closed at once.
  std::size_t max_connections = 4096;
};

// An embeddable HTTP/1.1 server: one coroutine per connection on the reactor that runs serve(),
// keep-alive, pipelining (requests answered in order). The handler runs with no stop token (stop()
// lets it finish) and may throw: the client then gets 500.
class http_server {
 public:
  using handler = std::function<task<http_response>(const http_request&)>;

  static result<http_server> bind(const address& at, http_server_options opts = {});
  http_server(http_server&&) noexcept;
  http_server& operator=(http_server&&) noexcept;
  // Must not be destroyed while serve() runs.
  ~http_server();

  address local_address() const;
  // Accepts and serves until stop() (or a stop request on the awaiting task); then closes the
  // listener and idle connections, lets requests being handled finish and returns when every
  // connection is closed. Call once.
  task<void> serve(handler h);
  // Any thread. Idempotent.
  void stop() noexcept;
  // Open connections (for tests and metrics).
  std::size_t connections() const noexcept;

  struct state;  // implementation (src/io/http.cpp)

 private:
  explicit http_server(std::unique_ptr<state> s) noexcept;
  std::unique_ptr<state> s_;
};

}  // namespace yutu::io

template <>
struct std::is_error_code_enum<yutu::io::http_errc> : std::true_type {};
