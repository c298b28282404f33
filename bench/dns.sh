#!/usr/bin/env bash
# DNS benchmark: meshd's embedded resolver (mesh-dns) against unbound and dnsmasq, each
# serving the same names: SERVICES services (100), each a VIP (`svcI`), 3 task addresses
# (`tasks.svcI`) and 3 task names. dnsperf asks the 200 names `svcI A` and `tasks.svcI A`.
#
#   bash bench/dns.sh                      # as root; about 2 minutes after the build
#   DURATION=3 LAT_DURATION=2 bash bench/dns.sh      # a shorter run
#
# As root on Debian 12 (or Ubuntu). Installs what it needs (the lab's tools and a Rust
# toolchain through scripts/deps.sh, dnsperf, unbound, dnsmasq-base, bind9-dnsutils; while
# installing, a temporary policy-rc.d keeps Debian from starting unbound as a service, and a
# freshly installed unbound.service is disabled), builds the example server
# crates/mesh-dns/examples/dnsbench.rs in release mode, then:
#   - makes two network namespaces joined by a veth pair, server 198.18.0.1 and client
#     198.18.0.2 (the benchmarking range of RFC 2544, inside namespaces of this run only);
#   - runs in the server namespace, one after another: meshd's resolver with 1 and 2 threads,
#     unbound with 1 and 2 threads (local-data, iterator only, its default so-reuseport),
#     dnsmasq (one thread by design; --addn-hosts), all with TTL 0 and the same records;
#   - for each: peak rate `dnsperf -c 8 -T 1 -q 100 -l DURATION` (10 s) from the client
#     namespace; then latency at half of meshd's peak with the same number of threads
#     (`-Q`, LAT_DURATION s, 5): dnsperf -v prints every query's latency, and the script takes
#     the average and the 99th percentile from those lines;
#   - measures the resident set of the resolver process with an empty table and with 10,000
#     tasks (3334 services × 3 tasks, with task names), in the server namespace;
#   - prints a Markdown table: machine, versions, q/s, average and p99 latency, ratios
#     meshd/unbound (same threads) and meshd/dnsmasq, goals met or missed.
# The server and dnsperf share the machine's cores (no pinning), as in the reference figures.
# Everything it starts (servers by PID, namespaces, temporary files) is removed at the end,
# also on failure or Ctrl-C. Environment: DURATION, LAT_DURATION, SERVICES, OUT (also write
# the table to this file), CARGO_TARGET_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

DURATION=${DURATION:-10}
LAT_DURATION=${LAT_DURATION:-5}
SERVICES=${SERVICES:-100}
RSS_SERVICES=3334
SRV_IP=198.18.0.1
CLI_IP=198.18.0.2
SRV_NS="meshdns-srv-$$"
CLI_NS="meshdns-cli-$$"
TMP=$(mktemp -d /tmp/mesh-dns-bench.XXXXXX)
chmod 755 "$TMP"
SERVER_PID=""
OUR_POLICY=""

