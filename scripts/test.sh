#!/usr/bin/env bash
# Runs every check and test of meshd: formatting, lints, unit tests, and the
# multi-host tests on the lab (network namespaces; needs root).
# Usage (as root): bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== format"
cargo fmt --all -- --check
echo "== lints"
cargo clippy --workspace --all-targets -- -D warnings
echo "== build"
cargo build --workspace --bins
echo "== unit tests"
cargo test --workspace --exclude mesh-integration-tests
echo "== lab tests (multi-host, real daemons)"
# One lab at a time: each runs several daemons and the machine may have 2 cores.
cargo test -p mesh-integration-tests -- --test-threads=1
echo "== all tests passed"
