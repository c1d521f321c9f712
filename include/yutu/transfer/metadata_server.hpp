// An embeddable HTTP key-value metadata server, wire-compatible with Mooncake's http_metadata_server:
// GET <path>?key=K answers the value (200) or 404, PUT stores the request body, DELETE removes the key
// (404 if it was missing); a request without a key, or another method, answers 400 / 405.
//
// It runs on the reactor that awaits serve() (the yutu-metadata binary, or inside a test or an
// engine's process) and keeps the values in memory: like Mooncake's, it is a rendezvous point, not a
// database. The HTTP machinery stays in the .cpp, so including this header costs no Beast.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/address.hpp"

namespace yutu::transfer {

struct metadata_server_options {
  std::string path = "/metadata";
  std::size_t max_value_size = std::size_t{64} << 20;  // descriptors of hosts with many buffers are large
  std::chrono::milliseconds request_timeout{10000};    // a client stalled mid-request is dropped
  std::chrono::milliseconds idle_timeout{60000};       // a kept-alive connection with no request
};

class metadata_server {
 public:
  static result<metadata_server> bind(const io::address& at, metadata_server_options opts = {});
  metadata_server(metadata_server&&) noexcept;
  metadata_server& operator=(metadata_server&&) noexcept;
  // Must not be destroyed while serve() runs.
  ~metadata_server();

  io::address local_address() const;
  // Serves until stop() or a stop request on the awaiting task; returns once every connection closed.
  task<void> serve();
  // Any thread.
  void stop() noexcept;
  // Keys stored (a snapshot).
  std::size_t size() const;

  struct state;  // implementation (src/transfer/metadata_server.cpp)

 private:
  explicit metadata_server(std::unique_ptr<state> s) noexcept;
  std::unique_ptr<state> s_;
};

}  // namespace yutu::transfer
