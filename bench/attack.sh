#!/usr/bin/env bash
# Attack loads from the hardening issue, replayed against a release build: a selector flood from
# viewer tokens, a history flood of future-dated reports from one device, and parallel gzip bombs
# against an agent. Prints the p99 heartbeat latency a legitimate device sees during each load
# next to its baseline (same run), and the agent's peak RSS during the bombs, so a regression
# shows as a number.
#
# usage: bench/attack.sh
#   DATABASE (postgres | sqlite; default postgres), PG (postgres://postgres@127.0.0.1:5432/test),
#   DURATION (20 s per load), PARALLEL (16 selector clients), TERMS (32), FLEET (200 devices), BOMBS (32)
# Output: a markdown table on stdout, also written to target/bench/attack.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p outpost >&2
VENV=target/benchvenv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check cryptography==50.0.2 >&2
mkdir -p target/bench
"$VENV/bin/python" bench/attack.py "$PWD/target/release/outpost" | tee target/bench/attack.md
