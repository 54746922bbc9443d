#!/usr/bin/env bash
# Delta downloads on real fine-tunes: what a device fetches to move from a MobileNetV2 package
# to each changed version, by outpost's per-tensor deltas and by the byte-level tools, side by
# side in one run.
#
# bench/delta/finetune.py trains a torchvision MobileNetV2 from scratch on scikit-learn's
# digits and makes the versions (PyTorch, torchvision, onnxruntime from PyPI, into
# target/deltavenv; the models are cached in target/delta-bench/models): (a) head-only
# fine-tune with BatchNorm frozen, (b) head-only with BatchNorm statistics moving (the exporter
# folds them into every convolution), (c) a light and a heavier full fine-tune with Adam,
# (d) the base re-exported with its tensors in another order, (e) an int8 (QDQ) variant,
# (f) an unrelated model (MobileNetV3-small). Each is packed with `outpost model pack`; then for
# each pair: zstd -19 of the new package (a full download), `zstd -19 --patch-from`, bsdiff,
# and `outpost model delta make` (plan + blobs, what the device fetches), whose `apply` is run
# and timed with its peak RSS, and whose output must be the new package byte for byte.
#   bench/delta.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
WORK=target/delta-bench
mkdir -p "$WORK"

if ! command -v bsdiff >/dev/null || ! command -v zstd >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bsdiff zstd >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bsdiff zstd >/dev/null; }
fi

VENV=target/deltavenv
if [ ! -x "$VENV/bin/python" ]; then python3 -m venv "$VENV"; fi
"$VENV/bin/pip" install -q --disable-pip-version-check torch==2.15.0 torchvision==0.29.2 onnx==1.23.2 \
  onnxscript==0.7.2 onnxruntime==1.23.2 scikit-learn==1.9.1 numpy==2.4.6

