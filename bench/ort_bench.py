#!/usr/bin/env python3
"""Reference latency benchmark of an ONNX model with onnxruntime (CPU).

usage:
  python bench/ort_bench.py MODEL.onnx [--threads N] [--iters K] [--warmup W]
      [--input NAME=SHAPE[:DTYPE] ...] [--symbol DIM=VALUE ...]
      [--value NAME=NUMBER ...] [--seed S] [--json] [--dump-inputs DIR]

Inputs default to the model's declared shapes with every symbolic or unknown
dim replaced by 1, unless the dim's name is given with --symbol, or the whole
input's shape with --input (SHAPE like 1x3x320x320, "" or "scalar" for a
rank-0 tensor; DTYPE an onnx/numpy name such as float32, int64).
--value NAME=NUMBER fills that input with a constant (e.g. --value sr=16000
for silero-vad's int64 sample-rate scalar). Everything else is random with a
fixed seed: floats uniform in [-1, 1), ints in [0, 10), bools random.

--dump-inputs DIR writes, for each input in the model's order, DIR/NAME.bin
(raw little-endian, C order) and DIR/NAME.json ({"name", "dtype", "shape",
"file"}), plus DIR/inputs.json listing them all, so another runtime (e.g. a
Rust benchmark) can feed byte-identical inputs. Names are sanitised for file
names ("/" and other odd characters become "_"); the json keeps the real name.

Session: CPUExecutionProvider, intra_op_num_threads=N, inter_op_num_threads=1,
ORT_ENABLE_ALL, ORT_SEQUENTIAL. Each session.run is timed with
time.perf_counter_ns after W untimed warm-up runs.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

# onnxruntime type strings -> numpy dtypes
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int8)": np.int8,
    "tensor(int16)": np.int16,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8,
    "tensor(uint16)": np.uint16,
    "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}
DTYPE_ALIASES = {"float": "float32", "f32": "float32", "half": "float16", "f16": "float16",
                 "double": "float64", "f64": "float64", "i64": "int64", "i32": "int32",
                 "i8": "int8", "u8": "uint8", "bool": "bool"}


def parse_kv(items, what):
    out = {}
    for it in items or []:
        if "=" not in it:
            sys.exit(f"ort_bench: {what} expects NAME=VALUE, got {it!r}")
        k, v = it.split("=", 1)
        out[k] = v
    return out


def parse_shape(text):
    text = text.strip()
    if text in ("", "scalar", "[]", "()"):
        return []
    parts = re.split(r"[x,×\s]+", text.strip("[]()"))
    try:
        return [int(p) for p in parts if p != ""]
    except ValueError:
        sys.exit(f"ort_bench: bad shape {text!r} (expected e.g. 1x3x320x320)")


def parse_dtype(text):
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    try:
        return np.dtype(name).type
    except TypeError:
        sys.exit(f"ort_bench: unknown dtype {text!r}")


def resolve_inputs(sess, input_overrides, symbols, values, seed):
    rng = np.random.default_rng(seed)
    feeds = {}
    for meta in sess.get_inputs():
        dtype = ORT_TYPES.get(meta.type)
        shape = None
        if meta.name in input_overrides:
            spec = input_overrides[meta.name]
            shape_text, _, dtype_text = spec.partition(":")
            shape = parse_shape(shape_text)
            if dtype_text:
                dtype = parse_dtype(dtype_text)
        if dtype is None:
            sys.exit(f"ort_bench: input {meta.name!r} has unsupported type {meta.type}")
        if shape is None:
            shape = []
            for d in meta.shape:
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif isinstance(d, str) and d in symbols:
                    shape.append(int(symbols[d]))
                else:  # symbolic name, None or -1
                    shape.append(1)
        if meta.name in values:
            v = values[meta.name]
            arr = np.full(shape, float(v) if np.issubdtype(dtype, np.floating) else int(v), dtype=dtype)
        elif np.issubdtype(dtype, np.floating):
            arr = rng.uniform(-1.0, 1.0, size=shape).astype(dtype)
        elif dtype is np.bool_:
            arr = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            arr = rng.integers(0, 10, size=shape).astype(dtype)
        # (not np.ascontiguousarray: it turns rank-0 scalars into shape [1])
        feeds[meta.name] = np.require(arr, requirements="C")
    unknown = (set(input_overrides) | set(values)) - set(feeds)
    if unknown:
        sys.exit(f"ort_bench: no such model input(s): {sorted(unknown)}; "
                 f"inputs are {[m.name for m in sess.get_inputs()]}")
    return feeds


def dump_inputs(feeds, outdir):
    os.makedirs(outdir, exist_ok=True)
    index = []
    for name, arr in feeds.items():
        stem = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        with open(os.path.join(outdir, stem + ".bin"), "wb") as f:
            f.write(le.tobytes(order="C"))
        meta = {"name": name, "dtype": np.dtype(arr.dtype).name, "shape": list(arr.shape),
                "file": stem + ".bin"}
        with open(os.path.join(outdir, stem + ".json"), "w") as f:
            json.dump(meta, f)
            f.write("\n")
        index.append(meta)
    with open(os.path.join(outdir, "inputs.json"), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


def percentile(sorted_vals, q):
    """Linear-interpolated percentile (numpy's default method) of sorted values."""
    if not sorted_vals:
        return float("nan")
    return float(np.percentile(np.asarray(sorted_vals), q))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1, help="intra_op_num_threads (default 1)")
    ap.add_argument("--iters", type=int, default=100, help="timed runs (default 100)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed runs first (default 10)")
    ap.add_argument("--input", action="append", default=[], metavar="NAME=SHAPE[:DTYPE]")
    ap.add_argument("--symbol", action="append", default=[], metavar="DIM=VALUE",
                    help="value for a named symbolic dim (default 1)")
    ap.add_argument("--value", action="append", default=[], metavar="NAME=NUMBER",
                    help="fill input NAME with a constant")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--dump-inputs", metavar="DIR")
    args = ap.parse_args(argv)
    if args.iters < 1 or args.warmup < 0 or args.threads < 1:
        ap.error("--iters and --threads must be >= 1, --warmup >= 0")

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    t0 = time.perf_counter_ns()
    sess = ort.InferenceSession(args.model, sess_options=so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter_ns() - t0) / 1e6

    feeds = resolve_inputs(sess, parse_kv(args.input, "--input"), parse_kv(args.symbol, "--symbol"),
                           parse_kv(args.value, "--value"), args.seed)
    if args.dump_inputs:
        dump_inputs(feeds, args.dump_inputs)

    for _ in range(args.warmup):
        outs = sess.run(None, feeds)
    times = []
    for _ in range(args.iters):
        t = time.perf_counter_ns()
        outs = sess.run(None, feeds)
        times.append((time.perf_counter_ns() - t) / 1e6)
    times.sort()

    result = {
        "model": args.model,
        "threads": args.threads,
        "p50_ms": round(percentile(times, 50), 4),
        "p90_ms": round(percentile(times, 90), 4),
        "p99_ms": round(percentile(times, 99), 4),
        "mean_ms": round(statistics.fmean(times), 4),
        "min_ms": round(times[0], 4),
        "iters": args.iters,
        "warmup": args.warmup,
        "load_ms": round(load_ms, 2),
        "onnxruntime": ort.__version__,
        "inputs": {k: {"dtype": np.dtype(v.dtype).name, "shape": list(v.shape)} for k, v in feeds.items()},
        "outputs": {m.name: list(o.shape) for m, o in zip(sess.get_outputs(), outs)},
    }
    if args.json:
        print(json.dumps(result))
    else:
        shapes = " ".join(f"{k}={'x'.join(map(str, v['shape'])) or 'scalar'}:{v['dtype']}"
                          for k, v in result["inputs"].items())
        print(f"{os.path.basename(args.model)} threads={args.threads} iters={args.iters} "
              f"p50={result['p50_ms']:.3f}ms p90={result['p90_ms']:.3f}ms "
              f"p99={result['p99_ms']:.3f}ms mean={result['mean_ms']:.3f}ms  [{shapes}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
