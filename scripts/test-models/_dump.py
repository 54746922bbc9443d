"""Shared by the test-model scripts: writing a model directory and its cases in the dump format.

A model directory is `OUT/<id>/model.onnx` plus `case0/`, `case1/`, ... Each case holds
`inputs.json` and `outputs.json`, each a JSON list of `{"name", "dtype", "shape", "file"}` in
graph order (`dtype` a numpy name), and the raw little-endian C-order files they name. This is the
format `bench/ort_bench.py --dump-inputs` writes, so `outpost model bench --inputs OUT/<id>/case0`
feeds a case as it is. Expected outputs come from onnxruntime on one thread: that is the
reference the Rust and Python tests hold both outpost backends to.

Not a test-model script itself (the leading underscore keeps scripts/make-test-models.sh from
running it).
"""
from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np
import onnxruntime as ort


def reference_session(path: str) -> ort.InferenceSession:
    """onnxruntime session as the reference: CPU, one thread, default (full) optimisation."""
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def _stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _write_tensors(case_dir: str, index_name: str, prefix: str, tensors: list[tuple[str, np.ndarray]]):
    index = []
    for name, arr in tensors:
        arr = np.asarray(arr)
        if arr.dtype == object:
            raise SystemExit(f"tensor `{name}` is not numeric ({arr.dtype}); the dump format carries tensors only")
        file = prefix + _stem(name) + ".bin"
        le = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        with open(os.path.join(case_dir, file), "wb") as f:
            f.write(np.ascontiguousarray(le).tobytes(order="C"))
        index.append({"name": name, "dtype": arr.dtype.name, "shape": list(arr.shape), "file": file})
    with open(os.path.join(case_dir, index_name), "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")


def write_model(out: str, model_id: str, model_bytes: bytes | None = None, source: str | None = None) -> str:
    """Creates a fresh `OUT/<id>/` holding `model.onnx` (the bytes given, or a copy of `source`)."""
    d = os.path.join(out, model_id)
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    path = os.path.join(d, "model.onnx")
    if model_bytes is not None:
        with open(path, "wb") as f:
            f.write(model_bytes)
    else:
        # A copy, not a symlink: packages and test runners may copy the directory elsewhere.
        shutil.copyfile(source, path)
    return d


def write_cases(model_dir: str, feeds_per_case: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    """Runs each case through the reference session and writes `case<i>/`; returns the outputs."""
    sess = reference_session(os.path.join(model_dir, "model.onnx"))
    in_names = [i.name for i in sess.get_inputs()]
    out_names = [o.name for o in sess.get_outputs()]
    results = []
    for i, feeds in enumerate(feeds_per_case):
        if sorted(feeds) != sorted(in_names):
            raise SystemExit(f"{model_dir} case{i}: inputs {sorted(feeds)} but the graph takes {in_names}")
        outs = sess.run(None, feeds)
        for name, o in zip(out_names, outs):
            if np.issubdtype(o.dtype, np.floating) and not np.isfinite(o).all():
                raise SystemExit(f"{model_dir} case{i}: output `{name}` has non-finite values")
        case_dir = os.path.join(model_dir, f"case{i}")
        os.makedirs(case_dir)
        _write_tensors(case_dir, "inputs.json", "", [(n, feeds[n]) for n in in_names])
        _write_tensors(case_dir, "outputs.json", "out.", list(zip(out_names, outs)))
        results.append(outs)
    return results


def describe(model_dir: str) -> str:
    """One line for the script's log: id, size, op domains used."""
    import onnx

    path = os.path.join(model_dir, "model.onnx")
    m = onnx.load(path)
    domains = sorted({n.domain or "ai.onnx" for n in m.graph.node})
    custom = sorted({f"{n.domain}:{n.op_type}" for n in m.graph.node if n.domain not in ("", "ai.onnx")})
    cases = len([c for c in os.listdir(model_dir) if c.startswith("case")])
    extra = f", contrib ops {custom}" if custom else ""
    return (f"{os.path.basename(model_dir)}: {os.path.getsize(path):,} bytes, {len(m.graph.node)} nodes, "
            f"domains {domains}{extra}, {cases} cases")
