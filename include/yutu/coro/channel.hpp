// channel<T>: a bounded multi-producer, multi-consumer queue between coroutines, with back-pressure.
//
// send() waits while the buffer is full; recv() waits while it is empty. A value sent while a
// receiver waits goes straight to that receiver; a receiver that frees a slot pulls in the longest
// waiting sender's value, so order is FIFO among senders. Capacity 0 is a rendezvous: send() completes
// only when a receiver takes the value (try_send succeeds only if a receiver is waiting).
//
// close() is final: later sends fail with errc::closed, and so do the senders still waiting (their
// values are dropped, not delivered). Receivers first drain what is buffered, then get errc::closed.
// Both waits end with operation_canceled when the awaiting task's stop token fires (a cancelled send
// delivers nothing). Any thread may send, receive or close; a waiter resumes on the executor it
// suspended on (see detail/waiter.hpp). Values are moved, never copied; T's move must not throw,
// because it runs under the channel's lock. The ring buffer is allocated once, at construction.
//
//   while (auto v = co_await ch.recv()) consume(std::move(*v));   // ends with errc::closed
#pragma once

#include <cassert>
#include <coroutine>
#include <cstddef>
#include <memory>
#include <mutex>
#include <optional>
#include <system_error>
#include <type_traits>
#include <utility>

#include "yutu/coro/detail/waiter.hpp"
#include "yutu/error.hpp"

namespace yutu::coro {

template <class T>
class channel {
  static_assert(std::is_nothrow_move_constructible_v<T>, "channel<T> moves values under its lock");

 public:
  explicit channel(std::size_t capacity)
      : capacity_(capacity), ring_(capacity ? std::make_unique<std::optional<T>[]>(capacity) : nullptr) {}
  channel(const channel&) = delete;
  channel& operator=(const channel&) = delete;
  ~channel() {
    assert(senders_.empty() && receivers_.empty() && "channel destroyed while tasks wait on it");
  }

  std::size_t capacity() const noexcept { return capacity_; }
  // Buffered values (a snapshot).
  std::size_t size() const noexcept {
    std::lock_guard lock(mutex_);
    return size_;
  }
  bool is_closed() const noexcept {
    std::lock_guard lock(mutex_);
    return closed_;
  }

  // Closes the channel: fails every waiting sender, and every waiting receiver (none can wait while
  // values are buffered).
  void close() noexcept {
    detail::wake_list woken;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return;
      closed_ = true;
      woken.append_chain(senders_.take_all());
      woken.append_chain(receivers_.take_all());
    }
    woken.wake_all(make_error_code(errc::closed));
  }

