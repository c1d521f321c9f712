#!/usr/bin/env bash
# Installs the Debian 12 packages yutu builds, tests and runs with, if any is missing.
# Idempotent and non-interactive; uses sudo only when not already root.
set -euo pipefail

packages=(
  meson ninja-build pkg-config g++
  liburing-dev libfmt-dev nlohmann-json3-dev doctest-dev libboost1.81-dev libexpected-dev
  clang-16 libclang-rt-16-dev
  iperf3 etcd-server etcd-client
  libibverbs-dev rdma-core iproute2
  python3 python3-pybind11 python3-pytest python3-numpy
)

missing=()
for p in "${packages[@]}"; do
  # dpkg -s also succeeds for removed-but-not-purged packages; require "install ok installed".
  if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)" != "install ok installed" ]]; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  echo "deps.sh: all ${#packages[@]} packages present"
  exit 0
fi

echo "deps.sh: installing ${missing[*]}"
sudo=()
if [[ "$(id -u)" != 0 ]]; then
  if ! command -v sudo >/dev/null; then
    echo "deps.sh: not root and no sudo; install as root: apt-get install ${missing[*]}" >&2
    exit 1
  fi
  sudo=(sudo -n)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
  apt-get install -y -q --no-install-recommends "${missing[@]}"
