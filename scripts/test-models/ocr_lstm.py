#!/usr/bin/env python3
"""A small CRNN text-line recogniser (CNN, then a bidirectional LSTM over the width, then a
per-step classifier), in float and as onnxruntime's dynamic int8 quantisation of it.

usage: python scripts/test-models/ocr_lstm.py [OUT]     (OUT defaults to target/models/generated)

Writes OUT/ocr-lstm and OUT/ocr-lstm-int8 (see _dump.py for the layout).

Why: quantised CRNN OCR models are what users bring from PaddleOCR/EasyOCR-style pipelines, and
`quantize_dynamic` turns their LSTM into the com.microsoft `DynamicQuantizeLSTM` contrib op (and
Conv/MatMul into ConvInteger/MatMulInteger), which only onnxruntime runs. The input is a
grey-scale line image `[1, 1, 32, width]` with `width` dynamic; the output is `[width/4, 1, 40]`
logits (sequence first, as CTC losses want), one step per 4 input columns.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _dump  # noqa: E402

HEIGHT = 32
CLASSES = 40
C1, C2 = 16, 32
HIDDEN = 32
OPSET = 14


def build(seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    inits = []

    def w(name, shape, fan_in, scale=1.0):
        inits.append(numpy_helper.from_array(rng.normal(0, scale / np.sqrt(fan_in), shape).astype(np.float32), name))
        return name

    def c(name, values, dtype=np.int64):
        inits.append(numpy_helper.from_array(np.asarray(values, dtype=dtype), name))
        return name

    n = helper.make_node
    feat = C2 * (HEIGHT // 4)
    nodes = [
        n("Conv", ["x", w("conv1.weight", (C1, 1, 3, 3), 9, 2.0), w("conv1.bias", (C1,), 100)], ["c1"],
          name="/cnn/conv1/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c1"], ["r1"], name="/cnn/relu1/Relu"),
        n("MaxPool", ["r1"], ["p1"], name="/cnn/pool1/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        n("Conv", ["p1", w("conv2.weight", (C2, C1, 3, 3), C1 * 9, 2.0), w("conv2.bias", (C2,), 100)], ["c2"],
          name="/cnn/conv2/Conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        n("Relu", ["c2"], ["r2"], name="/cnn/relu2/Relu"),
        n("MaxPool", ["r2"], ["p2"], name="/cnn/pool2/MaxPool", kernel_shape=[2, 2], strides=[2, 2]),
        # [1, C2, 8, T] -> [T, 1, C2*8]: columns become time steps.
        n("Transpose", ["p2"], ["tp"], name="/Transpose", perm=[3, 0, 1, 2]),
        n("Reshape", ["tp", c("seq_shape", [0, 0, feat])], ["seq"], name="/Reshape"),
        n("LSTM", ["seq", w("lstm.W", (2, 4 * HIDDEN, feat), feat), w("lstm.R", (2, 4 * HIDDEN, HIDDEN), HIDDEN),
                   w("lstm.B", (2, 8 * HIDDEN), 100)], ["lstm_y"],
          name="/rnn/LSTM", hidden_size=HIDDEN, direction="bidirectional"),
        # Y is [T, 2, 1, H]: put both directions side by side per step.
        n("Transpose", ["lstm_y"], ["yt"], name="/Transpose_1", perm=[0, 2, 1, 3]),
        n("Reshape", ["yt", c("cat_shape", [0, 0, 2 * HIDDEN])], ["y"], name="/Reshape_1"),
        n("MatMul", ["y", w("fc.weight", (2 * HIDDEN, CLASSES), 2 * HIDDEN, 3.0)], ["fc"], name="/fc/MatMul"),
        n("Add", ["fc", w("fc.bias", (CLASSES,), 100)], ["logits"], name="/fc/Add"),
    ]
    graph = helper.make_graph(
        nodes, "crnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, HEIGHT, "width"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["steps", 1, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="pytorch")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def line_image(rng: np.random.Generator, width: int) -> np.ndarray:
    """A text-line-like image normalised as OCR front ends do ((x/255 - 0.5) / 0.5): light
    background, dark vertical strokes in glyph-sized groups, a little noise."""
    img = np.full((HEIGHT, width), 0.9, np.float32)
    col = 2
    while col < width - 4:
        glyph = int(rng.integers(6, 12))
        for s in range(int(rng.integers(1, 4))):
            x0 = col + int(rng.integers(0, max(1, glyph - 2)))
            top, bottom = int(rng.integers(4, 10)), int(rng.integers(22, 29))
            img[top:bottom, x0:x0 + 2] = 0.1
        img[int(rng.integers(8, 24)), col:col + glyph - 2] = 0.15
        col += glyph + int(rng.integers(1, 4))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return ((np.clip(img, 0, 1) - 0.5) / 0.5).astype(np.float32)[None, None]


def cases(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": line_image(rng, w)} for w in (64, 160, 100)]


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else os.path.join("target", "models", "generated")
    os.makedirs(out, exist_ok=True)
    base = _dump.write_model(out, "ocr-lstm", build().SerializeToString())
    _dump.write_cases(base, cases(2))
    print(_dump.describe(base))

    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    logging.getLogger().setLevel(logging.ERROR)  # its generic "consider pre-processing" warning
    q = _dump.write_model(out, "ocr-lstm-int8", b"")
    # Default op types: Conv -> ConvInteger, MatMul -> MatMulInteger, LSTM -> com.microsoft
    # DynamicQuantizeLSTM (the contrib op this model exists for). reduce_range: see encoder.py's
    # quantise (full-range int8 saturates in onnxruntime on CPUs without VNNI).
    quantize_dynamic(os.path.join(base, "model.onnx"), os.path.join(q, "model.onnx"), weight_type=QuantType.QInt8,
                     reduce_range=True)
    m = onnx.load(os.path.join(q, "model.onnx"))
    if not any(node.domain == "com.microsoft" for node in m.graph.node):
        raise SystemExit("ocr-lstm-int8: quantize_dynamic emitted no com.microsoft op; this fixture exists to cover one")
    _dump.write_cases(q, cases(2))
    print(_dump.describe(q))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
