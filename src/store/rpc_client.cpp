// The store RPC client (see rpc_client.hpp): a pool of pipelined connections to the master, calls
// matched to responses by id, deadlines swept per connection.
#include "yutu/store/rpc_client.hpp"

#include <sys/socket.h>

#include <atomic>
#include <mutex>
#include <optional>
#include <stop_token>
#include <unordered_map>
#include <utility>
#include <vector>

#include "yutu/coro/async_event.hpp"
#include "yutu/coro/async_mutex.hpp"
#include "yutu/io/op.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/log.hpp"

namespace yutu::store {

using rpc::op;

namespace {

constexpr std::size_t recv_chunk = 64 * 1024;
// The sweeper wakes at least this often while calls are pending, so a call with a deadline earlier
// than the one it sleeps towards is late by at most this much.
constexpr std::chrono::milliseconds max_sweep_interval{50};

// Resumes the awaiting coroutine on `e` (the caller's executor), unless it is already there or there
// is none (a plain thread: stay where we are).
struct hop_to {
  coro::executor* e;
  coro::resume_item item{};
  bool await_ready() const noexcept { return !e || e->running_in_this_thread(); }
  void await_suspend(std::coroutine_handle<> h) noexcept {
    item.handle = h;
    e->post(&item);
  }
  void await_resume() const noexcept {}
};

task<result<void>> send_bytes(int fd, std::string_view bytes, std::chrono::milliseconds timeout) {
  return io::send_all_within(fd, std::as_bytes(std::span(bytes.data(), bytes.size())), timeout);
}

// One call waiting for its response. Lives in the calling coroutine's frame; only the home reactor
// touches it, and it leaves every list before the caller resumes.
struct slot {
  std::uint64_t id = 0;
  op kind{};
  io::clock::time_point deadline;
  std::uint64_t frames_at_send = 0;  // the connection's received-frame count when it was queued
  slot* prev = nullptr;              // the connection's deadline-ordered list
  slot* next = nullptr;
  std::string payload;
  std::error_code ec;
  bool done = false;
  bool waiting = false;
  coro::resume_item resume;
};

// One TCP connection to the master, homed on one reactor. Shared by the calls using it, its
// receive loop and its sweeper; the fd is closed only when the last of them lets go, so shutdown()
// from another thread never hits a reused fd number.
class connection : public std::enable_shared_from_this<connection> {
 public:
  connection(io::reactor& home, io::tcp_stream s, const rpc_client_options& opts,
             std::shared_ptr<std::atomic<std::uint64_t>> breaks)
      : home_(&home), s_(std::move(s)), opts_(opts), breaks_(std::move(breaks)) {}

  io::reactor& home() const noexcept { return *home_; }
  bool broken() const noexcept { return broken_; }

  // Home reactor: sends `frame` (one request, id 0 until now) and waits for its response payload.
  task<result<std::string>> call(op kind, std::string frame, io::clock::time_point deadline);

  // Any thread: stops the loops and makes blocked I/O return; pending calls fail with rpc_fail.
  void close() noexcept {
    stop_.request_stop();
    ::shutdown(s_.fd(), SHUT_RDWR);
  }

  task<void> receive_loop(std::shared_ptr<connection> self);
  task<void> sweep_loop(std::shared_ptr<connection> self);
  std::stop_token stop_token() const noexcept { return stop_.get_token(); }

  // Home reactor: a call was cancelled by its caller's stop token.
  void cancel(std::uint64_t id) noexcept {
    if (auto it = pending_.find(id); it != pending_.end()) complete(it->second, std::make_error_code(std::errc::operation_canceled));
  }

 private:
  struct slot_awaiter;
  struct cancel_item : coro::work_item {
    std::weak_ptr<connection> conn;
    std::uint64_t id = 0;
  };

  void complete(slot* s, std::error_code ec) noexcept {
    if (s->done) return;
    s->done = true;
    s->ec = ec;
    pending_.erase(s->id);
    // Unlink from the deadline list.
    if (s->prev)
      s->prev->next = s->next;
    else
      head_ = s->next;
    if (s->next)
      s->next->prev = s->prev;
    else
      tail_ = s->prev;
    s->prev = s->next = nullptr;
    if (s->waiting) home_->schedule_local(&s->resume);
  }
  void fail_all(std::error_code ec) noexcept {
    if (!broken_) {
      broken_ = true;
      breaks_->fetch_add(1, std::memory_order_release);
      ::shutdown(s_.fd(), SHUT_RDWR);
    }
    while (head_) complete(head_, ec);
    out_.clear();
  }
  void link(slot* s) {
    // Deadlines mostly arrive in order (one default timeout), so walking back from the tail is O(1).
    slot* after = tail_;
    while (after && after->deadline > s->deadline) after = after->prev;
    s->prev = after;
    s->next = after ? after->next : head_;
    if (s->next)
      s->next->prev = s;
    else
      tail_ = s;
    if (after)
      after->next = s;
    else
      head_ = s;
  }
  task<void> flush();