STAMP=$(sha256sum bench/delta/finetune.py | cut -c1-16)
if [ "$(cat "$WORK/models/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  echo "== training and fine-tuning (a few minutes on 2 cores)"
  rm -rf "$WORK/models"
  "$VENV/bin/python" bench/delta/finetune.py "$WORK/models" 2>&1 | grep -v -i warn | tail -1
  echo "$STAMP" > "$WORK/models/.stamp"
fi

if [ "$(cat "$WORK/eval/.stamp" 2>/dev/null)" != "$STAMP" ]; then
  rm -rf "$WORK/eval"
  "$VENV/bin/python" bench/delta/evalset.py "$WORK/eval" 2>&1 | grep -v -i warn | tail -1
  echo "$STAMP" > "$WORK/eval/.stamp"
fi

scripts/fetch-models.sh --ort >/dev/null
export ORT_DYLIB_PATH="$ROOT/target/onnxruntime/lib/libonnxruntime.so"
if [ -z "${OUTPOST_BIN:-}" ]; then cargo build --release --locked -p outpost 2>&1 | tail -1; fi
BIN=${OUTPOST_BIN:-$ROOT/target/release/outpost}

mkdir -p "$WORK/pkg"
variants="base head-bn-frozen head-bn-moving full-light full-heavy reordered int8 unrelated"
v=1
for m in $variants; do
  [ -f "$WORK/pkg/$m.opkg" ] || "$BIN" model pack "$WORK/models/$m.onnx" --name digits --version "$v" \
    --task classification --selftest-cases 1 -o "$WORK/pkg/$m.opkg" >/dev/null 2>&1
  v=$((v + 1))
done

size() { stat -c %s "$1"; }
printf '\n| pair | package | zstd -19 | zstd --patch-from | bsdiff | outpost delta | vs patch-from | goal | apply ms | apply peak RSS |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
declare -A goal=([head-bn-frozen]="≤ 0.85x" [head-bn-moving]="≤ 0.10x" [full-light]="≤ 0.75x" [full-heavy]="≤ 0.85x" [reordered]="≤ 5 KiB" [int8]="≤ 1x" [unrelated]="≤ 1x")
declare -A label=([head-bn-frozen]="(a) head only, BN frozen" [head-bn-moving]="(b) head only, BN moving" [full-light]="(c) full fine-tune, light" [full-heavy]="(c) full fine-tune, heavier" [reordered]="(d) re-export, other order" [int8]="(e) int8 variant" [unrelated]="(f) unrelated model")
base="$WORK/pkg/base.opkg"
for m in head-bn-frozen head-bn-moving full-light full-heavy reordered int8 unrelated; do
  new="$WORK/pkg/$m.opkg"
  out="$WORK/out/$m"
  rm -rf "$out" && mkdir -p "$out"
  full=$(size "$new")
  z=$(zstd -q -19 -c "$new" | wc -c)
  pf=$(zstd -q -19 --patch-from="$base" -c "$new" 2>/dev/null | wc -c)
  bsdiff "$base" "$new" "$out/bsdiff.patch"
  bs=$(size "$out/bsdiff.patch")
  made=$("$BIN" model delta make --base "$base" --new "$new" --out "$out")
  ours=$(echo "$made" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  applied=$("$BIN" model delta apply --base "$base" --plan "$out/plan" --blobs "$out/blobs" --out "$out/rebuilt.opkg")
  cmp -s "$out/rebuilt.opkg" "$new" || { echo "the rebuilt $m is not the package" >&2; exit 1; }
  read -r ms rss < <(echo "$applied" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ms"], d["peak_rss_kib"])')
  ratio=$(python3 -c "print(f'{$ours/$pf:.3f}x')")
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s MiB |\n' "${label[$m]}" "$full" "$z" "$pf" "$bs" "$ours" \
    "$ratio" "${goal[$m]}" "$ms" "$(python3 -c "print(f'{$rss/1024:.1f}')")"
done

# Lossy releases: base + each float fine-tune's change rounded to 8 bits per weight
# (`model delta lossy`, what `model publish --delta-bits 8 --base 1` publishes), measured on the
# held-out digits, then sent as a delta from the base and rebuilt bit-exactly.
printf '\n| pair | zstd --patch-from | outpost lossless | outpost 8-bit | 8-bit vs patch-from | goal | scale | top-1 differs | test accuracy trained → 8-bit | apply ms |\n'
printf '|---|---|---|---|---|---|---|---|---|---|\n'
declare -A goal8=([head-bn-frozen]="—" [head-bn-moving]="—" [full-light]="≤ 0.25x" [full-heavy]="≤ 0.25x")
for m in head-bn-frozen head-bn-moving full-light full-heavy; do
  new="$WORK/pkg/$m.opkg"
  out="$WORK/out/$m"
  q8="$WORK/pkg/$m-q8.opkg"
  rm -f "$q8"
  # The JSON report is printed whether or not the release is refused (exit 1, no package).
  report=$("$BIN" model delta lossy --base "$base" --new "$new" --bits 8 --eval "$WORK/eval" -o "$q8" 2>/dev/null || true)
  pf=$(zstd -q -19 --patch-from="$base" -c "$new" 2>/dev/null | wc -c)
  lossless=$("$BIN" model delta make --base "$base" --new "$new" --out "$out/lossless" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  if [ ! -f "$q8" ]; then
    printf '| %s | %s | %s | refused | — | %s | | %s | | |\n' "${label[$m]}" "$pf" "$lossless" "${goal8[$m]}" "$report"
    continue
  fi
  ours=$("$BIN" model delta make --base "$base" --new "$q8" --out "$out/q8" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  applied=$("$BIN" model delta apply --base "$base" --plan "$out/q8/plan" --blobs "$out/q8/blobs" --out "$out/q8/rebuilt.opkg")
  cmp -s "$out/q8/rebuilt.opkg" "$q8" || { echo "the rebuilt 8-bit $m is not the package" >&2; exit 1; }
  ms=$(echo "$applied" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ms"])')
  read -r scale differs acc < <(echo "$report" | python3 -c '
import json,sys; r=json.load(sys.stdin); a=r["accuracy"]; d=r["disagreement_pct"]
print(r["scale"], f"{d:.2f}%", f"{a[0]:.2f}%→{a[1]:.2f}%")')
  printf '| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n' "${label[$m]}" "$pf" "$lossless" "$ours" \
    "$(python3 -c "print(f'{$ours/$pf:.3f}x')")" "${goal8[$m]}" "$scale" "$differs" "$acc" "$ms"
done
echo
echo "test accuracy of each version: $(cat "$WORK/models/accuracy.json" | tr -d '\n ')"
