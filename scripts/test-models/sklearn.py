#!/usr/bin/env python3
"""Builds small scikit-learn models, exports them with skl2onnx and records onnxruntime's outputs.

These are the fixtures of the tract backend's `ai.onnx.ml` operators (Scaler, TreeEnsemble*,
SVM*, LabelEncoder, Imputer, ...): the Rust tests load each `model-tensor.onnx` with tract and
compare with the outputs recorded here.

    python scripts/test-models/sklearn.py [OUT]      # OUT defaults to target/models/generated

For every model it writes `OUT/sklearn-<id>/`:

- `model.onnx`: skl2onnx's default export, `to_onnx(model, X[:1])` (classifiers keep ZipMap);
- `model-tensor.onnx`: for classifiers the same model exported with `zipmap=False` (same output
  names and values, a tensor instead of a sequence of maps); for the others a copy of model.onnx;
- `case0/` (batch 1) and `case1/` (batch 5): `inputs.json` and `outputs.json`, each a JSON list of
  `{"name", "dtype", "shape", "file"}` in graph order, and one raw little-endian C-order file per
  tensor beside them. `dtype` is a numpy name (`float32`, `int64`); string tensors use `str` and
  the Open Inference Protocol BYTES layout (a 4-byte little-endian length before each UTF-8
  element). A ZipMap output (a sequence of maps) is written as its float32 [N, C] probability
  matrix under the graph output's name.

Everything is seeded, so two runs write the same files. Nothing is skipped: a model that fails to
fit, export or run stops the script with an error naming it.
"""

import json
import shutil
import sys
import warnings
from pathlib import Path

# This file is named sklearn.py, and Python puts its directory first on the import path, where it
# would shadow scikit-learn itself.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
from skl2onnx import to_onnx
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    GradientBoostingClassifier,
    GradientBoostingRegressor,
    IsolationForest,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Binarizer, MinMaxScaler, OneHotEncoder, StandardScaler
from sklearn.svm import SVC, SVR, OneClassSVM

SEED = 0
N_TRAIN = 120
N_FEATURES = 4
# skl2onnx 1.20 asks for LabelEncoder at the newest ai.onnx.ml opset the installed onnx knows (4)
# and then refuses it as "not supported yet"; its own message says to pin ai.onnx.ml to 3.
ML_OPSET_3 = {"": skl2onnx.get_latest_tested_opset_version(), "ai.onnx.ml": 3}


def data(rng, n, nan_fraction=0.0):
    """Features of one synthetic problem: four correlated Gaussian columns, float32."""
    x = rng.normal(size=(n, N_FEATURES))
    x[:, 1] += 0.5 * x[:, 0]
    x[:, 3] = np.abs(x[:, 3]) * 2.0
    x = x.astype(np.float32)
    if nan_fraction:
        x[rng.random(size=x.shape) < nan_fraction] = np.nan
    return x


def with_category(rng, n):
    """Two numeric columns and a third holding a category code 0, 1 or 2 (as a float)."""
    x = data(rng, n)[:, :3].copy()
    x[:, 2] = rng.integers(0, 3, size=n).astype(np.float32)
    return x


def binary(x):
    return (np.nan_to_num(x[:, 0]) + 0.7 * np.nan_to_num(x[:, 1]) > 0.2).astype(np.int64)


def three_classes(x):
    s = np.nan_to_num(x[:, 0]) - 0.5 * np.nan_to_num(x[:, 2])
    return np.digitize(s, [-0.5, 0.5]).astype(np.int64)


def regression(x):
    x = np.nan_to_num(x)
    return (1.5 * x[:, 0] - 2.0 * x[:, 1] + np.sin(x[:, 2]) + 0.3 * x[:, 3]).astype(np.float32)


