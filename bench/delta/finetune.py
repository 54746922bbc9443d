"""Real model versions for bench/delta.sh: a torchvision MobileNetV2 trained from scratch on
scikit-learn's bundled digits (8x8, upscaled to 32x32 RGB), then changed the ways a team
changes a model, each exported to ONNX by PyTorch's exporter. Seeded: the same run gives the
same weights on the same machine.

    python finetune.py OUT_DIR

Writes OUT_DIR/<variant>.onnx and OUT_DIR/accuracy.json (test accuracy of each).
"""

import copy
import json
import random
import sys
from pathlib import Path

import numpy as np
import onnx
import torch
import torchvision
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

SEED = 20261130
torch.manual_seed(SEED)
random.seed(SEED)
np.random.seed(SEED)
torch.set_num_threads(max(1, torch.get_num_threads()))


def data():
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = torch.nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    x = (x.repeat(1, 3, 1, 1) - 0.5) / 0.5
    y = torch.tensor(digits.target, dtype=torch.long)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=SEED, stratify=y)
    return xtr, ytr, xte, yte


def shifted(x, seed):
    """The same digits moved by up to 2 pixels: the 'new data' a fine-tune adapts to."""
    g = torch.Generator().manual_seed(seed)
    dx, dy = torch.randint(-2, 3, (2,), generator=g).tolist()
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


def train(model, x, y, epochs, lr, params=None, bn_train=True, seed=0):
    g = torch.Generator().manual_seed(SEED + seed)
    opt = torch.optim.Adam(params if params is not None else model.parameters(), lr=lr)
    for _ in range(epochs):
        model.train(bn_train)
        order = torch.randperm(len(x), generator=g)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
    model.eval()
    return model


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def export(model, path):
    model.eval()
    example = torch.zeros(1, 3, 32, 32)
    try:
        torch.onnx.export(model, example, path, input_names=["input"], output_names=["logits"],
                          opset_version=17, dynamo=False)
    except TypeError:
        torch.onnx.export(model, example, path, input_names=["input"], output_names=["logits"],
                          opset_version=17)


def head_only(model):
    for p in model.parameters():
        p.requires_grad_(False)
    head = list(model.classifier.parameters())
    for p in head:
        p.requires_grad_(True)
    return head


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xte, yte = data()
    acc = {}

    base = torchvision.models.mobilenet_v2(num_classes=10)
    train(base, xtr, ytr, epochs=8, lr=2e-3, seed=1)
    export(base, out / "base.onnx")
    acc["base"] = accuracy(base, xte, yte)

    new_x = torch.cat([xtr, shifted(xtr, 7)])
    new_y = torch.cat([ytr, ytr])

    m = copy.deepcopy(base)
    train(m, new_x, new_y, epochs=2, lr=1e-3, params=head_only(m), bn_train=False, seed=2)
    export(m, out / "head-bn-frozen.onnx")
    acc["head-bn-frozen"] = accuracy(m, xte, yte)

    m = copy.deepcopy(base)
    train(m, new_x, new_y, epochs=2, lr=1e-3, params=head_only(m), bn_train=True, seed=3)
    export(m, out / "head-bn-moving.onnx")
    acc["head-bn-moving"] = accuracy(m, xte, yte)

    m = copy.deepcopy(base)
    train(m, new_x, new_y, epochs=1, lr=1e-5, seed=4)
    export(m, out / "full-light.onnx")
    acc["full-light"] = accuracy(m, xte, yte)

    m = copy.deepcopy(base)
    train(m, new_x, new_y, epochs=3, lr=1e-4, seed=5)
    export(m, out / "full-heavy.onnx")
    acc["full-heavy"] = accuracy(m, xte, yte)

    # The same weights, written in another order (as another exporter or a graph pass does).
    proto = onnx.load(str(out / "base.onnx"))
    inits = list(proto.graph.initializer)
    random.Random(SEED).shuffle(inits)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(inits)
    onnx.save(proto, str(out / "reordered.onnx"))
    acc["reordered"] = acc["base"]

    # An int8 variant of the base: static QDQ quantisation calibrated on training digits.
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{"input": xtr[i : i + 1].numpy()} for i in range(0, 200)])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(out / "base.onnx"), str(out / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out / "int8.onnx"), providers=["CPUExecutionProvider"])
    pred = [sess.run(None, {"input": xte[i : i + 1].numpy()})[0].argmax(1)[0] for i in range(len(xte))]
    acc["int8"] = float((torch.tensor(pred) == yte).float().mean())

    # Unrelated: another architecture trained from scratch.
    other = torchvision.models.mobilenet_v3_small(num_classes=10)
    train(other, xtr, ytr, epochs=4, lr=2e-3, seed=6)
    export(other, out / "unrelated.onnx")
    acc["unrelated"] = accuracy(other, xte, yte)

    (out / "accuracy.json").write_text(json.dumps(acc, indent=1))
    print(json.dumps(acc))


if __name__ == "__main__":
    main()