  io::reactor* home_;
  io::tcp_stream s_;
  rpc_client_options opts_;
  std::shared_ptr<std::atomic<std::uint64_t>> breaks_;  // the client's count (link_epoch)
  std::stop_source stop_;
  std::unordered_map<std::uint64_t, slot*> pending_;
  slot* head_ = nullptr;  // pending calls by deadline
  slot* tail_ = nullptr;
  std::uint64_t next_id_ = 1;
  std::uint64_t frames_received_ = 0;
  std::string out_;      // frames queued, not yet being sent
  std::string sending_;  // the batch being sent
  bool flushing_ = false;
  bool broken_ = false;
  bool sweeper_idle_ = false;
  async_event wake_sweeper_;
};

struct connection::slot_awaiter {
  connection* c;
  slot* s;
  struct on_stop {
    std::weak_ptr<connection> conn;
    io::reactor* home;
    std::uint64_t id;
    void operator()() noexcept {
      // Another thread, maybe: the slot may only be touched on the home reactor, and may be gone by
      // the time this runs there, so the posted item names it by id.
      cancel_item* item = new (std::nothrow) cancel_item;
      if (!item) return;  // the deadline still ends the call
      item->conn = conn;
      item->id = id;
      item->run = [](coro::work_item* w) noexcept {
        std::unique_ptr<cancel_item> it(static_cast<cancel_item*>(w));
        if (auto conn = it->conn.lock()) conn->cancel(it->id);
      };
      home->post(item);
    }
  };
  std::optional<std::stop_callback<on_stop>> stop_cb;

