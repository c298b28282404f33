#!/usr/bin/env bash
# Services benchmark: time from `service create` to N containers running (with and without an
# overlay), a killed host's tasks running elsewhere, a rolling update of 6 tasks, and the
# scheduler's placements per second; meshd against Docker Swarm run side by side (Debian's
# docker.io), and Nomad's figure quoted.
#
#   bash bench/services.sh [mesh-bench services options, e.g. --runs 3 --replicas 10,30,100]
#
# As root on Debian 12 (or Ubuntu). Installs what it needs (the lab's tools, runc, busybox and
# a Rust toolchain through scripts/deps.sh, and Debian's docker.io unless `--systems meshd`),
# builds meshd and mesh-bench in release mode and the test image (scripts/build-test-image.sh),
# runs both systems on labs of network namespaces with real containers and prints the table.
# Everything it starts is removed at the end, also on failure or Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

# Docker Swarm runs unless only meshd is asked for.
want_swarm=1
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[i]}" in
        --systems=meshd) want_swarm=0 ;;
        --systems) [ "${args[i + 1]:-}" = meshd ] && want_swarm=0 ;;
    esac
done
if [ "$want_swarm" = 1 ] && ! dpkg-query -W -f='${Status}' docker.io 2>/dev/null | grep -q "install ok installed"; then
    echo "installing: docker.io"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends docker.io >/dev/null
    # The package's own daemon is not used (the benchmark runs one per lab host, each in its
    # namespaces): if the install started it, stop it so it takes no CPU and no network.
    if command -v systemctl >/dev/null 2>&1; then
        for unit in docker.service docker.socket containerd.service; do
            if systemctl is-active --quiet "$unit" 2>/dev/null; then
                systemctl disable --now "$unit" >/dev/null 2>&1 || true
            fi
        done
    fi
fi

target="${CARGO_TARGET_DIR:-target}"
echo "building meshd and mesh-bench (release) in $target"
cargo build --release -p meshd -p mesh-bench --bin meshd --bin mesh-bench

image="$(cd "$target" && pwd)/images/meshd-test.tar"
bash scripts/build-test-image.sh "$image"

export MESHD_BIN="$target/release/meshd"
export MESH_BENCH_IMAGE="$image"
# The source revision, printed next to meshd's version ("+changes": uncommitted changes).
if rev="$(git rev-parse --short HEAD 2>/dev/null)"; then
    git diff --quiet HEAD -- crates Cargo.lock 2>/dev/null || rev="$rev+changes"
    export MESH_BENCH_REVISION="$rev"
fi
exec "$target/release/mesh-bench" services "$@"
