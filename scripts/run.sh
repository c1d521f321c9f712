#!/usr/bin/env bash
# The main job: a release build of yutu, its reactor benchmark, the store on one machine (yutu-cluster),
# then every example program.
# Self-sufficient on a fresh Debian 12: it installs what is missing first (scripts/deps.sh).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

bash scripts/deps.sh

dir=build/release
opts=(-Dbuildtype=release -Dtests=disabled)  # the tests are scripts/test.sh's job
if [[ -f "$dir/meson-private/coredata.dat" ]]; then
  meson configure "$dir" "${opts[@]}" >/dev/null
else
  meson setup "$dir" "${opts[@]}" >/dev/null
fi
ninja -C "$dir" -j "$(nproc)"

status=0
echo "=== bench/reactor_bench"
if [[ -x "$dir/bench/reactor_bench" ]]; then
  "$dir/bench/reactor_bench" || { echo "run.sh: reactor_bench failed" >&2; status=1; }
else
  echo "run.sh: $dir/bench/reactor_bench is missing (not written yet, or -Dbenchmarks=disabled)"
fi

# The store on one machine: yutu-metadata, yutu-master and two yutu-node processes on loopback, and a
# KVCache workload (the FAST'25 conversation trace when ../shared/traces has it) through a client.
echo "=== yutu-cluster"
"$dir/yutu-cluster" --duration 20 || { echo "run.sh: yutu-cluster failed" >&2; status=1; }

# The examples are the executables examples/meson.build defines; meson knows which those are.
mapfile -t examples < <(meson introspect "$dir" --targets | python3 -c '
import json, sys
for t in json.load(sys.stdin):
    if t["type"] == "executable" and t["defined_in"].endswith("examples/meson.build"):
        print(t["filename"][0])
')
for exe in "${examples[@]}"; do
  echo "=== examples/$(basename "$exe")"
  "$exe" || { echo "run.sh: $(basename "$exe") failed" >&2; status=1; }
done
exit "$status"