  bool await_ready() const noexcept { return s->done; }
  template <class P>
  void await_suspend(std::coroutine_handle<P> h) noexcept {
    s->resume.handle = h;
    s->waiting = true;
    std::stop_token tok = coro::detail::stop_token_of(h);
    if (tok.stop_possible()) stop_cb.emplace(tok, on_stop{c->weak_from_this(), c->home_, s->id});
  }
  void await_resume() noexcept { stop_cb.reset(); }
};

task<void> connection::flush() {
  if (flushing_) co_return;  // the flusher sends what we queued
  flushing_ = true;
  while (!out_.empty() && !broken_) {
    std::swap(out_, sending_);
    auto r = co_await send_bytes(s_.fd(), sending_, opts_.send_timeout);
    sending_.clear();
    if (!r) {
      log::debug("rpc client: send failed ({}); dropping the connection", r.error().message());
      fail_all(make_error_code(errc::rpc_fail));
    }
  }
  flushing_ = false;
}

task<result<std::string>> connection::call(op kind, std::string frame, io::clock::time_point deadline) {
  if (broken_) co_return fail(errc::rpc_fail);
  slot sl;
  sl.id = next_id_++;
  sl.kind = kind;
  sl.deadline = deadline;
  sl.frames_at_send = frames_received_;
  rpc::patch_id(frame, 0, sl.id);
  pending_.emplace(sl.id, &sl);
  link(&sl);
  if (sweeper_idle_) {
    sweeper_idle_ = false;
    wake_sweeper_.set();
  }
  if (out_.empty())
    out_.swap(frame);
  else
    out_.append(frame);
  // The caller sends (everything queued) unless someone already is.
  co_await flush();
  co_await slot_awaiter{this, &sl, {}};
  if (sl.ec) co_return fail(sl.ec);
  co_return std::move(sl.payload);
}

task<void> connection::receive_loop(std::shared_ptr<connection> self) {
  rpc::frame_buffer in;
  std::error_code err = make_error_code(errc::rpc_fail);
  const std::stop_token tok = stop_.get_token();
  while (!broken_) {
    auto n = co_await s_.recv(in.prepare(recv_chunk)).with_stop_token(tok);
    if (!n || *n == 0) {
      if (!n && !is_canceled(n.error())) log::debug("rpc client: recv: {}", n.error().message());
      break;
    }
    in.commit(*n);
    bool bad = false;
    for (;;) {
      auto f = in.next(opts_.limits);
      if (!f) {
        bad = true;
        break;
      }
      if (!*f) break;
      ++frames_received_;
      const rpc::header& h = (*f)->h;
      auto kind = rpc::check_response(h);
      if (!kind) {
        bad = true;
        break;
      }
      auto it = pending_.find(h.id);
      if (it == pending_.end()) continue;  // its caller gave up (deadline, cancellation)
      slot* s = it->second;
      if (!*kind) {  // error_type: the master could not decode the request; the payload is a status
        rpc::reader r((*f)->payload, opts_.limits);
        std::error_code ec = rpc::get_status(r);
        if (!r.finish() || !ec) ec = make_error_code(errc::protocol_error);
        complete(s, ec);
        continue;
      }
      if (**kind != s->kind) {
        bad = true;
        break;
      }
      s->payload.assign(reinterpret_cast<const char*>((*f)->payload.data()), (*f)->payload.size());
      complete(s, {});
    }
    if (bad) {
      log::warn("rpc client: malformed response from the master; closing the connection");
      err = make_error_code(errc::protocol_error);
      break;
    }
  }
  fail_all(err);
  stop_.request_stop();  // the sweeper too
  (void)self;
}

task<void> connection::sweep_loop(std::shared_ptr<connection> self) {
  const std::stop_token tok = stop_.get_token();
  while (!tok.stop_requested() && !broken_) {
    if (!head_) {
      sweeper_idle_ = true;
      wake_sweeper_.reset();
      auto r = co_await wake_sweeper_.wait();
      if (!r) break;
      continue;
    }
    auto now = io::clock::now();
    auto until = std::min(head_->deadline, now + max_sweep_interval);
    if (until > now) {
      auto r = co_await io::sleep_until(until);
      if (!r && is_canceled(r.error())) break;
      now = io::clock::now();
    }
    bool stalled = false;
    while (head_ && head_->deadline <= now) {
      stalled = stalled || head_->frames_at_send == frames_received_;
      complete(head_, make_error_code(errc::rpc_timeout));
    }
    if (stalled && !broken_) {
      log::warn("rpc client: no response from the master within the call deadline; reconnecting");
      fail_all(make_error_code(errc::rpc_fail));
    }
  }
  (void)self;
}

}  // namespace

// --- the client ---

struct rpc_master_client::state {
  struct entry {
    std::size_t home_index = 0;
    io::reactor* home = nullptr;
    std::mutex mu;  // conn is replaced on the home reactor and read by the destructor
    std::shared_ptr<connection> conn;
    async_mutex connecting;  // one connect at a time per entry
  };

  io::address master;
  rpc_client_options opts;
  std::unique_ptr<io::reactor_pool> own_pool;
  io::reactor_pool* pool = nullptr;
  std::vector<std::unique_ptr<entry>> entries;
  std::atomic<std::size_t> next{0};
  // Shared with the connections, which may outlive this state by a little (their loops end after
  // close): held by a shared_ptr so a late break never writes freed memory.
  std::shared_ptr<std::atomic<std::uint64_t>> breaks = std::make_shared<std::atomic<std::uint64_t>>(0);

  std::shared_ptr<connection> current(entry& e) {
    std::lock_guard lk(e.mu);
    return e.conn;
  }

  // An entry for a call from the calling thread: one homed on this reactor if there is one.
  entry& pick() noexcept {
    io::reactor* here = io::reactor::current();
    std::size_t n = entries.size();
    std::size_t start = next.fetch_add(1, std::memory_order_relaxed);
    if (here) {
      for (std::size_t k = 0; k < n; ++k) {
        entry& e = *entries[(start + k) % n];
        if (e.home == here) return e;
      }
    }
    return *entries[start % n];
  }

