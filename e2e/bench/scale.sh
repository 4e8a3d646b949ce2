#!/usr/bin/env bash
# Scale benchmark (issue 8's figures) in one run, release build, on this machine:
#   - full translation and one-AccessPoint edit at 10,000 AccessPoints (1 and 100 gateways),
#     largest per-gateway response with and without scoping;
#   - ADS convergence (p50/p99 from a config change to every stream's ACK) at 1,000 streams,
#     state of the world and delta, and at 10,000 streams, with server RSS and CPU;
#   - server RSS at 1,000 routes (500 AccessPoints of two routes each).
#
#   bash e2e/bench/scale.sh        (or `make bench-scale`)
set -euo pipefail
repo=$(cd "$(dirname "$0")/../.." && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/meridian/target}
meridian="$CARGO_TARGET_DIR/release/meridian"
(cd "$repo" && cargo build --quiet --release --bin meridian)
# Every stream is a TCP connection on each side of loopback.
ulimit -n "$(ulimit -Hn)"

section() { printf '\n== %s\n' "$1"; }

section "translation: 10,000 AccessPoints on one gateway (unscoped worst case)"
"$meridian" bench-translate --access-points 10000 --namespaces 100 --gateways 1
section "translation: 10,000 AccessPoints over 100 gateways (scoped)"
"$meridian" bench-translate --access-points 10000 --namespaces 100 --gateways 100
section "ADS: 1,000 state-of-the-world streams"
"$meridian" bench-xds --streams 1000
section "ADS: 1,000 delta streams"
"$meridian" bench-xds --streams 1000 --delta
section "ADS: 10,000 delta streams"
"$meridian" bench-xds --streams 10000 --delta --rounds 3 --timeout 300s
section "RSS at 1,000 routes (500 AccessPoints × 2 routes, 10 streams)"
"$meridian" bench-xds --access-points 500 --streams 10 --rounds 1
