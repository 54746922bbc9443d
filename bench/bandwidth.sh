#!/usr/bin/env bash
# Result export on the wire, in two parts.
# 1. Bytes sent per 1,000 inferences against streaming the raw inputs, for an image model
#    (640x480 JPEG frames), an audio model (1 s 16 kHz WAV clips) and the vibration anomaly
#    detector (3-axis float32 windows), all made by the project. One in-process server and agent;
#    every result goes to the server sink (zstd batches) and to the MQTT broker at 127.0.0.1:1883
#    when one answers: first a message per record, then zstd batches (`zstd_batches`).
#    Goal (issue 13): at most 1 % of the raw bytes for images and audio.
# 2. MQTT forwarding throughput and the catch-up after an outage: CATCH_UP results (default
#    360,000: one hour at 100 results/s) queue while the broker is away, then the time until a
#    subscriber has them all. Needs the broker; CATCH_UP=0 skips it.
#   bench/bandwidth.sh [--requests N] [--mqtt HOST:PORT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p outpost 2>&1 | tail -1
bin="${CARGO_TARGET_DIR:-target}/release/outpost"
"$bin" --log warn model bench-export "$@"
echo
"$bin" --log warn model bench-export --zstd-batches "$@"
if [[ "${CATCH_UP:-360000}" != 0 ]]; then
  echo
  "$bin" --log error model bench-export --catch-up "${CATCH_UP:-360000}" "$@" | grep '^|'
fi
