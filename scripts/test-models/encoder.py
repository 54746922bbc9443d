#!/usr/bin/env python3
"""A small BERT-style sentence encoder, as the PyTorch/Hugging Face exporter lays it out, plus
the two derivatives users actually bring: onnxruntime's transformer-optimised graph
(com.microsoft fused ops) and onnxruntime's dynamic int8 quantisation.

usage: python scripts/test-models/encoder.py [OUT]     (OUT defaults to target/models/generated)

Writes OUT/encoder, OUT/encoder-ortopt and OUT/encoder-int8 (see _dump.py for the layout).

Why hand-built rather than exported from a real checkpoint: no model hub is reachable, and a
checkpoint small enough to commit to a test suite does not ship in any wheel. What matters for
outpost is the *graph shape*, so this follows `torch.onnx.export(BertModel)` node for node at
opset 14: int64 `input_ids`/`attention_mask`/`token_type_ids` with dims `batch` and `sequence`;
Gather embeddings (word, position, 2-row token type); position ids sliced from a constant
buffer by `Shape`; the decomposed LayerNorm (ReduceMean/Sub/Pow/Sqrt/Div); the additive
attention mask `(1 - mask) * finfo.min`; head split/merge reshapes computed from `Shape`;
Erf GELU; then sentence-transformers' masked mean pooling. Weights are seeded random, scaled
like a trained model's activations (unit variance after each projection) so that attention is
not uniform and quantisation error is realistic.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _dump  # noqa: E402

VOCAB = 1000
HIDDEN = 64
LAYERS = 2
HEADS = 4
HEAD_DIM = HIDDEN // HEADS
INTERMEDIATE = 4 * HIDDEN
MAX_POSITIONS = 128
TYPE_VOCAB = 2
OPSET = 14
LN_EPS = 1e-12
FLOAT_MIN = float(np.finfo(np.float32).min)


class Graph:
    """Collects nodes and initialisers with exporter-style names (`/encoder/layer.0/...`)."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._const = 0

    def init(self, name: str, arr: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def const(self, arr, dtype=np.int64) -> str:
        """A Constant node, as torch emits for literals (not an initialiser)."""
        self._const += 1
        name = f"/Constant_{self._const}_output_0"
        value = numpy_helper.from_array(np.asarray(arr, dtype=dtype), name + "_value")
        self.nodes.append(helper.make_node("Constant", [], [name], name=f"/Constant_{self._const}", value=value))
        return name

    def op(self, op_type: str, name: str, inputs: list[str], **attrs) -> str:
        out = f"{name}_output_0"
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def weight(self, name: str, shape, std: float) -> str:
        return self.init(name, self.rng.normal(0.0, std, size=shape).astype(np.float32))

    def linear(self, prefix: str, x: str, fan_in: int, fan_out: int, torch_name: str) -> str:
        # torch exports nn.Linear on 3-D input as MatMul with the transposed weight folded into an
        # initialiser named onnx::MatMul_N, then Add(bias, product).
        w = self.weight(f"onnx::MatMul_{torch_name}", (fan_in, fan_out), 1.0 / np.sqrt(fan_in))
        b = self.weight(f"{torch_name}.bias", (fan_out,), 0.02)
        mm = self.op("MatMul", f"{prefix}/MatMul", [x, w])
        return self.op("Add", f"{prefix}/Add", [b, mm])

    def layer_norm(self, prefix: str, x: str, torch_name: str) -> str:
        gamma = self.init(f"{torch_name}.weight", (1.0 + self.rng.normal(0, 0.05, HIDDEN)).astype(np.float32))
        beta = self.weight(f"{torch_name}.bias", (HIDDEN,), 0.02)
        mean = self.op("ReduceMean", f"{prefix}/ReduceMean", [x], axes=[-1], keepdims=1)
        centred = self.op("Sub", f"{prefix}/Sub", [x, mean])
        sq = self.op("Pow", f"{prefix}/Pow", [centred, self.const(2.0, np.float32)])
        var = self.op("ReduceMean", f"{prefix}/ReduceMean_1", [sq], axes=[-1], keepdims=1)
        var_eps = self.op("Add", f"{prefix}/Add", [var, self.const(LN_EPS, np.float32)])
        std = self.op("Sqrt", f"{prefix}/Sqrt", [var_eps])
        normed = self.op("Div", f"{prefix}/Div", [centred, std])
        scaled = self.op("Mul", f"{prefix}/Mul", [normed, gamma])
        return self.op("Add", f"{prefix}/Add_1", [scaled, beta])

    def dim(self, prefix: str, x: str, axis: int) -> str:
        """`x.size(axis)` as a 1-element int64 tensor, the way torch exports it."""
        shape = self.op("Shape", f"{prefix}/Shape_{axis}", [x])
        d = self.op("Gather", f"{prefix}/Gather_{axis}", [shape, self.const(axis)], axis=0)
        return self.op("Unsqueeze", f"{prefix}/Unsqueeze_{axis}", [d, self.const([0])])


def attention(g: Graph, i: int, h: str, mask: str) -> str:
    p = f"/encoder/layer.{i}/attention/self"
    t = f"encoder.layer.{i}.attention.self"
    batch, seq = g.dim(p, h, 0), g.dim(p, h, 1)
    heads_shape = g.op("Concat", f"{p}/Concat", [batch, seq, g.const([HEADS]), g.const([HEAD_DIM])], axis=0)

    def split_heads(x: str, which: str, perm: list[int]) -> str:
        r = g.op("Reshape", f"{p}/{which}/Reshape", [x, heads_shape])
        return g.op("Transpose", f"{p}/{which}/Transpose", [r], perm=perm)

    q = split_heads(g.linear(f"{p}/query", h, HIDDEN, HIDDEN, f"{t}.query"), "query", [0, 2, 1, 3])
    k = split_heads(g.linear(f"{p}/key", h, HIDDEN, HIDDEN, f"{t}.key"), "key", [0, 2, 3, 1])
    v = split_heads(g.linear(f"{p}/value", h, HIDDEN, HIDDEN, f"{t}.value"), "value", [0, 2, 1, 3])
    scores = g.op("MatMul", f"{p}/MatMul", [q, k])
    scaled = g.op("Div", f"{p}/Div", [scores, g.const(np.sqrt(HEAD_DIM), np.float32)])
    masked = g.op("Add", f"{p}/Add", [scaled, mask])
    probs = g.op("Softmax", f"{p}/Softmax", [masked], axis=-1)
    ctx = g.op("MatMul", f"{p}/MatMul_1", [probs, v])
    ctx = g.op("Transpose", f"{p}/Transpose", [ctx], perm=[0, 2, 1, 3])
    merged_shape = g.op("Concat", f"{p}/Concat_1", [batch, seq, g.const([HIDDEN])], axis=0)
    ctx = g.op("Reshape", f"{p}/Reshape", [ctx, merged_shape])

    po = f"/encoder/layer.{i}/attention/output"
    to = f"encoder.layer.{i}.attention.output"
    dense = g.linear(f"{po}/dense", ctx, HIDDEN, HIDDEN, f"{to}.dense")
    res = g.op("Add", f"{po}/Add", [dense, h])
    return g.layer_norm(f"{po}/LayerNorm", res, f"{to}.LayerNorm")


def feed_forward(g: Graph, i: int, h: str) -> str:
    pi = f"/encoder/layer.{i}/intermediate"
    up = g.linear(f"{pi}/dense", h, HIDDEN, INTERMEDIATE, f"encoder.layer.{i}.intermediate.dense")
    # transformers' GELUActivation: x * 0.5 * (1 + erf(x / sqrt(2)))
    a = g.op("Div", f"{pi}/intermediate_act_fn/Div", [up, g.const(1.4142135381698608, np.float32)])
    e = g.op("Erf", f"{pi}/intermediate_act_fn/Erf", [a])
    one = g.op("Add", f"{pi}/intermediate_act_fn/Add", [e, g.const(1.0, np.float32)])
    m = g.op("Mul", f"{pi}/intermediate_act_fn/Mul", [up, one])
    gelu = g.op("Mul", f"{pi}/intermediate_act_fn/Mul_1", [m, g.const(0.5, np.float32)])
    po = f"/encoder/layer.{i}/output"
    down = g.linear(f"{po}/dense", gelu, INTERMEDIATE, HIDDEN, f"encoder.layer.{i}.output.dense")
    res = g.op("Add", f"{po}/Add", [down, h])
    return g.layer_norm(f"{po}/LayerNorm", res, f"encoder.layer.{i}.output.LayerNorm")


def build(seed: int = 0) -> onnx.ModelProto:
    g = Graph(np.random.default_rng(seed))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"])
              for n in ("input_ids", "attention_mask", "token_type_ids")]

    # Embeddings: std 0.5 keeps the sum of three tables well above LayerNorm's epsilon.
    word = g.weight("embeddings.word_embeddings.weight", (VOCAB, HIDDEN), 0.5)
    pos = g.weight("embeddings.position_embeddings.weight", (MAX_POSITIONS, HIDDEN), 0.5)
    typ = g.weight("embeddings.token_type_embeddings.weight", (TYPE_VOCAB, HIDDEN), 0.5)
    pos_buffer = g.init("embeddings.position_ids", np.arange(MAX_POSITIONS, dtype=np.int64)[None, :])
    e = "/embeddings"
    seq_len = g.dim(e, "input_ids", 1)
    position_ids = g.op("Slice", f"{e}/Slice", [pos_buffer, g.const([0]), seq_len, g.const([1]), g.const([1])])
    we = g.op("Gather", f"{e}/word_embeddings/Gather", [word, "input_ids"])
    te = g.op("Gather", f"{e}/token_type_embeddings/Gather", [typ, "token_type_ids"])
    x = g.op("Add", f"{e}/Add", [we, te])
    pe = g.op("Gather", f"{e}/position_embeddings/Gather", [pos, position_ids])
    x = g.op("Add", f"{e}/Add_1", [x, pe])
    h = g.layer_norm(f"{e}/LayerNorm", x, "embeddings.LayerNorm")

    # get_extended_attention_mask: mask[:, None, None, :], then (1 - mask) * finfo(float32).min
    m = g.op("Unsqueeze", "/Unsqueeze", ["attention_mask", g.const([1])])
    m = g.op("Unsqueeze", "/Unsqueeze_1", [m, g.const([2])])
    m = g.op("Cast", "/Cast", [m], to=TensorProto.FLOAT)
    m = g.op("Sub", "/Sub", [g.const(1.0, np.float32), m])
    mask = g.op("Mul", "/Mul", [m, g.const(FLOAT_MIN, np.float32)])

    for i in range(LAYERS):
        h = feed_forward(g, i, attention(g, i, h, mask))
    g.nodes.append(helper.make_node("Identity", [h], ["last_hidden_state"], name="/Identity_last_hidden_state"))

    # sentence-transformers Pooling(mode="mean"): masked sum over the sequence / clamp(count, 1e-9)
    p = "/pooling"
    mk = g.op("Unsqueeze", f"{p}/Unsqueeze", ["attention_mask", g.const([-1])])
    mk = g.op("Expand", f"{p}/Expand", [mk, g.op("Shape", f"{p}/Shape", ["last_hidden_state"])])
    mk = g.op("Cast", f"{p}/Cast", [mk], to=TensorProto.FLOAT)
    summed = g.op("ReduceSum", f"{p}/ReduceSum", [g.op("Mul", f"{p}/Mul", ["last_hidden_state", mk]), g.const([1])],
                  keepdims=0)
    count = g.op("ReduceSum", f"{p}/ReduceSum_1", [mk, g.const([1])], keepdims=0)
    count = g.op("Clip", f"{p}/Clip", [count, g.const(1e-9, np.float32)])
    g.nodes.append(helper.make_node("Div", [summed, count], ["sentence_embedding"], name=f"{p}/Div"))

    outputs = [
        helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT, ["batch", "sequence", HIDDEN]),
        helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, ["batch", HIDDEN]),
    ]
    graph = helper.make_graph(g.nodes, "main_graph", inputs, outputs, g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pytorch", producer_version="2.5.1")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model


def token_batch(rng: np.random.Generator, lengths: list[int], sequence: int) -> dict[str, np.ndarray]:
    """A padded tokenizer batch: [CLS]=101 ... [SEP]=102 then [PAD]=0, masks of 1s with trailing
    0s, token types 0 for the first segment and 1 for the second (pairs) within the real tokens."""
    batch = len(lengths)
    ids = np.zeros((batch, sequence), np.int64)
    mask = np.zeros((batch, sequence), np.int64)
    types = np.zeros((batch, sequence), np.int64)
    for b, n in enumerate(lengths):
        ids[b, :n] = rng.integers(1000 // 10, VOCAB, size=n)
        ids[b, 0], ids[b, n - 1] = 101, 102
        mask[b, :n] = 1
        if b % 2 == 1 and n > 4:
            types[b, n // 2:n] = 1  # a sentence pair: second segment gets type 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}


def cases(seed: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        token_batch(rng, [7], 7),  # one sentence, no padding
        token_batch(rng, [32, 19, 5], 32),  # a padded batch, one sentence pair
        token_batch(rng, [12, 9], 16),
    ]


def optimise(src: str) -> bytes:
    """onnxruntime.transformers.optimizer for BERT: com.microsoft EmbedLayerNormalization,
    Attention, SkipLayerNormalization, BiasGelu (the graph users get from `optimum` or the
    onnxruntime docs' recipe). opt_level 0: the Python fusions only, so the result does not
    depend on which onnxruntime graph rewrites happen to run."""
    from onnxruntime.transformers import optimizer

    opt = optimizer.optimize_model(src, model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=0)
    return opt.model.SerializeToString()


def quantise(src: str, dst: str) -> None:
    """onnxruntime.quantization.quantize_dynamic, int8 weights (the usual CPU recipe), with
    `reduce_range` (7-bit weights), as onnxruntime's docs advise for x86 CPUs without VNNI.

    Why not full-range int8: onnxruntime's u8 x s8 kernels on AVX2 without VNNI add pairs of
    products in saturating 16-bit lanes (vpmaddubsw), so its results differ from the ONNX
    specification (MatMulInteger accumulates in int32) by as much as the quantisation error
    itself (|d| ~ 0.1 on this encoder; onnx.reference and tract agree with each other to 5e-7).
    Recorded outputs would then depend on the CPU that made them. With 7-bit weights no pair
    sum can saturate, and onnxruntime, onnx.reference and tract all agree."""
    import logging

    from onnxruntime.quantization import QuantType, quantize_dynamic

    # It logs a generic "consider pre-processing" warning on every call; the graph is already
    # shape-inferred and clean, so keep the build log to what matters.
    logging.getLogger().setLevel(logging.ERROR)
    quantize_dynamic(src, dst, weight_type=QuantType.QInt8, reduce_range=True)


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else os.path.join("target", "models", "generated")
    os.makedirs(out, exist_ok=True)
    base = _dump.write_model(out, "encoder", build().SerializeToString())
    src = os.path.join(base, "model.onnx")
    _dump.write_cases(base, cases(1))
    print(_dump.describe(base))

    fused = _dump.write_model(out, "encoder-ortopt", optimise(src))
    _dump.write_cases(fused, cases(1))
    print(_dump.describe(fused))

    q = _dump.write_model(out, "encoder-int8", b"")
    quantise(src, os.path.join(q, "model.onnx"))
    _dump.write_cases(q, cases(1))
    print(_dump.describe(q))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
