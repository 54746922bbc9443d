"""The models users bring (issue #10), end to end: `outpost model pack FILE.onnx` with default
flags, a real agent serving the packages, and the official tritonclient sending every recorded
case, whose outputs must match onnxruntime's.

The models and cases come from scripts/make-test-models.sh ($OUTPOST_TEST_MODELS, default
target/models/generated): `<id>/model.onnx` and `<id>/case*/{inputs,outputs}.json` indexing raw
little-endian tensors, outputs recorded from onnxruntime (Python, one thread).
"""

import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from conftest import wait_ready as wait_agent_ready
from tritonclient.utils import np_to_triton_dtype

from conftest import BINARY, REPO, free_port

RTOL, ATOL = 1e-3, 1e-4
ROOT = REPO / os.environ.get("OUTPOST_TEST_MODELS", "target/models/generated")
MODELS = sorted(p.name for p in ROOT.glob("*") if (p / "model.onnx").is_file()) if ROOT.is_dir() else []


def test_generated_models_are_there():
    if not MODELS:
        why = f"no generated models in {ROOT}: run scripts/make-test-models.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def read_dump(case: Path, index: str):
    tensors = []
    for e in json.loads((case / index).read_text()):
        raw = (case / e["file"]).read_bytes()
        if e["dtype"] == "str":  # KServe BYTES layout: u32 little-endian length before each element
            items, at = [], 0
            while at < len(raw):
                n = int.from_bytes(raw[at:at + 4], "little")
                items.append(raw[at + 4:at + 4 + n])
                at += 4 + n
            data = np.array(items, dtype=np.object_)
        else:
            data = np.frombuffer(raw, dtype=np.dtype(e["dtype"]).newbyteorder("<")).astype(e["dtype"])
        tensors.append((e["name"], data.reshape(e["shape"])))
    return tensors


def cases(model_id):
    d = ROOT / model_id
    return sorted((c for c in d.glob("case*") if c.is_dir()), key=lambda c: int(c.name[4:]))


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """Packs every model with default flags; the result of each `pack` run, by model id."""
    out = tmp_path_factory.mktemp("real-packages")
    results = {}
    for model_id in MODELS:
        proc = subprocess.run(
            [str(BINARY), "model", "pack", str(ROOT / model_id / "model.onnx"), "--name", model_id,
             "-o", str(out / f"{model_id}.opkg")],
            cwd=REPO, capture_output=True, text=True, timeout=600,
        )
        results[model_id] = proc
    return out, results


@pytest.fixture(scope="module")
def real_agent(packages):
    model_dir, _ = packages
    port = free_port()
    log_path = model_dir.parent / "real-agent.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [str(BINARY), "agent", "--listen", f"127.0.0.1:{port}", "--model-dir", str(model_dir),
         "--data-dir", str(model_dir.parent / "real-agent-data"), "--memory-budget-mb", "2048"],
        stdout=log, stderr=subprocess.STDOUT, cwd=model_dir.parent,
    )
    url = f"127.0.0.1:{port}"
    wait_agent_ready(proc, url, log_path)
    yield url, log_path
    proc.terminate()
    assert proc.wait(timeout=30) == 0, "agent did not shut down cleanly on SIGTERM"


@pytest.fixture()
def real_client(real_agent):
    c = httpclient.InferenceServerClient(url=real_agent[0], network_timeout=300)
    yield c
    c.close()