def specs():
    """(id, make model, features, targets or None, whether it is a classifier, target opset)."""
    return [
        ("isolation-forest", lambda: IsolationForest(n_estimators=10, random_state=SEED), data, None, False, ML_OPSET_3),
        (
            "scaler-gbc",
            lambda: make_pipeline(StandardScaler(), GradientBoostingClassifier(n_estimators=10, random_state=SEED)),
            data,
            binary,
            True,
            None,
        ),
        (
            "gbc-3class",
            lambda: GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=SEED),
            data,
            three_classes,
            True,
            None,
        ),
        ("gbr", lambda: GradientBoostingRegressor(n_estimators=10, random_state=SEED), data, regression, False, None),
        ("minmax-logreg", lambda: make_pipeline(MinMaxScaler(), LogisticRegression()), data, three_classes, True, None),
        (
            "rf-regressor",
            lambda: RandomForestRegressor(n_estimators=6, max_depth=4, random_state=SEED),
            data,
            regression,
            False,
            None,
        ),
        (
            "rf-classifier",
            lambda: RandomForestClassifier(n_estimators=6, max_depth=4, random_state=SEED),
            data,
            binary,
            True,
            None,
        ),
        ("svc", lambda: SVC(probability=True, random_state=SEED), data, three_classes, True, None),
        ("svc-binary", lambda: SVC(probability=True, random_state=SEED), data, binary, True, None),
        ("svr", lambda: SVR(), data, regression, False, None),
        ("oneclass-svm", lambda: OneClassSVM(nu=0.2), data, None, False, None),
        (
            "imputer-ridge",
            lambda: make_pipeline(SimpleImputer(strategy="mean"), Ridge(alpha=0.5)),
            lambda rng, n: data(rng, n, nan_fraction=0.15),
            regression,
            False,
            None,
        ),
        (
            "string-labels",
            lambda: RandomForestClassifier(n_estimators=5, max_depth=3, random_state=SEED),
            data,
            lambda x: np.array(["bird", "cat", "dog"], dtype=object)[three_classes(x)],
            True,
            None,
        ),
        (
            "binarizer-logreg",
            lambda: make_pipeline(Binarizer(threshold=0.1), LogisticRegression()),
            data,
            binary,
            True,
            None,
        ),
        (
            "column-onehot",
            lambda: make_pipeline(
                ColumnTransformer(
                    [("num", StandardScaler(), [0, 1]), ("cat", OneHotEncoder(handle_unknown="ignore"), [2])]
                ),
                LogisticRegression(),
            ),
            with_category,
            three_classes,
            True,
            None,
        ),
    ]


def write_tensors(directory, index_name, tensors):
    """Writes `index_name` (a list of name/dtype/shape/file) and one raw file per tensor."""
    index = []
    for i, (name, array) in enumerate(tensors):
        file = f"{index_name.split('.')[0]}_{i}.bin"
        if array.dtype.kind in "OUS":
            raw = b"".join(
                len(b).to_bytes(4, "little") + b for b in (str(s).encode("utf-8") for s in array.reshape(-1))
            )
            dtype = "str"
        else:
            array = np.ascontiguousarray(array)
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
            dtype = array.dtype.name
        (directory / file).write_bytes(raw)
        index.append({"name": name, "dtype": dtype, "shape": list(array.shape), "file": file})
    (directory / index_name).write_text(json.dumps(index, indent=1) + "\n")


def as_array(value, n_rows):
    """An onnxruntime output as an array; a ZipMap (list of dicts) as its probability matrix."""
    if isinstance(value, list):
        if len(value) != n_rows or not all(isinstance(row, dict) for row in value):
            raise RuntimeError(f"unexpected sequence output: {value!r}")
        return np.array([list(row.values()) for row in value], dtype=np.float32).reshape(n_rows, -1)
    return np.asarray(value)


def run(session, x):
    names = [o.name for o in session.get_outputs()]
    values = session.run(None, {session.get_inputs()[0].name: x})
    return [(name, as_array(v, x.shape[0])) for name, v in zip(names, values)]


