// A child process for the tools that start a store on one machine (yutu-cluster) and for the tests
// that do the same: start a binary, wait for its "ready" line on stdout, signal it, stop it.
//
// No orphans, whatever happens to the parent: the child asks the kernel for SIGKILL when the thread
// that started it dies (PR_SET_PDEATHSIG, so also when the parent is SIGKILLed), the destructor stops
// it (SIGTERM, then SIGKILL after a grace period), and an atexit hook kills any child still running
// when the parent calls exit(). Not part of the library: nothing here is installed.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace yutu::tools {

class child_process {
 public:
  child_process() = default;
  child_process(const child_process&) = delete;
  child_process& operator=(const child_process&) = delete;
  ~child_process() { stop(std::chrono::milliseconds(3000)); }

  // Starts `exe` with `args`; stdout is read through a pipe, stderr is inherited.
  bool start(const std::string& exe, const std::vector<std::string>& args) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return false;
    std::vector<std::string> all{exe};
    all.insert(all.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : all) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t parent = ::getpid();
    registry().install();
    pid_t pid = ::fork();
    if (pid < 0) {
      ::close(out[0]);
      ::close(out[1]);
      return false;
    }
    if (pid == 0) {
      // Only async-signal-safe calls between fork and exec.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(127);
      ::dup2(out[1], 1);
      sigset_t none;
      sigemptyset(&none);
      ::sigprocmask(SIG_SETMASK, &none, nullptr);
      ::execv(exe.c_str(), argv.data());
      ::_exit(127);
    }
    ::close(out[1]);
    pid_ = pid;
    fd_ = out[0];
    name_ = exe.substr(exe.rfind('/') + 1);
    registry().add(pid);
    return true;
  }

  // Reads stdout until a line containing `marker`; returns it, or "" on EOF or after `timeout`.
  std::string wait_for_line(std::string_view marker, std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
      auto nl = buf_.find('\n');
      while (nl != std::string::npos) {
        std::string line = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        lines_.push_back(line);
        if (line.find(marker) != std::string::npos) return line;
        nl = buf_.find('\n');
      }
      auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || fd_ < 0) return {};
      pollfd p{fd_, POLLIN, 0};
      int n = ::poll(&p, 1, static_cast<int>(left.count()));
      if (n <= 0) continue;
      char tmp[4096];
      ssize_t got = ::read(fd_, tmp, sizeof tmp);
      if (got <= 0) return {};
      buf_.append(tmp, static_cast<std::size_t>(got));
    }
  }

  // From now on stdout is read (and dropped, or copied to stderr with a prefix) by a thread, so the
  // child never blocks on a full pipe.
  void drain(bool forward) {
    if (fd_ < 0 || drainer_.joinable()) return;
    drainer_ = std::thread([fd = fd_, forward, prefix = name_] {
      char tmp[4096];
      ssize_t got;
      while ((got = ::read(fd, tmp, sizeof tmp)) > 0)
        if (forward) std::fprintf(stderr, "[%s] %.*s", prefix.c_str(), static_cast<int>(got), tmp);
    });
  }

  pid_t pid() const noexcept { return pid_; }
  const std::string& name() const noexcept { return name_; }
  const std::vector<std::string>& lines() const noexcept { return lines_; }

  bool running() {
    if (pid_ <= 0) return false;
    int st = 0;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      reaped(st);
      return false;
    }
    return true;
  }
  void signal(int sig) {
    if (pid_ > 0) ::kill(pid_, sig);
  }

  // SIGTERM, then SIGKILL if it has not exited within `grace`. The waitpid status (-1 if never started).
  int stop(std::chrono::milliseconds grace = std::chrono::milliseconds(5000)) {
    if (pid_ > 0) {
      ::kill(pid_, SIGTERM);
      wait_for_exit(grace);
      if (pid_ > 0) {
        ::kill(pid_, SIGKILL);
        int st = 0;
        ::waitpid(pid_, &st, 0);
        reaped(st);
      }
    }
    finish_io();
    return status_;
  }
  // SIGKILL now (a crash, as far as the store can tell).
  int kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      int st = 0;
      ::waitpid(pid_, &st, 0);
      reaped(st);
    }
    return status_;
  }
  // Waits for an exit without signalling; true if it exited.
  bool wait_for_exit(std::chrono::milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    while (pid_ > 0) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        reaped(st);
        break;
      }
      if (std::chrono::steady_clock::now() >= deadline) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return true;
  }
  // True when the child exited on its own with status 0 (or on the SIGTERM we sent, cleanly).
  bool exited_cleanly() const noexcept { return WIFEXITED(status_) && WEXITSTATUS(status_) == 0; }
  int status() const noexcept { return status_; }

 private:
  struct registry_t {
    std::mutex mu;
    std::set<pid_t> pids;
    bool installed = false;
    void install() {
      std::lock_guard lk(mu);
      if (installed) return;
      installed = true;
      std::atexit([] {
        auto& r = registry();
        std::lock_guard lk2(r.mu);
        for (pid_t p : r.pids) ::kill(p, SIGKILL);
      });
    }
    void add(pid_t p) {
      std::lock_guard lk(mu);
      pids.insert(p);
    }
    void remove(pid_t p) {
      std::lock_guard lk(mu);
      pids.erase(p);
    }
  };
  static registry_t& registry() {
    static registry_t r;
    return r;
  }

  void reaped(int st) {
    status_ = st;
    registry().remove(pid_);
    pid_ = -1;
  }
  void finish_io() {
    if (drainer_.joinable()) drainer_.join();  // the child is gone: EOF
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }

  pid_t pid_ = -1;
  int fd_ = -1;
  int status_ = -1;
  std::string name_;
  std::string buf_;
  std::vector<std::string> lines_;
  std::thread drainer_;
};

// The directory of the running executable ("" if unknown): sibling binaries live there.
inline std::string self_dir() {
  char buf[4096];
  ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
  if (n <= 0) return {};
  std::string p(buf, static_cast<std::size_t>(n));
  return p.substr(0, p.rfind('/'));
}

}  // namespace yutu::tools
