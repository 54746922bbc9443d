#!/usr/bin/env bash
# Rollout benchmark (issue 12): DEVICES simulated devices (real keys, signed heartbeats,
# downloads verified per device, per-version windows) on a real `outpost server` (release build,
# PostgreSQL) take v2 in four waves (1 %, 10 %, 50 %, 100 %) with a bake of BAKE seconds and two
# ratio gates. Prints per wave the devices, the time until they ran v2, the bake and the whole
# wave; and from the server's metrics one engine evaluation's time against its goal (< 100 ms for
# 10,000 devices), the pure step's time, each part's time, and database statements per
# evaluation. Then v3 goes to every device in one wave with a long bake, and evaluations that
# judge every gate over every device are timed while the devices report and with them stopped.
# Last, the pure step alone on a synthetic fleet of as many devices, without a database
# (crates/outpost-server/examples/rollout_step.rs), for a profiler's eye.
#
# usage: bench/rollout.sh [--quick]
#   DEVICES (default 10000; --quick: 500), INTERVAL (heartbeat s, 10), BAKE (s, 10),
#   PG (postgres://postgres@127.0.0.1:5432/test), LONG_POLL (on, off; auto: on up to 4,000 devices)
# Output: a markdown table on stdout, also written to target/bench/rollout.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--quick" ]; then
  export DEVICES=${DEVICES:-500} BAKE=${BAKE:-5} INTERVAL=${INTERVAL:-5}
fi
cargo build --release --locked -p outpost >&2
cargo build --release --locked -p outpost-server --example rollout_step >&2
mkdir -p target/bench
python3 bench/rollout.py "$PWD/target/release/outpost" | tee target/bench/rollout.md
echo | tee -a target/bench/rollout.md
"${CARGO_TARGET_DIR:-target}/release/examples/rollout_step" "${DEVICES:-10000}" 30 | tee -a target/bench/rollout.md
