#!/usr/bin/env bash
# Overlay data-plane benchmark: the plain veth (the limit), meshd's overlay, Debian's
# wireguard-go and boringtun's own CLI, one after another on the same lab of two hosts:
# iperf3 TCP with 1 and 4 streams, small UDP datagrams received per second, the machine's
# CPU seconds per GB; then meshd's resident set with 100 standard WireGuard peers.
#
#   bash bench/overlay.sh [mesh-bench-overlay options, e.g. --duration 8 --runs 3]
#
# As root on Debian 12 (or Ubuntu). Installs what it needs (the lab's tools and a Rust
# toolchain through scripts/deps.sh, iperf3, wireguard-go, wireguard-tools, and
# `cargo install boringtun-cli --locked` when boringtun-cli is missing), builds meshd, swarm,
# mesh-lab and mesh-bench-overlay in release mode and prints the table. Everything it starts
# is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

missing=()
for p in iperf3 wireguard-go wireguard-tools; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # iperf3's package offers to run a server as a service: the benchmark runs its own.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v boringtun-cli >/dev/null 2>&1; then
    echo "installing: boringtun-cli (cargo install boringtun-cli --locked)"
    cargo install boringtun-cli --locked
fi

target="${CARGO_TARGET_DIR:-target}"
echo "building meshd, swarm, mesh-lab and mesh-bench-overlay (release) in $target"
cargo build --release -p meshd -p swarm -p mesh-testkit --bins
cargo build --release -p mesh-bench --bin mesh-bench-overlay

export MESHD_BIN="$target/release/meshd"
export SWARM_BIN="$target/release/swarm"
exec "$target/release/mesh-bench-overlay" "$@"
