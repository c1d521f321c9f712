#!/usr/bin/env bash
# Every check yutu has, from a fresh Debian 12 (it installs what is missing first); .ci/run calls this.
#
#   build/test-gcc    g++, debugoptimized, -Werror: all tests, examples, benchmarks built
#   build/test-asan   g++ -O0 with ASan+UBSan (leak checks on; no -Werror): all tests
#   build/test-clang  clang++-16, -Werror, libFuzzer targets: all tests
#   the consumer example (examples/consumer) built through its wrap file, and run
#   meson install --destdir, then a program built against the installed yutu.pc (g++ and clang++)
#   each fuzz target for a bounded time over its seed corpus
#   the error tables of docs/troubleshooting.md against include/yutu/error.hpp
#
# Build folders are reused between runs. It keeps going after a failure, prints one line per check,
# and ends with a summary line "N passed, N failed[, N skipped]"; the exit status is non-zero if
# anything failed.
set -uo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/deps.sh || { echo "test.sh: installing dependencies failed" >&2; exit 1; }

jobs="$(nproc)"
fuzz_seconds=20
t_start=$SECONDS
passed=0
failed=0
skipped=0
failures=()

note_pass() { passed=$((passed + 1)); echo "test.sh: PASS $1"; }
note_fail() { failed=$((failed + 1)); failures+=("$1"); echo "test.sh: FAIL $1"; }

# quiet CMD...: runs CMD, showing its output only if it fails (meson reports errors on stdout).
quiet() {
  local out
  if out="$("$@" 2>&1)"; then return 0; fi
  printf '%s\n' "$out" | tail -n 30
  return 1
}

# setup DIR [meson options...]: configures DIR, or updates the options of an existing one.
setup() {
  local dir="$1"
  shift
  if [[ -f "$dir/meson-private/coredata.dat" && -f "$dir/build.ninja" ]]; then
    quiet meson configure "$dir" "$@" && return 0
    echo "test.sh: $dir: could not reuse it; configuring afresh"
    quiet meson setup --wipe "$dir" "$@"
  elif [[ -f "$dir/meson-private/coredata.dat" ]]; then
    quiet meson setup --wipe "$dir" "$@"  # a setup that failed half-way
  else
    quiet meson setup "$dir" "$@"
  fi
}

# Adds the results of DIR's last `meson test` run (meson-logs/testlog.json) to the totals.
tally() {
  local dir="$1" counts p f s
  counts="$(python3 - "$dir/meson-logs/testlog.json" <<'EOF'
import json, re, sys
p = f = s = cases = 0
names = []
try:
    lines = open(sys.argv[1]).read().splitlines()
except OSError:
    lines = []
for line in lines:
    if not line.strip():
        continue
    t = json.loads(line)
    r = t.get("result", "")
    if r in ("OK", "EXPECTEDFAIL"):
        p += 1
    elif r == "SKIP":
        s += 1
    else:
        f += 1
        names.append(t.get("name", "?"))
    m = re.search(r"test cases:\s*(\d+)", t.get("stdout") or "")
    if m:
        cases += int(m.group(1))
print(p, f, s, cases, ",".join(names))
EOF
)"
  read -r p f s cases names <<<"$counts"
  passed=$((passed + p))
  failed=$((failed + f))
  skipped=$((skipped + s))
  [[ -n "${names:-}" ]] && failures+=("$(basename "$dir"): ${names//,/ }")
  echo "test.sh: $(basename "$dir"): $p passed, $f failed, $s skipped (meson tests; $cases doctest cases)"
}

# build_and_test NAME [meson options...], with CXX and sanitizer options from the environment.
build_and_test() {
  local dir="build/$1" t0=$SECONDS
  shift
  echo "=== $dir"
  if ! setup "$dir" "$@"; then
    note_fail "$dir: meson setup"
    return
  fi
  if ! ninja -C "$dir" -j "$jobs"; then
    note_fail "$dir: build"
    return
  fi
  rm -f "$dir/meson-logs/testlog.json"
  meson test -C "$dir" --print-errorlogs --num-processes "$jobs" "${mtest_args[@]}"
  if [[ -f "$dir/meson-logs/testlog.json" ]]; then
    tally "$dir"
  else
    note_fail "$dir: meson test did not run"
  fi
  echo "test.sh: $dir took $((SECONDS - t0)) s"
}

common=(-Dwerror=true -Dtests=enabled)

mtest_args=()
build_and_test test-gcc -Dbuildtype=debugoptimized "${common[@]}"

mtest_args=(--timeout-multiplier 3)
# Without -Werror: GCC's manual advises against combining it with sanitizers, whose instrumentation
# yields false -Wmaybe-uninitialized (seen inside Boost.Beast). test-gcc and test-clang keep -Werror.
# -O0 (buildtype debug): g++ compiles the instrumented code 4x faster than at -O2 (10 s against 45 s
# for test/store/cluster_test.cpp), which is most of this script's time; the sanitizers check the
# same things, and the optimised code is what test-gcc and test-clang run.
ASAN_OPTIONS=halt_on_error=1:print_stacktrace=1:detect_leaks=1 \
UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  build_and_test test-asan -Dbuildtype=debug -Dwerror=false -Dtests=enabled \
  -Db_sanitize=address,undefined -Db_lundef=false -Dbenchmarks=disabled

