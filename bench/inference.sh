#!/usr/bin/env bash
# outpost vs onnxruntime (the pip package) on the same models and the same input bytes, in one
# run: p50/p99 at 1 and 2 intra-op threads, printed as ratios (outpost / onnxruntime; < 1 means
# outpost is faster). The models are the pinned real ones (scripts/fetch-models.sh) and the
# generated ones users bring (scripts/make-test-models.sh: BERT-style encoder, its int8 and
# onnxruntime-fused forms, a quantised CNN+LSTM, scikit-learn pipelines when present). Then the
# cost of dynamic shapes (the encoder with its dims pinned vs left open), the local API's HTTP
# overhead, agent RSS and binary size.
#
# usage: bench/inference.sh [--quick]
#   --quick   fewer iterations (smoke test, noisier numbers)
# Output: a markdown table on stdout, also written to target/bench/results.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1

scripts/fetch-models.sh --ort >&2
scripts/make-test-models.sh >&2
G=target/models/generated
export ORT_DYLIB_PATH="$PWD/target/onnxruntime/lib/libonnxruntime.so"
cargo build --release --locked -p outpost >&2
BIN="$PWD/target/release/outpost"
VENV=target/benchvenv
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install --quiet --disable-pip-version-check onnxruntime==1.31.1 numpy==2.4.6 >&2
PY="$VENV/bin/python"
WORK=target/bench
rm -rf "$WORK" && mkdir -p "$WORK/demo" "$WORK/runs"

"$BIN" model train-demo --out "$WORK/demo" >&2
tar -xOf "$WORK/demo/vibration-anomaly-1.opkg" model.onnx > "$WORK/vibration-anomaly.onnx"

# id | model file | input shapes (ort_bench --input) | extra ort_bench args | iterations
MODELS=(
  "vibration-anomaly|$WORK/vibration-anomaly.onnx|window=1x3x256||2000"
  "yolov8n-320|target/models/yolov8n-320.onnx|images=1x3x320x320||200"
  "ppocr-cls|target/models/ppocr-cls.onnx|x=1x3x48x192||1000"
  "ppocr-rec|target/models/ppocr-rec.onnx|x=1x3x48x320||200"
  "ppocr-det|target/models/ppocr-det.onnx|x=1x3x736x736||30"
  "silero-vad-16k|target/models/silero-vad-16k.onnx|input=1x576||3000"
  "silero-vad|target/models/silero-vad.onnx|input=1x576|--value sr=16000|3000"
  "oww-melspec|target/models/oww-melspec.onnx|input=1x16000||1000"
  "oww-embedding|target/models/oww-embedding.onnx|input_1=1x76x32x1||1000"
  # Random ids in [0, 10) are in the vocabulary; a full mask and one segment keep them realistic.
  "encoder|$G/encoder/model.onnx|input_ids=1x32 attention_mask=1x32 token_type_ids=1x32|--value attention_mask=1 --value token_type_ids=0|1000"
  "encoder-int8|$G/encoder-int8/model.onnx|input_ids=1x32 attention_mask=1x32 token_type_ids=1x32|--value attention_mask=1 --value token_type_ids=0|1000"
  "encoder-ortopt|$G/encoder-ortopt/model.onnx|input_ids=1x32 attention_mask=1x32 token_type_ids=1x32|--value attention_mask=1 --value token_type_ids=0|1000"
  "ocr-lstm|$G/ocr-lstm/model.onnx|x=1x1x32x160||1000"
  "ocr-lstm-int8|$G/ocr-lstm-int8/model.onnx|x=1x1x32x160||1000"
)
# Every generated scikit-learn pipeline (or BENCH_SKLEARN="id id"), in its tensor-output form when
# the generator wrote one: ZipMap's sequence-of-maps is not a tensor.
sk_ids=${BENCH_SKLEARN:-$(find "$G" -maxdepth 1 -type d -name 'sklearn-*' -printf '%f\n' 2>/dev/null | sort | tr '\n' ' ')}
for id in $sk_ids; do
  f="$G/$id/model-tensor.onnx"
  [ -f "$f" ] || f="$G/$id/model.onnx"
  [ -f "$f" ] && MODELS+=("$id|$f|||2000")
done

