#!/usr/bin/env bash
# Kill -9 during result export, at length: the suite's test
# (crates/cli/tests/fleet/export_kill9.rs) with many more kills, alternating between kills while
# clients' results are appended and kills while the MQTT sink forwards a backlog. Needs the
# Mosquitto on 127.0.0.1:1883 (OUTPOST_MQTT overrides). Prints how many results were delivered,
# how many were acknowledged before kills during forwarding, and how many arrived twice.
#   bench/export_kill9.sh [KILLS]     (default 200)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUTPOST_EXPORT_KILL9_TRIALS="${1:-200}"
cargo test --workspace --locked --test fleet export_kill9 -- --nocapture 2>&1 | grep -E "kills|test result|panicked"
