#!/usr/bin/env bash
# Routing-mesh benchmark: requests per second, p50/p99 latency and TCP throughput to a
# service of 3 nginx tasks through meshd's eBPF path and its userspace path, against HAProxy
# (TCP mode, round-robin, 1 and 2 threads) in front of the same tasks and against one task
# reached directly; wrk keep-alive and with a new connection per request, iperf3 through the
# published port; all in one invocation, with the ratios eBPF/direct and
# userspace/HAProxy.
#
#   bash bench/mesh.sh                       # as root; about 11 minutes after the build
#   DURATION=3 RUNS=1 bash bench/mesh.sh     # a shorter run (about 2 minutes)
#   SPREAD=0 bash bench/mesh.sh              # without the 3-host rows
#
# Topology (every load from the lab's client namespace, 192.0.2.200, entering by host1):
#   - 1-host labs for the figures the goals are about: all 3 nginx tasks (and the iperf3
#     task) on host1, so the mesh delivers locally and no path crosses WireGuard. One lab
#     with `meshd --dataplane ebpf`, then one with `--dataplane userspace`.
#   - eBPF path: the published port on host1's address; TC on host1's interface picks a task
#     per connection and forwards the packets into the ingress sandbox by its mesh link;
#     replies return straight to the client (direct server return).
#   - userspace path: the same published port, served by meshd's relay in host1's namespace,
#     whose backend connections are opened in host1's ingress sandbox.
#   - HAProxy (beside the userspace path, same lab): one process per thread count, side by
#     side in host1's namespace on host1's address (8081 and 5202, then 8082 and 5203), TCP
#     mode, `balance roundrobin`, `option splice-auto` (the relay splices too), nbthread 1
#     and 2; its backend connections opened in the ingress sandbox too (HAProxy's
#     `namespace` server option): the same hops as the relay.
#   - the paths of a lab take turns (keep-alive run 1 of each, run 2 of each, …), so that a
#     slow moment of the machine falls on all of them alike.
#   - direct (beside the eBPF path, same lab): the client to one task's ingress address,
#     forwarded by the kernel through host1 and the ingress sandbox like the eBPF path's
#     packets, without balancing. The mesh link is the eBPF path's own (it drops what it did
#     not deliver), so the benchmark adds a veth pair between host1 and the sandbox and uses
#     a second client address, 192.0.2.201, routed over it by policy rules in both
#     namespaces: the mesh's traffic is never diverted.
#   - extra rows (SPREAD=1, the default): the mesh paths on 3-host labs, one nginx task per
#     host and the iperf3 task on host2, the load still to host1, so that most requests go
#     to another node (eBPF: encapsulated over the underlay; userspace: over the ingress
#     network's WireGuard overlay).
# Backends are real meshd tasks of the test image (scripts/build-test-image.sh) running the
# host's nginx and iperf3 (bind-mounted /usr, started through the host's loader); nginx:
# worker_processes 1, access_log off, `return 200` with the task's hostname.
#
# As root on Debian 12 (or Ubuntu). Installs what it needs (the lab's tools and a Rust
# toolchain through scripts/deps.sh; nginx-light, haproxy, iperf3, wrk; while installing, a
# temporary policy-rc.d keeps Debian from starting nginx and HAProxy as services, and their
# freshly installed units are disabled), builds meshd, swarm, mesh-lab and mesh-bench-mesh
# in release mode and the test image, and prints the table. Each figure is the median of
# RUNS runs (3) of DURATION seconds (10). Everything it starts is stopped by PID (HAProxy,
# wrk, iperf3) and the labs remove their namespaces and daemons, also on failure or Ctrl-C.
# Environment: DURATION, RUNS, WARMUP (2 s of load before each path), SPREAD (1), OUT (also
# write the table to this file), CARGO_TARGET_DIR, MESH_BENCH_LOG, RUST_LOG.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

OUR_POLICY=""
cleanup() {
    [ -n "$OUR_POLICY" ] && rm -f /usr/sbin/policy-rc.d
    return 0
}
trap cleanup EXIT

missing=()
for p in nginx-light haproxy iperf3 wrk curl; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # iperf3's package offers to run a server as a service: the benchmark runs its own.
    echo "iperf3 iperf3/start_daemon boolean false" | debconf-set-selections 2>/dev/null || true
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        OUR_POLICY=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    if [ -n "$OUR_POLICY" ]; then
        rm -f /usr/sbin/policy-rc.d
        OUR_POLICY=""
    fi
    if command -v systemctl >/dev/null 2>&1; then
        for unit in nginx.service haproxy.service; do
            case " ${missing[*]} " in
                *" ${unit%.service}"*) systemctl disable --now --quiet "$unit" 2>/dev/null || true ;;
            esac
        done
    fi
fi

target="${CARGO_TARGET_DIR:-target}"
echo "building meshd, swarm, mesh-lab and mesh-bench-mesh (release) in $target"
cargo build --release -p meshd -p swarm -p mesh-testkit --bins
cargo build --release -p mesh-bench --bin mesh-bench-mesh

image="$(cd "$target" && pwd)/images/meshd-test.tar"
bash scripts/build-test-image.sh "$image"

export MESHD_BIN="$target/release/meshd"
export SWARM_BIN="$target/release/swarm"
export MESH_BENCH_IMAGE="$image"
# The source revision, printed next to meshd's version ("+changes": uncommitted changes).
if rev="$(git rev-parse --short HEAD 2>/dev/null)"; then
    git diff --quiet HEAD -- crates ebpf Cargo.lock 2>/dev/null || rev="$rev+changes"
    export MESH_BENCH_REVISION="$rev"
fi
case "${SPREAD:-1}" in 0 | false | no) spread=false ;; *) spread=true ;; esac
args=(--duration "${DURATION:-10}" --runs "${RUNS:-3}" --warmup "${WARMUP:-2}" --spread "$spread")
[ -n "${OUT:-}" ] && args+=(--out "$OUT")
exec "$target/release/mesh-bench-mesh" "${args[@]}" "$@"