mtest_args=()
CXX=clang++-16 build_and_test test-clang -Dbuildtype=debugoptimized "${common[@]}" \
  -Dfuzz=enabled -Dbenchmarks=disabled

# --- the consumer example, through its wrap file, as a user's project would build it ---
echo "=== examples/consumer"
t0=$SECONDS
if [[ -n "$(git status --porcelain 2>/dev/null)" ]]; then
  echo "test.sh: note: the consumer builds yutu's committed HEAD (its wrap clones this repository);" \
    "uncommitted changes are not in it"
fi
# A fresh clone every time: the wrap pins HEAD, and an old clone would be stale.
rm -rf examples/consumer/subprojects/yutu build/consumer
if quiet meson setup build/consumer examples/consumer -Dwerror=true --force-fallback-for=yutu &&
  ninja -C build/consumer -j "$jobs" && build/consumer/consumer; then
  note_pass "consumer example (wrap + dependency('yutu'))"
else
  note_fail "consumer example (wrap + dependency('yutu'))"
fi
echo "test.sh: consumer took $((SECONDS - t0)) s"

# --- install into a staging folder and build against the installed pkg-config file ---
echo "=== install + pkg-config"
dest="$(mktemp -d)"
trap 'rm -rf "$dest"' EXIT
if quiet meson install -C build/test-gcc --destdir "$dest" --no-rebuild; then
  pc="$(find "$dest" -name yutu.pc | head -n1)"
  if [[ -z "$pc" ]]; then
    note_fail "install: no yutu.pc installed"
  else
    # yutu.pc names its final prefix (/usr/local); point a copy at the staging folder instead.
    prefix="$(sed -n 's/^prefix=//p' "$pc")"
    mkdir -p "$dest/pc"
    sed "s|^prefix=.*|prefix=$dest$prefix|" "$pc" >"$dest/pc/yutu.pc"
    for cxx in g++ clang++-16; do
      if PKG_CONFIG_PATH="$dest/pc" pkg-config --exists yutu &&
        $cxx -std=c++20 -Wall -Wextra -Wpedantic -Werror \
          $(PKG_CONFIG_PATH="$dest/pc" pkg-config --cflags yutu) scripts/install_check.cpp \
          $(PKG_CONFIG_PATH="$dest/pc" pkg-config --libs yutu) -o "$dest/install_check" &&
        "$dest/install_check"; then
        note_pass "installed yutu.pc with $cxx"
      else
        note_fail "installed yutu.pc with $cxx"
      fi
    done
  fi
else
  note_fail "meson install --destdir"
fi

# --- fuzz targets, a bounded time each ---
echo "=== fuzz (${fuzz_seconds} s per target)"
shopt -s nullglob
fuzzers=(build/test-clang/fuzz/fuzz_*)
for exe in "${fuzzers[@]}"; do
  [[ -f "$exe" && -x "$exe" ]] || continue
  name="$(basename "$exe")"
  name="${name#fuzz_}"
  corpus="build/fuzz-corpus/$name"
  artifacts="build/fuzz-artifacts/$name"
  mkdir -p "$corpus" "$artifacts"
  seeds=()
  [[ -d "fuzz/corpus/$name" ]] && seeds=("fuzz/corpus/$name")
  # New inputs go to build/fuzz-corpus (the first folder); the seeds in fuzz/corpus are only read.
  if "$exe" -max_total_time="$fuzz_seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$corpus" "${seeds[@]}" >"build/fuzz-$name.log" 2>&1; then
    note_pass "fuzz $name ($(grep -o 'Done [0-9]* runs' "build/fuzz-$name.log" | tail -n1))"
  else
    tail -n 40 "build/fuzz-$name.log"
    note_fail "fuzz $name (crash input in $artifacts/)"
  fi
done
if ((${#fuzzers[@]} == 0)); then
  note_fail "fuzz: no targets built in build/test-clang/fuzz"
fi

# --- documentation generated from the sources ---
echo "=== docs"
if python3 scripts/error_table.py --check docs/troubleshooting.md; then
  note_pass "docs/troubleshooting.md error tables match include/yutu/error.hpp"
else
  note_fail "docs/troubleshooting.md error tables match include/yutu/error.hpp"
fi

echo "=== summary ($((SECONDS - t_start)) s)"
for f in "${failures[@]}"; do echo "test.sh: failed: $f"; done
summary="$passed passed, $failed failed"
((skipped > 0)) && summary+=", $skipped skipped"
echo "$summary"
exit $((failed == 0 ? 0 : 1))
