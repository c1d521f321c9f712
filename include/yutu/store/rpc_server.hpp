// rpc_server: serves a master_service over TCP with the store RPC protocol (rpc.hpp).
//
// The accept loop runs on the reactor that awaits serve(); each accepted connection runs on the next
// reactor of a reactor_pool (round robin) as one coroutine that reads frames and spawns one handler
// per request, so requests of a connection are served concurrently (up to max_in_flight each, then
// the connection stops reading: back-pressure) and answered as they finish, out of order. Handlers
// append their responses to the connection's output buffer; whoever takes the connection's write
// mutex sends everything queued, so concurrent responses leave in as few sends as possible.
//
// Hostile or broken peers cost one connection and nothing else: a request that cannot be decoded,
// names a foreign version or has a field over a limit gets an error response and the connection goes
// on (the frame's length is trusted, so the stream is still in sync); a bad magic or a frame over
// max_frame closes it, and so does a frame left half-sent for longer than frame_timeout or a client
// that does not read its responses for send_timeout.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/store/master_service.hpp"
#include "yutu/store/rpc.hpp"

namespace yutu::store {

struct rpc_server_options {
  rpc::limits limits;
  // Requests of one connection being handled at once; beyond it the connection is not read.
  std::size_t max_in_flight = 1024;
  // From a frame's first byte to its last.
  std::chrono::milliseconds frame_timeout{10000};
  // A connection with no partial frame and no request in flight for this long is closed; 0 = never
  // (clients keep pooled connections, and TCP keep-alive finds peers that vanished).
  std::chrono::milliseconds idle_timeout{0};
  // Sending queued responses; a client that does not read is closed.
  std::chrono::milliseconds send_timeout{10000};
  // Connections beyond this are accepted and closed at once.
  std::size_t max_connections = 4096;
};

// Counters for /metrics (monotonic unless noted); read from any thread.
struct rpc_server_stats {
  std::uint64_t connections_accepted = 0;
  std::uint64_t connections_open = 0;  // gauge
  std::uint64_t connections_rejected = 0;
  std::uint64_t requests = 0;
  std::uint64_t bad_requests = 0;      // answered with an error without reaching the service
  std::uint64_t protocol_closes = 0;   // connections closed for a malformed stream or a stalled frame
  std::uint64_t requests_by_op[rpc::op_max + 1] = {};
  std::uint64_t failures_by_op[rpc::op_max + 1] = {};  // calls whose result (or every item) failed
};

class rpc_server {
 public:
  static result<rpc_server> bind(const io::address& at, rpc_server_options opts = {});
  rpc_server(rpc_server&&) noexcept;
  rpc_server& operator=(rpc_server&&) noexcept;
  // Must not be destroyed while serve() runs.
  ~rpc_server();

  io::address local_address() const;

  // Accepts until stop() (or a stop request on the awaiting task) and serves `svc` on `pool`'s
  // reactors; then closes the listener, stops reading every connection, lets requests being handled
  // finish and their responses go out, and returns once every connection is closed. `svc` and `pool`
  // must outlive it. Call once.
  task<void> serve(master_service& svc, io::reactor_pool& pool);
  // Any thread. Idempotent.
  void stop() noexcept;

  rpc_server_stats stats() const noexcept;
  // Prometheus text: master_rpc_* counters, and master_<op>_requests_total / _failures_total.
  std::string metrics_text() const;

  struct state;  // implementation (src/store/rpc_server.cpp)

 private:
  explicit rpc_server(std::unique_ptr<state> s) noexcept;
  std::unique_ptr<state> s_;
};

}  // namespace yutu::store
