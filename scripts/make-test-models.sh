#!/usr/bin/env bash
# Build the generated test models: every scripts/test-models/*.py (except _*.py helpers) is run
# as `SCRIPT OUT` in a pinned venv and writes OUT/<id>/model.onnx with cases whose expected
# outputs come from onnxruntime (see scripts/test-models/_dump.py for the layout).
#
# usage: scripts/make-test-models.sh [OUT]      OUT defaults to <repo>/target/models/generated
#
# Idempotent and fast when up to date: OUT/.stamp holds a sha256 over the scripts, their
# requirements, this file and scripts/fetch-models.sh (which pins the real models some scripts
# read); when it matches, nothing runs. Otherwise all scripts run into OUT.tmp, which then
# replaces OUT whole, so a failed or interrupted run never leaves a half-written OUT behind and a
# renamed model leaves no stale directory. The venv is target/modelvenv, reinstalled when
# scripts/test-models/requirements.txt changes. Needs python3 (3.11 is what the pins are for).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
SRC="$SCRIPT_DIR/test-models"
OUT="${1:-$REPO_ROOT/target/models/generated}"
VENV="$REPO_ROOT/target/modelvenv"

die() { echo "make-test-models: error: $*" >&2; exit 1; }

scripts=()
for f in "$SRC"/*.py; do
  case "$(basename "$f")" in _*) continue ;; esac
  scripts+=("$f")
done
((${#scripts[@]})) || die "no scripts in $SRC"

# What the output depends on, in a fixed order.
key="$(cd "$REPO_ROOT" && sha256sum scripts/test-models/*.py scripts/test-models/requirements.txt \
  scripts/make-test-models.sh scripts/fetch-models.sh | sha256sum | cut -d' ' -f1)"
if [[ -f "$OUT/.stamp" && "$(cat "$OUT/.stamp")" == "$key" ]]; then
  echo "make-test-models: up to date ($OUT)"
  exit 0
fi

# Some scripts read the pinned real models (cached: a no-op when they are present).
"$REPO_ROOT/scripts/fetch-models.sh" >&2

req_sha="$(sha256sum "$SRC/requirements.txt" | cut -d' ' -f1)"
if [[ ! -x "$VENV/bin/python" || "$(cat "$VENV/.requirements.sha256" 2>/dev/null)" != "$req_sha" ]]; then
  echo "make-test-models: installing $SRC/requirements.txt into $VENV" >&2
  [[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV" || die "python3 -m venv failed (install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check -r "$SRC/requirements.txt" \
    || die "pip install -r $SRC/requirements.txt failed"
  echo "$req_sha" >"$VENV/.requirements.sha256"
fi

mkdir -p "$(dirname "$OUT")"
STAGE="$OUT.tmp"
rm -rf -- "$STAGE"
mkdir -p "$STAGE"
for s in "${scripts[@]}"; do
  start=$(date +%s%N)
  echo "== $(basename "$s")" >&2
  # One BLAS/OpenMP thread: the recorded outputs must not depend on the machine's core count.
  OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYTHONHASHSEED=0 "$VENV/bin/python" "$s" "$STAGE" \
    || die "$(basename "$s") failed (nothing in $OUT was changed)"
  echo "make-test-models: $(basename "$s") took $(( ($(date +%s%N) - start) / 1000000 )) ms" >&2
done
echo "$key" >"$STAGE/.stamp"
rm -rf -- "$OUT"
mv -- "$STAGE" "$OUT"
echo "make-test-models: wrote $(find "$OUT" -mindepth 1 -maxdepth 1 -type d | wc -l) models, $(du -sh "$OUT" | cut -f1), to $OUT"
