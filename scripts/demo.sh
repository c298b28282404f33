#!/usr/bin/env bash
# Builds meshd and brings up a local 3-node cluster in network namespaces, then shows it.
# Usage (as root): bash scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/deps.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --bins
bash scripts/build-test-image.sh target/images/meshd-test.tar
exec target/debug/mesh-lab demo --hosts 3 --image target/images/meshd-test.tar "$@"