for entry in "${MODELS[@]}"; do
  IFS='|' read -r id file shapes extra iters <<<"$entry"
  [ "$QUICK" = 1 ] && iters=$(( iters / 10 > 5 ? iters / 10 : 5 ))
  warm=$(( iters / 10 > 3 ? iters / 10 : 3 ))
  inputs="$WORK/inputs/$id"
  args=()
  for s in $shapes; do args+=(--input "$s"); done
  for t in 1 2; do
    echo "== $id, $t thread(s)" >&2
    # shellcheck disable=SC2086
    "$PY" bench/ort_bench.py "$file" --threads "$t" --iters "$iters" --warmup "$warm" "${args[@]}" $extra \
      --json --dump-inputs "$inputs" > "$WORK/runs/$id.$t.ort.json"
    "$BIN" model bench "$file" --inputs "$inputs" --threads "$t" --backend both --iterations "$iters" \
      --warmup "$warm" --max-seconds 60 --json > "$WORK/runs/$id.$t.outpost.jsonl" 2>"$WORK/runs/$id.$t.log" || true
  done
done

# Dynamic shapes: the encoder at batch 1 x sequence 32, the same input bytes, with both dims
# pinned at load, left open (the shape comes with the request) as the agent serves them (tract
# compiles a plan for a repeated shape in the background), and left open with those plans off.
echo "== dynamic-shape overhead: encoder, sequence 32" >&2
dyn_iters=$(( QUICK ? 100 : 1000 ))
for mode in dynamic symbolic pinned; do
  pins=(--dynamic)
  [ "$mode" = symbolic ] && pins=(--dynamic --shape-plans 0)
  [ "$mode" = pinned ] && pins=(--symbol sequence=32 --symbol batch=1)
  "$BIN" model bench "$G/encoder/model.onnx" "${pins[@]}" --inputs "$WORK/inputs/encoder" --threads 1 \
    --backend both --iterations "$dyn_iters" --warmup $(( dyn_iters / 10 )) --max-seconds 60 --json \
    > "$WORK/runs/dynshape.$mode.jsonl" 2>"$WORK/runs/dynshape.$mode.log" || true
done

echo "== HTTP overhead, RSS, binary size" >&2
"$BIN" model bench "$WORK/demo/vibration-anomaly-1.opkg" --backend tract --threads 1 \
  --iterations $(( QUICK ? 200 : 3000 )) --http --json > "$WORK/runs/http.jsonl"

rss_of() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
start_agent() {
  local dir=$1 port=$2
  "$BIN" agent --model-dir "$dir" --listen "127.0.0.1:$port" > "$WORK/agent.$port.log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null 2>&1 && break
    sleep 0.1
  done
  echo "$pid"
}
mkdir -p "$WORK/empty"
pid=$(start_agent "$WORK/empty" 18701); sleep 1; idle_kb=$(rss_of "$pid"); kill "$pid"; wait "$pid" 2>/dev/null || true
pid=$(start_agent "$WORK/demo" 18702)
body=$("$PY" -c 'import json; print(json.dumps({"inputs":[{"name":"window","shape":[1,3,256],"datatype":"FP32","data":[0.01*i for i in range(768)]}]}))')
for _ in $(seq 1 50); do curl -sf -X POST --data "$body" "http://127.0.0.1:18702/v2/models/vibration-anomaly/infer" >/dev/null; done
model_kb=$(rss_of "$pid"); kill "$pid"; wait "$pid" 2>/dev/null || true
binary_bytes=$(stat -c %s "$BIN")

"$PY" - "$WORK" "$idle_kb" "$model_kb" "$binary_bytes" <<'EOF' | tee "$WORK/results.md"
import json, sys, glob, os, platform
work, idle_kb, model_kb, binary = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
def load(id, t):
    ort = json.load(open(f"{work}/runs/{id}.{t}.ort.json"))
    out = {}
    p = f"{work}/runs/{id}.{t}.outpost.jsonl"
    for line in open(p):
        r = json.loads(line)
        out[r["backend"]] = r
    return ort, out
ids = []
for f in sorted(glob.glob(f"{work}/runs/*.1.ort.json")):
    ids.append(os.path.basename(f)[: -len(".1.ort.json")])
order = ["vibration-anomaly", "yolov8n-320", "ppocr-cls", "ppocr-rec", "ppocr-det", "silero-vad-16k", "silero-vad",
         "oww-melspec", "oww-embedding", "encoder", "encoder-int8", "encoder-ortopt", "ocr-lstm", "ocr-lstm-int8"]
