// Private to the engine: a pipelined TCP connection to one peer (initiator side).
//
// Requests are framed (wire.hpp) and queued; one sender coroutine per connection writes every queued
// frame in one gathered sendmsg (many 64 KiB frames leave as one large write, which the kernel moves
// far faster than one call per frame: docs/performance.md). Responses come back in the same order, so
// the same FIFO of slots matches them without ids in a map. One receiver coroutine per connection
// reads responses and, for READs, receives the payload straight into the caller's memory. A caller whose batch is cancelled abandons its slot: the slot stays in the FIFO
// (owned by the connection, never by the caller's frame) and a late READ payload is drained into
// scratch, so cancellation never lets bytes land in memory the caller may already have freed.
// Everything here runs on the connection's home reactor, except the stop callback, which only posts.
#pragma once

#include <sys/socket.h>
#include <sys/uio.h>

#include <array>
#include <atomic>
#include <coroutine>
#include <memory>
#include <optional>
#include <span>
#include <stop_token>
#include <string>
#include <vector>

#include "yutu/io/op.hpp"
#include "yutu/io/reactor.hpp"
#include "yutu/io/socket.hpp"
#include "yutu/transfer/wire.hpp"

namespace yutu::transfer::detail {

// TCP keepalive on the engine's connections, both sides: a peer whose host vanished (no FIN, no
// RST) is detected after about idle + interval * count = 16 s of silence.
inline constexpr int keepalive_idle_s = 10;
inline constexpr int keepalive_interval_s = 2;
inline constexpr int keepalive_count = 3;

// Sends head (one or more encoded headers) + payload completely (handles short writes).
task<result<void>> send_frame(int fd, std::span<const std::byte> head, std::span<const std::byte> payload);

// Receives the rest of buf, of which `got` bytes are already there, through the ring; premature
// EOF is errc::closed.
task<result<void>> recv_rest(io::tcp_stream& s, std::span<std::byte> buf, std::size_t got);
inline task<result<void>> recv_all(io::tcp_stream& s, std::span<std::byte> buf) { return recv_rest(s, buf, 0); }
// Receives buf completely; bytes already queued behind it land in `next` in the same call (their
// count is the result; 0 when buf had to be waited for).
task<result<std::size_t>> recv_with_next(io::tcp_stream& s, std::span<std::byte> buf, std::span<std::byte> next);
// Reads and discards n bytes.
task<result<void>> drain(io::tcp_stream& s, std::uint64_t n);

// Reads frames from a stream through a small buffer: a run of pipelined headers (acks, READ
// requests) costs one receive, and a payload is received straight into its destination, except the
// first bytes that were read ahead with its header; the bytes that follow a payload (the next
// header) come in the same call. Not cancellable by a caller's token: a half-read frame would
// desynchronise the stream, so connections are ended by shutdown() instead.
class frame_reader {
 public:
  explicit frame_reader(io::tcp_stream& s) noexcept : s_(&s) {}
  // Whether a whole header is already buffered (reading it will not wait).
  bool has_header() const noexcept { return end_ - pos_ >= wire::header_size; }
  task<result<void>> read_header(wire::header_bytes& hb);
  // n bytes into dest; dest nullptr: read and discard them.
  task<result<void>> read_payload(std::byte* dest, std::uint64_t n);

 private:
  // Headers taken from the buffer in a row, without waiting for the socket (see read_header).
  static constexpr unsigned max_buffered_run = 64;