def session(model):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def export(model_id, model, x, target_opset, options=None):
    try:
        with warnings.catch_warnings():
            # skl2onnx reads SVC's probA_/probB_, deprecated (not yet removed) in scikit-learn 1.9.
            warnings.simplefilter("ignore", FutureWarning)
            exported = to_onnx(model, x[:1], target_opset=target_opset, options=options)
    except Exception as e:
        raise RuntimeError(f"sklearn-{model_id}: skl2onnx cannot export {type(model).__name__}: {e}") from e
    # skl2onnx lists the opsets in the order of a Python set of strings, which changes with the
    # interpreter's hash seed: sort them (and drop duplicates) so the file is the same every run.
    opsets = sorted({(o.domain, o.version) for o in exported.opset_import})
    del exported.opset_import[:]
    for domain, version in opsets:
        exported.opset_import.add(domain=domain, version=version)
    return exported


def rename_outputs(model, names):
    """Gives the graph outputs of `model` these names, everywhere the tensors are used."""
    renames = {o.name: new for o, new in zip(model.graph.output, names) if o.name != new}
    for node in model.graph.node:
        node.input[:] = [renames.get(n, n) for n in node.input]
        node.output[:] = [renames.get(n, n) for n in node.output]
    for o in model.graph.output:
        o.name = renames.get(o.name, o.name)
    onnx.checker.check_model(model)
    return model


def build(out, model_id, make, features, targets, classifier, target_opset):
    rng = np.random.default_rng(SEED)
    x_train = features(rng, N_TRAIN)
    model = make()
    with warnings.catch_warnings():
        # SVC(probability=True) is deprecated in scikit-learn 1.9 but still what users export.
        warnings.simplefilter("ignore", FutureWarning)
        if targets is None:
            model.fit(x_train)
        else:
            model.fit(x_train, targets(x_train))
    onnx_model = export(model_id, model, x_train, target_opset)
    tensor_model = onnx_model
    if classifier:
        # Without ZipMap skl2onnx names the outputs `label` and `probabilities`; the tests want the
        # names of the default export, as a ZipMap rewritten into a tensor keeps them.
        tensor_model = export(model_id, model, x_train, target_opset, options={id(model): {"zipmap": False}})
        tensor_model = rename_outputs(tensor_model, [o.name for o in onnx_model.graph.output])
    directory = out / f"sklearn-{model_id}"
    if directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True)
    onnx.save(onnx_model, directory / "model.onnx")
    onnx.save(tensor_model, directory / "model-tensor.onnx")

    default, tensor = session(onnx_model), session(tensor_model)
    if [o.name for o in default.get_outputs()] != [o.name for o in tensor.get_outputs()]:
        raise RuntimeError(f"sklearn-{model_id}: the zipmap=False export renamed the outputs")
    ops = sorted({f"{n.domain or 'ai.onnx'}:{n.op_type}" for n in tensor_model.graph.node})
    for case, batch in (("case0", 1), ("case1", 5)):
        x = features(rng, batch)
        outputs = run(default, x)
        for (name, want), (_, got) in zip(outputs, run(tensor, x)):
            if want.dtype.kind in "OUS":
                same = np.array_equal(want.astype(str), got.astype(str))
            else:
                same = want.shape == got.shape and np.allclose(want, got, rtol=1e-6, atol=1e-7, equal_nan=True)
            if not same:
                raise RuntimeError(f"sklearn-{model_id}: output `{name}` differs between the two exports")
        case_dir = directory / case
        case_dir.mkdir()
        write_tensors(case_dir, "inputs.json", [(default.get_inputs()[0].name, x)])
        write_tensors(case_dir, "outputs.json", outputs)
    print(f"sklearn-{model_id}: {', '.join(ops)}")


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "target/models/generated")
    out.mkdir(parents=True, exist_ok=True)
    for spec in specs():
        build(out, *spec)


if __name__ == "__main__":
    main()
