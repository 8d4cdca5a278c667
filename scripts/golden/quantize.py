"""Golden blocks for our quantizer: gguf-py's `gguf.quants.quantize` of deterministic rows.

    .venv-golden/bin/python scripts/golden/quantize.py   -> tests/golden/quantize.json

For Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1 (the types gguf-py quantizes; it has no K-quantizer), rows of
256 values with edge cases: a block of zeros, ties at .5 steps, a lone outlier, negative and
positive extremes, tiny values. The Rust test (src/quant/tests.rs) quantizes the same rows and
compares the bytes.
"""
import hashlib
import json
from pathlib import Path

import numpy as np
import gguf

from model_util import versions

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests/golden/quantize.json"
TYPES = ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]


def rows() -> list:
    rng = np.random.default_rng(2026)
    out = [rng.standard_normal(256).astype(np.float32)]
    edge = rng.standard_normal(256).astype(np.float32) * np.float32(0.02)
    edge[:32] = 0.0  # a whole zero block
    edge[32:64] = np.arange(32, dtype=np.float32) / np.float32(4.0) - np.float32(4.0)  # .5-step ties
    edge[70] = np.float32(9.5)  # a lone outlier
    edge[96:128] = -np.abs(edge[96:128])  # all negative
    edge[128:160] = np.float32(1e-6) * (np.arange(32, dtype=np.float32) - 16)  # tiny
    out.append(edge)
    out.append((rng.uniform(-3, 3, 256) + 7).astype(np.float32))  # all positive, offset
    return out


def main() -> None:
    cases = []
    for x in rows():
        for name in TYPES:
            qtype = getattr(gguf.GGMLQuantizationType, name)
            q = gguf.quants.quantize(x.reshape(1, -1), qtype).reshape(-1)
            cases.append({"type": name, "x_hex": x.tobytes().hex(), "blocks_hex": q.tobytes().hex(),
                          "blocks_sha256": hashlib.sha256(q.tobytes()).hexdigest()})
    doc = {"generated_by": "scripts/golden/quantize.py", "versions": versions(), "cases": cases}
    OUT.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{OUT.relative_to(REPO)}: {len(cases)} cases")


if __name__ == "__main__":
    main()