  io::tcp_stream* s_;
  std::array<std::byte, 4096> buf_;
  std::size_t pos_ = 0, end_ = 0;
  unsigned buffered_run_ = 0;
};

class client_conn : public std::enable_shared_from_this<client_conn> {
 public:
  struct slot {
    slot* next = nullptr;
    std::atomic<int> refs{0};
    std::uint64_t id = 0;
    wire::frame_type expect{};
    std::byte* dest = nullptr;  // READ destination; nullptr once abandoned
    std::uint64_t length = 0;
    std::string* payload_out = nullptr;  // desc_resp
    std::error_code ec;
    bool done = false;
    bool receiving_payload = false;  // the receiver is writing into dest right now
    // Sending: the encoded request and its payload (the caller's memory, alive until completion).
    wire::header_bytes hdr{};
    std::span<const std::byte> payload;
    bool queued = false;    // not completely sent yet
    bool in_op = false;     // part of the ring send in flight: the kernel may still read the payload
    bool deferred = false;  // completed while in_op: resumed once that send returned
    std::coroutine_handle<> waiter;
    struct cancel_node : coro::work_item {
      slot* owner = nullptr;
    } cancel_item;
    coro::resume_item resume;
    client_conn* conn = nullptr;
  };

  // zero_copy_bytes: where to count bytes sent with SEND_ZC (null: none counted).
  client_conn(io::reactor& home, io::tcp_stream s, std::uint64_t max_payload,
              std::atomic<std::uint64_t>* zero_copy_bytes = nullptr)
      : home_(&home), s_(std::move(s)), max_payload_(max_payload), zc_bytes_(zero_copy_bytes) {}
  ~client_conn();

  io::reactor& home() const noexcept { return *home_; }
  bool broken() const noexcept { return broken_; }
  int fd() const noexcept { return s_.fd(); }

  // Starts the sender and the receiver. Call once, with the owning shared_ptr alive.
  void start(std::size_t home_index, class engine_spawner& sp);

  // Sends one request frame and awaits its response (home reactor only). For READs the payload
  // lands in `dest`; for desc_req the response payload lands in *payload_out.
  task<std::error_code> call(wire::header h, std::span<const std::byte> payload, std::byte* dest,
                             std::string* payload_out = nullptr);

  // Fails everything pending and closes the socket (home reactor only).
  void fail_all(std::error_code ec) noexcept;
  // Makes a blocked recv/send return at once, from any thread.
  void shutdown() noexcept;

  task<void> receive_loop(std::shared_ptr<client_conn> self);
  task<void> send_loop(std::shared_ptr<client_conn> self);

  // One gathered send carries at most this many frames and stops adding frames past this many bytes:
  // past about 1 MiB a larger write gains nothing, and the iovec array stays small.
  static constexpr std::size_t max_frames_per_send = 64;
  static constexpr std::size_t max_bytes_per_send = 2u << 20;

 private:
  slot* acquire_slot();
  void release(slot* s) noexcept;
  void complete(slot* s, std::error_code ec) noexcept;
  void cancel(slot* s) noexcept;
  void unlink_unsent(slot* s) noexcept;
  // The sender: after its ring send returned, the frames in it may complete.
  void end_op(std::size_t nslots) noexcept;
  void advance(std::size_t sent) noexcept;
  struct slot_awaiter;
  struct idle_awaiter;

  io::reactor* home_;
  io::tcp_stream s_;
  std::uint64_t max_payload_;
  std::atomic<std::uint64_t>* zc_bytes_;
  std::uint64_t next_id_ = 1;
  // Slots awaiting their response, in send order; send_head_ is the first not completely sent
  // (send_off_ bytes of its frame are), everything behind it is unsent.
  slot* fifo_head_ = nullptr;
  slot* fifo_tail_ = nullptr;
  slot* send_head_ = nullptr;
  std::size_t send_off_ = 0;
  std::coroutine_handle<> sender_idle_;  // the sender, parked while nothing is queued
  coro::resume_item sender_wake_;
  iovec iov_[2 * max_frames_per_send];
  slot* op_slots_[max_frames_per_send];
  frame_reader in_{s_};  // the receiver's
  slot* free_ = nullptr;
  std::size_t slots_allocated_ = 0;
  bool broken_ = false;
  std::error_code broken_ec_;
};

// How the engine lets a connection start its receiver on a reactor of the pool.
class engine_spawner {
 public:
  virtual void spawn_on(std::size_t reactor_index, task<void> t) = 0;

 protected:
  ~engine_spawner() = default;
};

}  // namespace yutu::transfer::detail