ids.sort(key=lambda i: (order.index(i) if i in order else 99, i))
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
print(f"Measured {__import__('datetime').date.today()} on {cpu} ({os.cpu_count()} cores), onnxruntime 1.31.1 (pip) as reference.")
print("Ratios are outpost / onnxruntime-python p50 (p99); below 1.00 outpost is faster. `best` is the backend")
print("outpost picks for the model (`outpost model bench` / `pack --backend fastest`).\n")
print("| model | threads | onnxruntime p50 / p99 ms | outpost tract p50 / p99 ms | ratio | outpost onnxruntime p50 / p99 ms | ratio | best | best ratio |")
print("|---|---:|---:|---:|---:|---:|---:|---|---:|")
def cell(r, ref):
    if r is None or r.get("p50_ms") is None:
        err = (r or {}).get("error") or "n/a"
        return "fails: " + err.split(":")[0][:40], "-", None
    return f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}", f"{r['p50_ms']/ref['p50_ms']:.2f} ({r['p99_ms']/ref['p99_ms']:.2f})", r["p50_ms"]
for id in ids:
    for t in (1, 2):
        try:
            ort, out = load(id, t)
        except FileNotFoundError:
            continue
        tr, tr_ratio, tr_p50 = cell(out.get("tract"), ort)
        ox, ox_ratio, ox_p50 = cell(out.get("onnxruntime"), ort)
        cands = [(p, n) for p, n in ((tr_p50, "tract"), (ox_p50, "onnxruntime")) if p is not None]
        best, best_ratio = ("-", "-")
        if cands:
            p, best = min(cands)
            best_ratio = f"{p/ort['p50_ms']:.2f}"
        print(f"| {id} | {t} | {ort['p50_ms']:.3f} / {ort['p99_ms']:.3f} | {tr} | {tr_ratio} | {ox} | {ox_ratio} | {best} | {best_ratio} |")
def bench_lines(path):
    try:
        return {r["backend"]: r for r in map(json.loads, open(path)) if "backend" in r}
    except FileNotFoundError:
        return {}
runs = {m: bench_lines(f"{work}/runs/dynshape.{m}.jsonl") for m in ("pinned", "dynamic", "symbolic")}
if any(runs.values()):
    print("\nDynamic-shape overhead: encoder at batch 1 × sequence 32, 1 thread, same input bytes. `pinned` fixes both")
    print("dims at load (`--symbol sequence=32 --symbol batch=1`); `dynamic` leaves them open as the agent serves them")
    print("(tract: a plan specialised to the repeated shape, compiled in the background); `symbolic` is tract's dynamic")
    print("plan alone (`--shape-plans 0`). Ratios are p50 over pinned p50 (goal for `dynamic`: ≤ 1.05).\n")
    print("| backend | pinned p50 / p99 ms | dynamic p50 / p99 ms | dynamic / pinned | symbolic p50 / p99 ms | symbolic / pinned |")
    print("|---|---:|---:|---:|---:|---:|")
    def fmt(r):
        if r is None or r.get("p50_ms") is None:
            return "fails: " + ((r or {}).get("error") or "n/a").split(":")[0][:40]
        return f"{r['p50_ms']:.3f} / {r['p99_ms']:.3f}"
    def ratio(r, p):
        ok = all(x is not None and x.get("p50_ms") for x in (r, p))
        return f"{r['p50_ms'] / p['p50_ms']:.2f}" if ok else "-"
    for b in ("tract", "onnxruntime"):
        p, d, s = (runs[m].get(b) for m in ("pinned", "dynamic", "symbolic"))
        print(f"| {b} | {fmt(p)} | {fmt(d)} | {ratio(d, p)} | {fmt(s)} | {ratio(s, p)} |")
http = [json.loads(l) for l in open(f"{work}/runs/http.jsonl")]
h = next((r for r in http if r.get("kind") == "http"), None)
if h:
    print(f"\nLocal API overhead (demo model, tract, keep-alive HTTP/1.1 client on loopback, JSON body):")
    print(f"raw inference p50 {h['raw_p50_ms']:.3f} ms, through `POST /v2/models/{{m}}/infer` p50 {h['http_p50_ms']:.3f} ms "
          f"(p99 {h['http_p99_ms']:.3f} ms): **overhead p50 {h['overhead_p50_ms']:.3f} ms** (target ≤ 0.25 ms).")
print(f"\nAgent RSS: idle without models **{idle_kb/1024:.1f} MB** (target ≤ 8 MB); with the demo model loaded and "
      f"serving **{model_kb/1024:.1f} MB** (target ≤ 20 MB). Stripped release binary: **{binary/1e6:.1f} MB**.")
EOF