cleanup() {
    set +e
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    ip netns del "$SRV_NS" 2>/dev/null
    ip netns del "$CLI_NS" 2>/dev/null
    [ -n "$OUR_POLICY" ] && rm -f /usr/sbin/policy-rc.d
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- what it needs -------------------------------------------------------------------------
missing=()
for p in dnsperf unbound dnsmasq-base bind9-dnsutils; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
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
    if [[ " ${missing[*]} " == *" unbound "* ]] && command -v systemctl >/dev/null; then
        systemctl disable --quiet unbound.service 2>/dev/null || true
    fi
fi

target="${CARGO_TARGET_DIR:-target}"
echo "building the mesh-dns example server dnsbench (release) in $target" >&2
cargo build --release -q -p mesh-dns --example dnsbench
BIN="$ROOT/$target/release/examples/dnsbench"
[[ "$target" = /* ]] && BIN="$target/release/examples/dnsbench"

# --- the lab -------------------------------------------------------------------------------
ip netns add "$SRV_NS"
ip netns add "$CLI_NS"
ip link add "mdns-s$$" netns "$SRV_NS" type veth peer name "mdns-c$$" netns "$CLI_NS"
ip -n "$SRV_NS" addr add "$SRV_IP/30" dev "mdns-s$$"
ip -n "$CLI_NS" addr add "$CLI_IP/30" dev "mdns-c$$"
for ns in "$SRV_NS" "$CLI_NS"; do
    ip -n "$ns" link set lo up
done
ip -n "$SRV_NS" link set "mdns-s$$" up
ip -n "$CLI_NS" link set "mdns-c$$" up

in_cli() { ip netns exec "$CLI_NS" "$@"; }

"$BIN" queries --services "$SERVICES" > "$TMP/queries"
"$BIN" hosts --services "$SERVICES" > "$TMP/hosts"
unbound_conf() { # threads
    cat <<EOF
server:
  interface: $SRV_IP
  port: 53
  num-threads: $1
  do-daemonize: no
  username: ""
  chroot: ""
  directory: "$TMP"
  pidfile: ""
  use-syslog: no
  logfile: ""
  verbosity: 0
  do-ip6: no
  access-control: 0.0.0.0/0 allow
  module-config: "iterator"
  auto-trust-anchor-file: ""
  outgoing-range: 1024
EOF
    "$BIN" unbound --services "$SERVICES" | sed 's/^/  /'
    printf 'remote-control:\n  control-enable: no\n'
}
unbound_conf 1 > "$TMP/unbound-1.conf"
unbound_conf 2 > "$TMP/unbound-2.conf"

start_server() { # name threads
    # `ip netns exec` execs the server, so $! is the server's PID.
    case "$1" in
        meshd) ip netns exec "$SRV_NS" "$BIN" serve "$SRV_IP:53" --services "$SERVICES" \
            --threads "$2" > "$TMP/server.out" 2>&1 & ;;
        unbound) ip netns exec "$SRV_NS" unbound -d -c "$TMP/unbound-$2.conf" \
            > "$TMP/server.out" 2>&1 & ;;
        dnsmasq) ip netns exec "$SRV_NS" dnsmasq -k --no-resolv --no-hosts \
            --addn-hosts="$TMP/hosts" --listen-address="$SRV_IP" --bind-interfaces --port=53 \
            --local-ttl=0 --pid-file= --log-facility=- --cache-size=10000 \
            > "$TMP/server.out" 2>&1 & ;;
    esac
    SERVER_PID=$!
    for _ in $(seq 50); do
        if [ "$(in_cli dig @"$SRV_IP" +time=1 +tries=1 +short svc1 A 2>/dev/null)" = "10.0.0.1" ] \
            && kill -0 "$SERVER_PID" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "$1 ($2 threads) did not answer; its output:" >&2
    cat "$TMP/server.out" >&2
    exit 1
}

stop_server() {
    kill "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
    SERVER_PID=""
}

# Peak rate: prints "QPS LOST".
peak() {
    in_cli dnsperf -s "$SRV_IP" -d "$TMP/queries" -c 8 -T 1 -q 100 -l "$DURATION" > "$TMP/peak.out" 2>&1
    awk '/Queries per second:/ {q=$4} /Queries lost:/ {l=$3} END {printf "%d %s\n", q, l}' "$TMP/peak.out"
}

# Latency at a given rate: prints "AVG_US P99_US".
latency() { # qps
    in_cli dnsperf -s "$SRV_IP" -d "$TMP/queries" -c 8 -T 1 -q 100 -l "$LAT_DURATION" -Q "$1" -v \
        > "$TMP/lat.out" 2>&1
    awk '/^> / {print $NF}' "$TMP/lat.out" | sort -g > "$TMP/lat.sorted"
    awk '{s+=$1; v[NR]=$1} END {
            if (NR == 0) { print "- -"; exit }
            i = int(NR * 0.99); if (i < NR * 0.99) i++; if (i < 1) i = 1
            printf "%.0f %.0f\n", s / NR * 1e6, v[i] * 1e6 }' "$TMP/lat.sorted"
}

declare -A QPS LOST AVG P99 TARGET
run() { # name threads
    local name=$1 threads=$2 key="$1-$2"
    echo "running $name, $threads thread(s)" >&2
    start_server "$name" "$threads"
    read -r QPS[$key] LOST[$key] < <(peak)
    if [ "$name" = meshd ]; then
        TARGET[$threads]=$(( ${QPS[$key]} / 2 ))
    fi
    read -r AVG[$key] P99[$key] < <(latency "${TARGET[$threads]}")
    stop_server
}

run meshd 1
run meshd 2
run unbound 1
run unbound 2
run dnsmasq 1

# --- memory --------------------------------------------------------------------------------
echo "measuring the resident set with 10,000 tasks" >&2
ip netns exec "$SRV_NS" "$BIN" serve "$SRV_IP:53" --services "$RSS_SERVICES" --tasks 3 \
    > "$TMP/rss.out" 2>&1 &
SERVER_PID=$!
for _ in $(seq 100); do
    grep -q '^ready' "$TMP/rss.out" && break
    sleep 0.1
done
stop_server
if ! grep -q '^ready' "$TMP/rss.out"; then
    echo "the resolver with 10,000 tasks did not start; its output:" >&2
    cat "$TMP/rss.out" >&2
    exit 1
fi
RSS_EMPTY=$(awk -F= '/^rss_empty_kib=/ {print $2}' "$TMP/rss.out")
RSS_TABLE=$(awk -F= '/^rss_table_kib=/ {print $2}' "$TMP/rss.out")
NAMES=$(awk -F= '/^table_names=/ {print $2}' "$TMP/rss.out")

# --- report --------------------------------------------------------------------------------
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }
verdict() { awk -v v="$1" -v g="$2" -v op="$3" 'BEGIN {
    ok = (op == ">=") ? (v >= g) : (v < g); print (ok ? "met" : "missed") }'; }
mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }

cpu=$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)
revision=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
git -C "$ROOT" diff --quiet HEAD -- crates/mesh-dns 2>/dev/null || revision="$revision+changes"
{
    echo "## DNS resolver: meshd (mesh-dns) vs unbound and dnsmasq"
    echo
    echo "- machine: $cpu, $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr); server and dnsperf on the same cores"
    echo "- versions: mesh-dns $revision ($(rustc -V | cut -d' ' -f2)), unbound $(unbound -V | awk '/Version/ {print $2; exit}'), $(dnsmasq --version | head -1 | cut -d' ' -f1-3), dnsperf $(dnsperf -h 2>&1 | awk '/Version/ {print $2; exit}')"
    echo "- load: \`dnsperf -c 8 -T 1 -q 100 -l $DURATION\` over $(wc -l < "$TMP/queries") names (\`svcI A\`, \`tasks.svcI A\`; $SERVICES services × 3 tasks), veth between two namespaces; latency: \`-Q\` at half of meshd's peak with the same threads, $LAT_DURATION s, every query's latency from \`dnsperf -v\`"
    echo
    echo "| server | threads | q/s (peak) | lost | offered q/s | avg latency (µs) | p99 latency (µs) |"
    echo "| --- | --- | --- | --- | --- | --- | --- |"
    for key in meshd-1 meshd-2 unbound-1 unbound-2 dnsmasq-1; do
        t=${key##*-}
        echo "| ${key%-*} | $t | ${QPS[$key]} | ${LOST[$key]} | ${TARGET[$t]} | ${AVG[$key]} | ${P99[$key]} |"
    done
    echo
    echo "| measure | value | goal | |"
    echo "| --- | --- | --- | --- |"
    r=$(ratio "${QPS[meshd-1]}" "${QPS[unbound-1]}")
    echo "| meshd / unbound, 1 thread (q/s) | $r | ≥ 1 | $(verdict "$r" 1 '>=') |"
    r=$(ratio "${QPS[meshd-2]}" "${QPS[unbound-2]}")
    echo "| meshd / unbound, 2 threads (q/s) | $r | ≥ 1 | $(verdict "$r" 1 '>=') |"
    r=$(ratio "${QPS[meshd-1]}" "${QPS[dnsmasq-1]}")
    echo "| meshd (1 thread) / dnsmasq (q/s) | $r | — | |"
    p=$(awk -v u="${P99[meshd-1]}" 'BEGIN { printf "%.3f", u / 1000 }')
    echo "| meshd p99 at half its peak, 1 thread | $p ms | < 1 ms | $(verdict "$p" 1 '<') |"
    p=$(awk -v u="${P99[meshd-2]}" 'BEGIN { printf "%.3f", u / 1000 }')
    echo "| meshd p99 at half its peak, 2 threads | $p ms | < 1 ms | $(verdict "$p" 1 '<') |"
    m=$(mib "$RSS_TABLE")
    echo "| resolver RSS, 10,002 tasks ($NAMES names; $(mib "$RSS_EMPTY") MiB with an empty table) | $m MiB | < 20 MiB | $(verdict "$m" 20 '<') |"
} | tee "${OUT:-/dev/null}"
