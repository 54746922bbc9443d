"""The held-out digits of bench/delta/finetune.py as evaluation samples for
`outpost model delta lossy --eval`: one directory per image, `case-NNN/` with `inputs.json`
(the `pack --inputs` format), the raw float32 input and `labels.json` (its class).

    python evalset.py OUT_DIR
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from finetune import data  # noqa: E402  (seeded at import, so the split is finetune.py's)


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    _, _, xte, yte = data()
    for i, (x, y) in enumerate(zip(xte, yte)):
        case = out / f"case-{i:03d}"
        case.mkdir(exist_ok=True)
        (case / "input.bin").write_bytes(x.unsqueeze(0).numpy().astype("<f4").tobytes())
        index = [{"name": "input", "dtype": "float32", "shape": [1, 3, 32, 32], "file": "input.bin"}]
        (case / "inputs.json").write_text(json.dumps(index))
        (case / "labels.json").write_text(json.dumps([int(y)]))
    print(f"{len(xte)} evaluation cases in {out}")


if __name__ == "__main__":
    main()