  // Home reactor: the entry's connection, (re)connecting if it has none or a broken one.
  task<result<std::shared_ptr<connection>>> connected(entry& e, io::clock::time_point deadline) {
    if (auto c = current(e); c && !c->broken()) co_return c;
    auto guard = co_await e.connecting.lock();
    if (!guard) co_return fail(guard.error());
    if (auto c = current(e); c && !c->broken()) co_return c;  // another call connected meanwhile
    auto left = std::min<io::clock::duration>(deadline - io::clock::now(), opts.connect_timeout);
    if (left <= io::clock::duration::zero()) co_return fail(errc::rpc_timeout);
    auto s = co_await io::tcp_stream::connect(master).with_timeout(left);
    if (!s) {
      if (is_canceled(s.error())) co_return fail(s.error());
      log::debug("rpc client: connect to {}: {}", master.to_string(), s.error().message());
      co_return fail(is_timeout(s.error()) ? errc::rpc_timeout : errc::rpc_fail);
    }
    auto c = std::make_shared<connection>(*e.home, std::move(*s), opts, breaks);
    {
      std::lock_guard lk(e.mu);
      if (e.conn) e.conn->close();
      e.conn = c;
    }
    pool->spawn(e.home_index, c->receive_loop(c).with_stop_token(std::stop_token{}));
    pool->spawn(e.home_index, c->sweep_loop(c).with_stop_token(c->stop_token()));
    co_return c;
  }

  task<result<std::string>> call_on(entry& e, op kind, std::string frame, io::clock::time_point deadline) {
    auto c = co_await connected(e, deadline);
    if (!c) co_return fail(c.error());
    co_return co_await (*c)->call(kind, std::move(frame), deadline);
  }

  // Any thread: sends a request frame and returns the response payload, on the caller's executor.
  task<result<std::string>> call(op kind, std::string frame) {
    const auto deadline = io::clock::now() + opts.call_timeout;
    coro::executor* caller = coro::current_executor();
    entry& e = pick();
    if (!e.home->running_in_this_thread()) co_await e.home->schedule();
    auto r = co_await call_on(e, kind, std::move(frame), deadline);
    co_await hop_to{caller};
    co_return r;
  }

