#!/usr/bin/env python3
"""Test cases for the real models scripts/fetch-models.sh pins (from PyPI wheels), at the input
sizes their applications use, with inputs that look like what those applications feed.

usage: python scripts/test-models/fetched.py [OUT]     (OUT defaults to target/models/generated)

Reads target/models/<id>.onnx (or $OUTPOST_FETCHED_MODELS/<id>.onnx) and writes OUT/<id>/ with a
copy of the model and its cases (see _dump.py). A missing model is an error naming the script
that fetches it: silently skipping one would let a test suite pass on less than it claims.

- oww-melspec: openWakeWord's log-mel front end, int16-scaled float samples, any count: 1280
  (one 80 ms streaming frame) and 16000 (one second).
- oww-embedding: openWakeWord's speech-embedding CNN (tf2onnx, NHWC), fed a real 76-frame
  window of the front end's output transformed the way openWakeWord does (x / 10 + 2).
- ppocr-cls: the orientation classifier at rapidocr's 48x192, batches of 1 and 3.
- ppocr-rec: the PP-OCRv4 recogniser at widths 160 and 320.
"""
from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _dump  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FETCHED = os.environ.get("OUTPOST_FETCHED_MODELS", os.path.join(REPO, "target", "models"))


def source(model_id: str) -> str:
    path = os.path.join(FETCHED, f"{model_id}.onnx")
    if not os.path.isfile(path):
        raise SystemExit(f"fetched.py: {path} is missing: run scripts/fetch-models.sh first")
    return path


def speech_like(rng: np.random.Generator, samples: int, rate: int = 16000) -> np.ndarray:
    """Voiced-speech-like 16 kHz audio in int16 units (openWakeWord feeds raw int16 values as
    float32): a gliding 120-220 Hz pitch with harmonics under a syllable envelope, plus noise."""
    t = np.arange(samples) / rate
    f0 = 120 + 100 * np.sin(2 * np.pi * 0.7 * t) ** 2
    phase = 2 * np.pi * np.cumsum(f0) / rate
    voiced = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3.0 * t) ** 2
    audio = 6000 * envelope * voiced + rng.normal(0, 300, samples)
    return np.clip(np.round(audio), -32768, 32767).astype(np.float32)[None, :]


def text_crops(rng: np.random.Generator, batch: int, width: int) -> np.ndarray:
    """Text-line crops as rapidocr preprocesses them: BGR in [0, 255] -> /255 -> (x-0.5)/0.5,
    CHW. Light paper, dark strokes in character-sized groups, coloured ink and noise."""
    out = np.empty((batch, 3, 48, width), np.float32)
    for b in range(batch):
        img = np.full((48, width, 3), rng.uniform(200, 250), np.float32)
        ink = rng.uniform(0, 80, 3)
        col = 4
        while col < width - 12:
            glyph = int(rng.integers(14, 26))
            for _ in range(int(rng.integers(2, 5))):
                x0, y0 = col + int(rng.integers(0, glyph - 4)), int(rng.integers(6, 20))
                img[y0:y0 + int(rng.integers(10, 30)), x0:x0 + 3] = ink
            img[int(rng.integers(10, 38)), col:col + glyph - 4] = ink
            col += glyph + int(rng.integers(2, 8))
        img += rng.normal(0, 6, img.shape)
        out[b] = ((np.clip(img, 0, 255) / 255 - 0.5) / 0.5).transpose(2, 0, 1)
    return out


def main(argv: list[str]) -> int:
    out = argv[1] if len(argv) > 1 else os.path.join("target", "models", "generated")
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(3)

    mel = _dump.write_model(out, "oww-melspec", source=source("oww-melspec"))
    second = speech_like(rng, 16000)
    frames = _dump.write_cases(mel, [{"input": speech_like(rng, 1280)}, {"input": second}])
    print(_dump.describe(mel))

    # openWakeWord: melspec output [time, 1, frames, 32] -> squeeze -> x / 10 + 2 -> windows of 76.
    spec = np.squeeze(frames[1][0]) / 10 + 2
    if spec.shape[0] < 76 + 8:
        raise SystemExit(f"oww-melspec gave {spec.shape[0]} frames for 1 s; expected about 97")
    windows = [spec[i:i + 76][None, :, :, None].astype(np.float32) for i in (0, 8)]
    emb = _dump.write_model(out, "oww-embedding", source=source("oww-embedding"))
    _dump.write_cases(emb, [{"input_1": w} for w in windows])
    print(_dump.describe(emb))

    cls = _dump.write_model(out, "ppocr-cls", source=source("ppocr-cls"))
    _dump.write_cases(cls, [{"x": text_crops(rng, 1, 192)}, {"x": text_crops(rng, 3, 192)}])
    print(_dump.describe(cls))

    rec = _dump.write_model(out, "ppocr-rec", source=source("ppocr-rec"))
    _dump.write_cases(rec, [{"x": text_crops(rng, 1, 160)}, {"x": text_crops(rng, 1, 320)}])
    print(_dump.describe(rec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
