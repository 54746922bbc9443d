#!/usr/bin/env bash
# The outbox on this machine's disk: appends per second of 200-byte records with group commit
# (many concurrent appenders through AsyncOutbox, and Outbox::append_batch), with one fsync per
# record (Always), and without fsync (Never); and the write amplification of a 10,000-record
# outage followed by catch-up (consume + ack until the segments are deleted), from
# /proc/self/io. Prints a markdown table, each figure beside its goal.
#   bench/outbox.sh [--records N] [--tasks N]      (defaults: 400000 records, 1024 appenders)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p outpost-outbox --example outbox_bench 2>&1 | tail -1
"${CARGO_TARGET_DIR:-target}/release/examples/outbox_bench" --dir "${CARGO_TARGET_DIR:-target}/outbox-bench" "$@"