  task<result<void>> connect_entry(entry& e, io::clock::time_point deadline) {
    coro::executor* caller = coro::current_executor();
    if (!e.home->running_in_this_thread()) co_await e.home->schedule();
    auto c = co_await connected(e, deadline);
    co_await hop_to{caller};
    if (!c) co_return fail(c.error());
    co_return ok();
  }
};

rpc_master_client::rpc_master_client(std::unique_ptr<state> s) noexcept : s_(std::move(s)) {}

result<std::unique_ptr<rpc_master_client>> rpc_master_client::create(std::string_view master,
                                                                     rpc_client_options opts,
                                                                     io::reactor_pool* pool) {
  if (opts.connections == 0 || (!pool && opts.threads == 0)) return fail(errc::invalid_params);
  auto at = io::address::parse(master);
  if (!at) return fail(at.error());
  auto st = std::make_unique<state>();
  st->master = *at;
  st->opts = opts;
  if (!pool) {
    st->own_pool = std::make_unique<io::reactor_pool>(opts.threads);
    pool = st->own_pool.get();
  }
  st->pool = pool;
  for (std::size_t i = 0; i < opts.connections; ++i) {
    auto e = std::make_unique<state::entry>();
    e->home_index = i % pool->size();
    e->home = &pool->at(e->home_index);
    st->entries.push_back(std::move(e));
  }
  return std::unique_ptr<rpc_master_client>(new rpc_master_client(std::move(st)));
}

rpc_master_client::~rpc_master_client() {
  for (auto& e : s_->entries)
    if (auto c = s_->current(*e)) c->close();
  // The connections' loops end on their own once closed; our own pool waits for them.
  if (s_->own_pool) s_->own_pool->stop_and_join();
}

task<result<void>> rpc_master_client::connect() {
  const auto deadline = io::clock::now() + s_->opts.connect_timeout;
  for (auto& e : s_->entries) {
    auto r = co_await s_->connect_entry(*e, deadline);
    if (!r) co_return r;
  }
  co_return ok();
}

const io::address& rpc_master_client::master_address() const noexcept { return s_->master; }

std::size_t rpc_master_client::open_connections() const {
  std::size_t n = 0;
  for (auto& e : s_->entries)
    if (auto c = s_->current(*e); c && !c->broken()) ++n;
  return n;
}

io::reactor_pool& rpc_master_client::pool() noexcept { return *s_->pool; }

std::uint64_t rpc_master_client::link_epoch() const noexcept { return s_->breaks->load(std::memory_order_acquire); }

template <op O>
task<result<rpc::response_t<O>>> rpc_master_client::invoke(rpc::request_t<O> req) {
  std::string frame;
  rpc::append_request<O>(frame, 0, req);
  auto payload = co_await s_->call(O, std::move(frame));
  if (!payload) co_return fail(payload.error());
  co_return rpc::decode_response<O>(std::as_bytes(std::span(*payload)), s_->opts.limits);
}

template <op O, class T>
task<std::vector<result<T>>> rpc_master_client::invoke_batch(rpc::request_t<O> req, std::size_t n) {
  auto r = co_await invoke<O>(std::move(req));
  if (!r) co_return std::vector<result<T>>(n, result<T>(fail(r.error())));
  if (r->size() != n) co_return std::vector<result<T>>(n, result<T>(fail(errc::protocol_error)));
  co_return std::move(*r);
}

task<result<void>> rpc_master_client::mount_segment(client_id client, segment_info seg) {
  return invoke<op::mount_segment>({std::move(client), std::move(seg)});
}
task<result<void>> rpc_master_client::unmount_segment(client_id client, std::string segment_name) {
  return invoke<op::unmount_segment>({std::move(client), std::move(segment_name)});
}
task<result<ping_result>> rpc_master_client::ping(client_id client) {
  return invoke<op::ping>({std::move(client)});
}
task<result<std::vector<replica_desc>>> rpc_master_client::put_start(client_id client, std::string key,
                                                                   std::uint64_t size, replicate_config cfg) {
  return invoke<op::put_start>({std::move(client), std::move(key), size, std::move(cfg)});
}
task<result<void>> rpc_master_client::put_end(client_id client, std::string key) {
  return invoke<op::put_end>({std::move(client), std::move(key)});
}
task<result<void>> rpc_master_client::put_revoke(client_id client, std::string key) {
  return invoke<op::put_revoke>({std::move(client), std::move(key)});
}
task<result<std::vector<replica_desc>>> rpc_master_client::upsert_start(client_id client, std::string key,
                                                                      std::uint64_t size, replicate_config cfg) {
  return invoke<op::upsert_start>({std::move(client), std::move(key), size, std::move(cfg)});
}
task<std::vector<result<std::vector<replica_desc>>>> rpc_master_client::batch_put_start(
    client_id client, std::vector<std::string> keys, std::vector<std::uint64_t> sizes, replicate_config cfg) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_put_start, std::vector<replica_desc>>(
      {std::move(client), std::move(keys), std::move(sizes), std::move(cfg)}, n);
}
task<std::vector<result<void>>> rpc_master_client::batch_put_end(client_id client, std::vector<std::string> keys) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_put_end, void>({std::move(client), std::move(keys)}, n);
}
task<std::vector<result<void>>> rpc_master_client::batch_put_revoke(client_id client,
                                                                    std::vector<std::string> keys) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_put_revoke, void>({std::move(client), std::move(keys)}, n);
}
task<std::vector<result<void>>> rpc_master_client::batch_put_commit(client_id client,
                                                                    std::vector<std::string> placeholders,
                                                                    std::vector<std::string> keys) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_put_commit, void>({std::move(client), std::move(placeholders), std::move(keys)}, n);
}
task<result<replica_list>> rpc_master_client::get_replica_list(std::string key) {
  return invoke<op::get_replica_list>({std::move(key)});
}
task<std::vector<result<replica_list>>> rpc_master_client::batch_get_replica_list(std::vector<std::string> keys) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_get_replica_list, replica_list>({std::move(keys)}, n);
}
task<result<match_result>> rpc_master_client::match_prefix(std::vector<std::string> keys) {
  return invoke<op::match_prefix>({std::move(keys)});
}
task<result<bool>> rpc_master_client::exist(std::string key) { return invoke<op::exist>({std::move(key)}); }
task<std::vector<result<bool>>> rpc_master_client::batch_exist(std::vector<std::string> keys) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_exist, bool>({std::move(keys)}, n);
}
task<result<std::uint64_t>> rpc_master_client::get_size(std::string key) {
  return invoke<op::get_size>({std::move(key)});
}
task<result<void>> rpc_master_client::remove(std::string key, bool force) {
  return invoke<op::remove>({std::move(key), force});
}
task<std::vector<result<void>>> rpc_master_client::batch_remove(std::vector<std::string> keys, bool force) {
  std::size_t n = keys.size();
  return invoke_batch<op::batch_remove, void>({std::move(keys), force}, n);
}
task<result<std::uint64_t>> rpc_master_client::remove_all(bool force) {
  return invoke<op::remove_all>({force});
}

}  // namespace yutu::store
