#!/usr/bin/env bash
# Bytes result export sends per 1,000 inferences, against streaming the raw inputs, for an
# image model (640x480 JPEG frames), an audio model (1 s 16 kHz WAV clips) and the vibration
# anomaly detector (3-axis float32 windows), all made by the project. One in-process server
# and agent; every result goes to the server sink (zstd batches) and to the MQTT broker at
# 127.0.0.1:1883 when one answers: first a message per record, then zstd batches.
# Goal (issue 13): at most 1 % of the raw bytes for images and audio.
#   bench/bandwidth.sh [--requests N] [--mqtt HOST:PORT]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked -p outpost 2>&1 | tail -1
bin="${CARGO_TARGET_DIR:-target}/release/outpost"
"$bin" --log warn model bench-export "$@"
echo
"$bin" --log warn model bench-export --zstd-batches "$@"