def wait_ready(client, model_id, log_path, timeout=180):
    """Models load in the background after the agent is up; a big one may take a while."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if client.is_model_ready(model_id):
            return
        index = {m["name"]: m for m in client.get_model_repository_index()}
        entry = index.get(model_id, {})
        if entry.get("state") == "UNAVAILABLE":
            pytest.fail(f"{model_id} is UNAVAILABLE in the agent: {entry.get('reason')}")
        time.sleep(0.2)
    pytest.fail(f"{model_id} not ready after {timeout} s; agent log:\n{log_path.read_text()[-4000:]}")


def require_package(packages, model_id):
    proc = packages[1][model_id]
    if proc.returncode != 0:
        pytest.fail(f"`outpost model pack` failed for {model_id}, so it cannot be served:\n{proc.stderr[-3000:]}")


@pytest.mark.parametrize("model_id", MODELS)
def test_pack_with_default_flags(packages, model_id):
    proc = packages[1][model_id]
    output = proc.stdout + proc.stderr
    assert "panicked" not in output, output[-3000:]
    assert proc.returncode == 0, f"pack exited {proc.returncode}:\n{output[-3000:]}"
    assert (packages[0] / f"{model_id}.opkg").is_file()


@pytest.mark.parametrize("model_id", MODELS)
def test_served_outputs_match_onnxruntime(packages, real_agent, real_client, model_id):
    require_package(packages, model_id)
    wait_ready(real_client, model_id, real_agent[1])
    for case in cases(model_id):
        inputs = []
        for name, arr in read_dump(case, "inputs.json"):
            inp = httpclient.InferInput(name, list(arr.shape), np_to_triton_dtype(arr.dtype))
            inp.set_data_from_numpy(arr, binary_data=True)
            inputs.append(inp)
        expected = read_dump(case, "outputs.json")
        wanted = [httpclient.InferRequestedOutput(name, binary_data=True) for name, _ in expected]
        result = real_client.infer(model_id, inputs, outputs=wanted)
        for name, want in expected:
            got = result.as_numpy(name)
            assert got is not None, f"{model_id}/{case.name}: no output `{name}` in the response"
            assert got.shape == want.shape, f"{model_id}/{case.name} `{name}`: shape {got.shape}, want {want.shape}"
            if want.dtype == np.object_:
                np.testing.assert_array_equal(got.astype(bytes), want.astype(bytes), err_msg=f"{model_id}/{case.name} `{name}`")
            elif np.issubdtype(want.dtype, np.floating):
                np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, err_msg=f"{model_id}/{case.name} `{name}`")
            else:
                np.testing.assert_array_equal(got, want, err_msg=f"{model_id}/{case.name} `{name}`")


def graph_dims(value_infos):
    """Per tensor, its dims with None where the ONNX graph leaves the size open."""
    dims = {}
    for v in value_infos:
        shape = v.type.tensor_type.shape
        dims[v.name] = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in shape.dim]
    return dims


@pytest.mark.parametrize("model_id", MODELS)
def test_metadata_reports_dynamic_dims_as_minus_one(packages, real_agent, real_client, model_id):
    require_package(packages, model_id)
    wait_ready(real_client, model_id, real_agent[1])
    graph = onnx.load(str(ROOT / model_id / "model.onnx"), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    meta = real_client.get_model_metadata(model_id)
    declared_in = graph_dims(i for i in graph.input if i.name not in inits)
    served_in = {t["name"]: t["shape"] for t in meta["inputs"]}
    assert set(served_in) == set(declared_in), f"inputs {sorted(served_in)} != graph {sorted(declared_in)}"
    for name, dims in declared_in.items():
        want = [-1 if d is None else d for d in dims]
        assert served_in[name] == want, f"input `{name}`: metadata {served_in[name]}, graph says {want}"
    # Output sizes may be fixed by the graph even where the declaration left them open, so only
    # the dims the graph declares open and that really vary between the cases must be -1.
    served_out = {t["name"]: t["shape"] for t in meta["outputs"]}
    for name, dims in graph_dims(graph.output).items():
        assert name in served_out, f"output `{name}` missing from metadata {sorted(served_out)}"
        shapes = [dict(read_dump(c, "outputs.json"))[name].shape for c in cases(model_id)]
        assert len(served_out[name]) == len(shapes[0]), f"output `{name}`: rank of {served_out[name]}"
        for axis, d in enumerate(dims):
            varies = len({s[axis] for s in shapes}) > 1
            if d is None and varies:
                assert served_out[name][axis] == -1, f"output `{name}` dim {axis} varies but metadata says {served_out[name]}"