  // Sends without waiting: errc::closed, or std::errc::operation_would_block when there is no room
  // (and, for capacity 0, no waiting receiver). `v` is moved from only on success.
  result<void> try_send(T&& v) noexcept {
    detail::waiter* receiver;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return fail(errc::closed);
      receiver = receivers_.pop_front();
      if (receiver) {
        static_cast<recv_awaiter*>(receiver)->slot_.emplace(std::move(v));
      } else if (size_ < capacity_) {
        push_locked(std::move(v));
        return ok();
      } else {
        return fail(std::errc::operation_would_block);
      }
    }
    receiver->wake({});
    return ok();
  }

  // Receives without waiting: errc::closed once closed and drained, else operation_would_block when
  // nothing is buffered (and no sender waits).
  result<T> try_recv() {
    detail::wake_list woken;
    std::optional<T> out;
    {
      std::lock_guard lock(mutex_);
      if (!take_locked(out, woken)) {
        if (closed_) return fail(errc::closed);
        return fail(std::errc::operation_would_block);
      }
    }
    woken.wake_all({});
    return result<T>(std::move(*out));
  }

  class send_awaiter : detail::waiter {
   public:
    send_awaiter(channel& ch, T&& v) noexcept : waiter(&cancel), ch_(&ch), value_(std::move(v)) {}

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
      begin(h);
      detail::waiter* receiver;
      {
        std::lock_guard lock(ch_->mutex_);
        if (ch_->closed_) {
          status = make_error_code(errc::closed);
          return false;
        }
        receiver = ch_->receivers_.pop_front();
        if (!receiver) {
          if (ch_->size_ < ch_->capacity_) {
            ch_->push_locked(std::move(value_));
            return false;
          }
          if (stop_already_requested()) return false;
          ch_->senders_.push_back(*this);
        } else {
          static_cast<recv_awaiter*>(receiver)->slot_.emplace(std::move(value_));
        }
      }
      if (receiver) {
        receiver->wake({});
        return false;
      }
      return arm();
    }
    // ok once the value is buffered or received; errc::closed or operation_canceled if it was not.
    result<void> await_resume() noexcept {
      if (auto ec = finish()) return fail(ec);
      return ok();
    }

   private:
    friend class channel;

    static void cancel(detail::waiter* w) noexcept {
      auto* self = static_cast<send_awaiter*>(w);
      {
        std::lock_guard lock(self->ch_->mutex_);
        if (!w->queued) return;
        self->ch_->senders_.remove(*w);
      }
      w->wake(detail::canceled_code());
    }

    channel* ch_;
    T value_;
  };

  class recv_awaiter : detail::waiter {
   public:
    explicit recv_awaiter(channel& ch) noexcept : waiter(&cancel), ch_(&ch) {}

    bool await_ready() const noexcept { return false; }
    template <class P>
    bool await_suspend(std::coroutine_handle<P> h) noexcept {
      begin(h);
      detail::wake_list woken;
      bool got;
      {
        std::lock_guard lock(ch_->mutex_);
        // Once queued, slot_ belongs to the sender that fills it: only `got` may be read after.
        got = ch_->take_locked(slot_, woken);
        if (!got) {
          if (ch_->closed_) {
            status = make_error_code(errc::closed);
            return false;
          }
          if (stop_already_requested()) return false;
          ch_->receivers_.push_back(*this);
        }
      }
      if (got) {
        woken.wake_all({});
        return false;
      }
      return arm();
    }
    // The value; errc::closed once the channel is closed and drained; operation_canceled.
    result<T> await_resume() noexcept {
      if (auto ec = finish()) return fail(ec);
      return result<T>(std::move(*slot_));
    }

   private:
    friend class channel;

    static void cancel(detail::waiter* w) noexcept {
      auto* self = static_cast<recv_awaiter*>(w);
      {
        std::lock_guard lock(self->ch_->mutex_);
        if (!w->queued) return;
        self->ch_->receivers_.remove(*w);
      }
      w->wake(detail::canceled_code());
    }

    channel* ch_;
    std::optional<T> slot_;
  };

  // `co_await ch.send(v)` -> result<void>.
  [[nodiscard]] send_awaiter send(T value) noexcept { return send_awaiter(*this, std::move(value)); }
  // `co_await ch.recv()` -> result<T>.
  [[nodiscard]] recv_awaiter recv() noexcept { return recv_awaiter(*this); }

 private:
  template <class U>
  void push_locked(U&& v) noexcept {
    ring_[(head_ + size_) % capacity_].emplace(std::forward<U>(v));
    ++size_;
  }

  // Takes the next value into `out`: from the buffer (refilling it from the longest waiting sender)
  // or, with nothing buffered, straight from a waiting sender. Senders to wake go to `woken`.
  bool take_locked(std::optional<T>& out, detail::wake_list& woken) noexcept {
    if (size_ > 0) {
      std::optional<T>& slot = ring_[head_];
      out.emplace(std::move(*slot));
      slot.reset();
      head_ = (head_ + 1) % capacity_;
      --size_;
      if (detail::waiter* s = senders_.pop_front()) {
        push_locked(std::move(static_cast<send_awaiter*>(s)->value_));
        woken.push_back(*s);
      }
      return true;
    }
    if (detail::waiter* s = senders_.pop_front()) {
      out.emplace(std::move(static_cast<send_awaiter*>(s)->value_));
      woken.push_back(*s);
      return true;
    }
    return false;
  }

  const std::size_t capacity_;
  std::unique_ptr<std::optional<T>[]> ring_;
  std::size_t head_ = 0;
  std::size_t size_ = 0;
  bool closed_ = false;
  mutable std::mutex mutex_;
  detail::waiter_queue senders_;
  detail::waiter_queue receivers_;
};

}  // namespace yutu::coro

namespace yutu {
using coro::channel;
}
