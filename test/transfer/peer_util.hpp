// Helpers shared by the transfer tests: data patterns, checksums, and a child target process.
#pragma once

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

extern char** environ;

namespace yutu::test {

// Byte i of pattern `seed`; unaligned offsets and lengths still produce distinct checksums.
inline std::byte pattern_byte(std::uint64_t i, unsigned seed) {
  std::uint64_t x = i * 0x9E3779B97F4A7C15ull + seed * 0xBF58476D1CE4E5B9ull;
  x ^= x >> 29;
  return static_cast<std::byte>(x & 0xff);
}
inline void fill_pattern(std::byte* p, std::size_t n, unsigned seed, std::uint64_t base = 0) {
  for (std::size_t i = 0; i < n; ++i) p[i] = pattern_byte(base + i, seed);
}
inline std::uint64_t fnv1a(const std::byte* p, std::size_t n) {
  std::uint64_t h = 1469598103934665603ull;
  for (std::size_t i = 0; i < n; ++i) {
    h ^= static_cast<std::uint8_t>(p[i]);
    h *= 1099511628211ull;
  }
  return h;
}

// A child process speaking the peer_main protocol over pipes.
class child_peer {
 public:
  child_peer() = default;
  child_peer(const child_peer&) = delete;
  child_peer& operator=(const child_peer&) = delete;
  ~child_peer() { kill_now(); }

  bool start(const std::string& exe, const std::vector<std::string>& args) {
    int in[2], out[2];
    if (::pipe(in) != 0 || ::pipe(out) != 0) return false;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_adddup2(&fa, in[0], 0);
    posix_spawn_file_actions_adddup2(&fa, out[1], 1);
    posix_spawn_file_actions_addclose(&fa, in[1]);
    posix_spawn_file_actions_addclose(&fa, out[0]);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(exe.c_str()));
    for (auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    int rc = posix_spawn(&pid_, exe.c_str(), &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    ::close(in[0]);
    ::close(out[1]);
    if (rc != 0) {
      ::close(in[1]);
      ::close(out[0]);
      pid_ = -1;
      return false;
    }
    to_ = ::fdopen(in[1], "w");
    from_ = ::fdopen(out[0], "r");
    hello_ = line();
    return !hello_.empty() && hello_.find("\"error\"") == std::string::npos;
  }

  const std::string& hello() const { return hello_; }
  pid_t pid() const { return pid_; }

  std::string command(const std::string& c) {
    std::fprintf(to_, "%s\n", c.c_str());
    std::fflush(to_);
    return line();
  }
  std::string line() {
    std::string s;
    int ch;
    while (from_ && (ch = std::fgetc(from_)) != EOF && ch != '\n') s.push_back(static_cast<char>(ch));
    return s;
  }
  void kill_now() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
      pid_ = -1;
    }
    if (to_) std::fclose(to_), to_ = nullptr;
    if (from_) std::fclose(from_), from_ = nullptr;
  }
  int exit_cleanly() {
    int status = -1;
    if (pid_ > 0) {
      command("exit");
      ::waitpid(pid_, &status, 0);
      pid_ = -1;
    }
    if (to_) std::fclose(to_), to_ = nullptr;
    if (from_) std::fclose(from_), from_ = nullptr;
    return status;
  }

 private:
  pid_t pid_ = -1;
  std::FILE* to_ = nullptr;
  std::FILE* from_ = nullptr;
  std::string hello_;
};

}  // namespace yutu::test
