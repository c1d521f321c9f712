// rpc_master_client: the master_service of a master in another process, over the store RPC protocol.
//
// It keeps a small pool of TCP connections to the master, each homed on one reactor of a
// reactor_pool (its own, or one the caller shares, e.g. the transfer engine's), and pipelines every
// call on them: a call queues its frame, the connection matches responses to calls by request id, in
// whatever order the master answers.
//
// Threads: callable from any thread or reactor. A call made on a reactor of the client's pool uses a
// connection homed there (no thread hop); from anywhere else it hops to a connection's home reactor
// and, when done, back to the executor it was called from (current_executor()). A call from a plain
// thread (sync_wait) has no executor to return to: it resumes on the client's reactor thread.
//
// Errors: every call has a deadline (options.call_timeout, 5 s by default) and fails with
// errc::rpc_timeout past it; a master that cannot be reached, or a connection that breaks while the
// call waits, is errc::rpc_fail; a stop request on the calling task is operation_canceled (the
// request may still reach the master, as with a timeout). After a failure the next call reconnects.
// A connection on which a call timed out without any response arriving since it was sent is taken
// for dead (a master that hangs, a black-holed route) and replaced on the next call. Batch calls
// report a whole-call failure as that error for every key.
#pragma once

#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "yutu/coro/task.hpp"
#include "yutu/error.hpp"
#include "yutu/io/address.hpp"
#include "yutu/io/reactor_pool.hpp"
#include "yutu/store/master_service.hpp"
#include "yutu/store/rpc.hpp"

namespace yutu::store {

struct rpc_client_options {
  std::chrono::milliseconds connect_timeout{5000};
  std::chrono::milliseconds call_timeout{5000};
  // A call whose frame cannot be written within this is a broken connection.
  std::chrono::milliseconds send_timeout{5000};
  std::size_t connections = 2;
  // Threads of the client's own reactor pool (unused when a pool is given).
  std::size_t threads = 1;
  rpc::limits limits;
};

class rpc_master_client final : public master_service {
 public:
  // `master` is "host:port" (resolved here, once: this blocks on DNS). With `pool`, connections live
  // on its reactors and it must outlive the client; without, the client runs its own pool. No
  // connection is made yet: see connect().
  static result<std::unique_ptr<rpc_master_client>> create(std::string_view master, rpc_client_options opts = {},
                                                           io::reactor_pool* pool = nullptr);
  ~rpc_master_client() override;
  rpc_master_client(const rpc_master_client&) = delete;
  rpc_master_client& operator=(const rpc_master_client&) = delete;

  // Opens every pooled connection within connect_timeout: rpc_fail if the master refuses, rpc_timeout
  // if it does not answer. Optional: calls connect on demand.
  task<result<void>> connect();

  const io::address& master_address() const noexcept;
  // Connections open now (for tests).
  std::size_t open_connections() const;
  // The pool the connections live on (the client's own, or the one given to create()).
  io::reactor_pool& pool() noexcept;

  task<result<void>> mount_segment(client_id client, segment_info seg) override;
  task<result<void>> unmount_segment(client_id client, std::string segment_name) override;
  task<result<ping_result>> ping(client_id client) override;

  task<result<std::vector<replica_desc>>> put_start(client_id client, std::string key, std::uint64_t size,
                                                  replicate_config cfg) override;
  task<result<void>> put_end(client_id client, std::string key) override;
  task<result<void>> put_revoke(client_id client, std::string key) override;
  task<result<std::vector<replica_desc>>> upsert_start(client_id client, std::string key, std::uint64_t size,
                                                     replicate_config cfg) override;

  task<std::vector<result<std::vector<replica_desc>>>> batch_put_start(client_id client, std::vector<std::string> keys,
                                                                     std::vector<std::uint64_t> sizes,
                                                                     replicate_config cfg) override;
  task<std::vector<result<void>>> batch_put_end(client_id client, std::vector<std::string> keys) override;
  task<std::vector<result<void>>> batch_put_revoke(client_id client, std::vector<std::string> keys) override;
  task<std::vector<result<void>>> batch_put_commit(client_id client, std::vector<std::string> placeholders,
                                                   std::vector<std::string> keys) override;

  task<result<replica_list>> get_replica_list(std::string key) override;
  task<std::vector<result<replica_list>>> batch_get_replica_list(std::vector<std::string> keys) override;
  task<result<match_result>> match_prefix(std::vector<std::string> keys) override;

  task<result<bool>> exist(std::string key) override;
  task<std::vector<result<bool>>> batch_exist(std::vector<std::string> keys) override;
  task<result<std::uint64_t>> get_size(std::string key) override;
  task<result<void>> remove(std::string key, bool force = false) override;
  task<std::vector<result<void>>> batch_remove(std::vector<std::string> keys, bool force = false) override;
  task<result<std::uint64_t>> remove_all(bool force = false) override;
  // Connections that broke (or were replaced as dead) since creation.
  std::uint64_t link_epoch() const noexcept override;

  struct state;  // implementation (src/store/rpc_client.cpp)

 private:
  explicit rpc_master_client(std::unique_ptr<state> s) noexcept;
  template <rpc::op O>
  task<result<rpc::response_t<O>>> invoke(rpc::request_t<O> req);
  template <rpc::op O, class T>
  task<std::vector<result<T>>> invoke_batch(rpc::request_t<O> req, std::size_t n);

  std::unique_ptr<state> s_;
};

}  // namespace yutu::store
