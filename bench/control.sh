#!/usr/bin/env bash
# Control-plane benchmark: meshd (3 managers) against etcd (3 members), side by side.
#
#   bash bench/control.sh [mesh-bench raft options, e.g. --duration 10 --clients 64 --runs 3]
#
# As root on Debian 12 (or Ubuntu). Installs what it needs (the lab's tools and a Rust
# toolchain through scripts/deps.sh, and Debian's etcd-server), builds meshd and mesh-bench
# in release mode, runs both systems on labs of network namespaces and prints the table.
# Everything it starts is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

if ! dpkg-query -W -f='${Status}' etcd-server 2>/dev/null | grep -q "install ok installed"; then
    echo "installing: etcd-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
    # The package's own service is not used (the benchmark runs its own members): if the
    # install started it, stop it so it takes no CPU during the run.
    if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
        systemctl disable --now etcd >/dev/null 2>&1 || true
    fi
fi

target="${CARGO_TARGET_DIR:-target}"
echo "building meshd and mesh-bench (release) in $target"
cargo build --release -p meshd -p mesh-bench --bin meshd --bin mesh-bench

export MESHD_BIN="$target/release/meshd"
# The source revision, printed next to meshd's version ("+changes": uncommitted changes).
if rev="$(git rev-parse --short HEAD 2>/dev/null)"; then
    git diff --quiet HEAD -- crates Cargo.lock 2>/dev/null || rev="$rev+changes"
    export MESH_BENCH_REVISION="$rev"
fi
exec "$target/release/mesh-bench" raft "$@"
