#!/usr/bin/env bash
# Installs what meshd needs to build and run its lab on Debian/Ubuntu, idempotently.
# Run as root.
set -euo pipefail

if [ "$(id -u)" -ne 0 ]; then
    echo "run as root: the lab creates network namespaces" >&2
    exit 1
fi

pkgs=(iproute2 nftables iputils-ping procps util-linux python3 tcpdump wireguard-go wireguard-tools ca-certificates curl build-essential pkg-config runc busybox-static bind9-dnsutils socat wrk ethtool clang llvm libbpf-dev)
missing=()
for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    else
        echo "installing the Rust toolchain (rustup, stable)"
        curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
fi
