#!/usr/bin/env bash
# Kill -9 during model updates, at length: the suite's test (crates/cli/tests/fleet/kill9.rs)
# with many more trials. Each trial starts the agent process while it must move to the other
# published version, kills it with SIGKILL at a random point from start-up to a little past a
# whole update, and checks that the model directory holds only whole, verified packages; every
# 25th trial restarts it and checks it serves, and reports, exactly the desired version.
# Prints where the kills landed (before the download, mid-download, after the install).
#   bench/kill9.sh [TRIALS]     (default 2000)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export OUTPOST_KILL9_TRIALS="${1:-2000}"
cargo test --workspace --locked --test fleet kill9 -- --nocapture 2>&1 | grep -E "kills|start to serving|test result|panicked"
