#!/usr/bin/env bash
# Fleet scale benchmark: simulated devices (real keys, enrollment, signed heartbeats, long-polls)
# against a real `outpost server`, first on SQLite, then on PostgreSQL, on this machine.
# Prints sustained heartbeats/s, heartbeat latency p50/p99 (measured by the simulator), server
# RSS and CPU, simulator CPU, and the server memory each idle long-poll costs.
#
# usage: bench/fleet.sh [--quick]
#   DEVICES (default 10000), INTERVAL (30), DURATION (150 s per run), BIG_DEVICES (100000; 0 skips
#   the PostgreSQL push run without long-polls), PG (postgres://postgres@127.0.0.1:5432/test)
# Output: a markdown table on stdout, also written to target/bench/fleet.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--quick" ]; then
  export DEVICES=${DEVICES:-1000} DURATION=${DURATION:-40} BIG_DEVICES=${BIG_DEVICES:-0} INTERVAL=${INTERVAL:-10}
fi
cargo build --release --locked -p outpost >&2
mkdir -p target/bench
python3 bench/fleet.py "$PWD/target/release/outpost" | tee target/bench/fleet.md
