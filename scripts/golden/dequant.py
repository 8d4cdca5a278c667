#!/usr/bin/env python3
"""Golden data for dequantization, computed by gguf-py (gguf.quants.dequantize, numpy float32).

Run from the repository root, with the venv from scripts/golden/setup-venv (needs only
gguf==0.19.0 and numpy):

    .venv-golden/bin/python scripts/golden/dequant.py blocks
    .venv-golden/bin/python scripts/golden/dequant.py model [MODEL.gguf]
    .venv-golden/bin/python scripts/golden/dequant.py all [MODEL.gguf]

`blocks` writes tests/golden/dequant-blocks.bin and tests/golden/dequant-blocks.json: for every
supported type, seeded random blocks (scale fields finite f16, every other byte random) followed by
gguf-py's float32 output and that output rounded to float16 (`astype(np.float16)`, what the F16
converter must write). The JSON gives each type's byte ranges inside the .bin.

`model` writes tests/golden/dequant-q4km.json: for every tensor of the real Q4_K_M test model
(default: the file scripts/fetch-test-model caches), its name, type, ggml dims and the sha256 of
gguf-py's float32 output and of its float16 rounding (little-endian, ggml element order).
"""
import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T

SEED = 20240601
BLOCKS_PER_TYPE = 64
FLOAT_ELEMS = 4096
REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "golden"
MODEL_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"

# Byte offsets of the f16 scale fields (d, and m/dmin where present) inside one block.
SCALE_OFFSETS = {
    T.Q4_0: [0],
    T.Q4_1: [0, 2],
    T.Q5_0: [0],
    T.Q5_1: [0, 2],
    T.Q8_0: [0],
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}
# Scales the first blocks get, to cover zero, signed zero, subnormals and the extremes.
SPECIAL_SCALES = [0x0000, 0x8000, 0x0001, 0x83FF, 0x0400, 0x7BFF, 0xFBFF, 0x3C00]


def finite_f16_bits(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    inf_or_nan = (bits & 0x7C00) == 0x7C00
    bits[inf_or_nan] &= 0xBFFF  # clear one exponent bit: finite, same sign
    return bits


def quant_blocks(rng: np.random.Generator, qtype: T) -> np.ndarray:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(BLOCKS_PER_TYPE, block_bytes), dtype=np.uint8)
    for off in SCALE_OFFSETS[qtype]:
        scales = finite_f16_bits(rng, BLOCKS_PER_TYPE)
        scales[: len(SPECIAL_SCALES)] = np.roll(SPECIAL_SCALES, off)
        raw[:, off : off + 2] = scales.reshape(-1, 1).view(np.uint8).reshape(-1, 2)
    return raw.reshape(-1)


def f32_inputs(rng: np.random.Generator) -> np.ndarray:
    """Any bit pattern, values inside the f16 range, and exact f16 rounding ties."""
    n = FLOAT_ELEMS // 4
    any_bits = rng.integers(0, 1 << 32, size=n, dtype=np.uint32)
    exp = rng.integers(98, 145, size=2 * n, dtype=np.uint32)
    man = rng.integers(0, 1 << 23, size=2 * n, dtype=np.uint32)
    sign = rng.integers(0, 2, size=2 * n, dtype=np.uint32) << 31
    in_range = sign | (exp << 23) | man
    ties = finite_f16_bits(rng, n).view(np.float16).astype(np.float32).view(np.uint32) | 0x1000
    return np.concatenate([any_bits, in_range, ties]).view(np.uint8)


def float_inputs(rng: np.random.Generator, qtype: T) -> np.ndarray:
    if qtype == T.F32:
        return f32_inputs(rng)
    return rng.integers(0, 256, size=FLOAT_ELEMS * 2, dtype=np.uint8)


def dequant(raw: np.ndarray, qtype: T) -> np.ndarray:
    block_elems, block_bytes = gguf.GGML_QUANT_SIZES[qtype]
    rows = raw.reshape(-1, block_bytes)
    out = gguf.quants.dequantize(rows, qtype)
    assert out.dtype == np.float32
    return out.reshape(-1)


def write_blocks() -> None:
    rng = np.random.default_rng(SEED)
    types = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]
    blob = bytearray()
    index = []

    def put(data: bytes) -> list:
        start = len(blob)
        blob.extend(data)
        return [start, len(data)]

    for qtype in types:
        raw = float_inputs(rng, qtype) if qtype in (T.F32, T.F16, T.BF16) else quant_blocks(rng, qtype)
        f32 = dequant(raw, qtype)
        with np.errstate(over="ignore"):  # F32/BF16 inputs beyond the f16 range become inf
            f16 = f32.astype(np.float16)
        index.append({
            "type": qtype.name,
            "id": int(qtype.value),
            "n_elems": int(f32.size),
            "src": put(raw.tobytes()),
            "f32": put(f32.astype("<f4").tobytes()),
            "f16": put(f16.astype("<f2").tobytes()),
        })
    meta = {
        "generator": "scripts/golden/dequant.py blocks",
        "gguf": gguf_version(),
        "numpy": np.__version__,
        "seed": SEED,
        "bin": "dequant-blocks.bin",
        "bin_sha256": hashlib.sha256(blob).hexdigest(),
        "types": index,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dequant-blocks.bin").write_bytes(blob)
    (OUT / "dequant-blocks.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(types)} types, {len(blob)} bytes", file=sys.stderr)


def write_model(path: Path) -> None:
    reader = gguf.GGUFReader(path)
    tensors = []
    for t in reader.tensors:
        f32 = gguf.quants.dequantize(t.data, t.tensor_type).astype("<f4", copy=False)
        f16 = f32.astype("<f2")
        tensors.append({
            "name": t.name,
            "type": t.tensor_type.name,
            "dims": [int(d) for d in t.shape],
            "sha256_f32": hashlib.sha256(np.ascontiguousarray(f32).tobytes()).hexdigest(),
            "sha256_f16": hashlib.sha256(np.ascontiguousarray(f16).tobytes()).hexdigest(),
        })
        print(f"{t.name} {t.tensor_type.name}", file=sys.stderr)
    meta = {
        "generator": "scripts/golden/dequant.py model",
        "gguf": gguf_version(),
        "numpy": np.__version__,
        "model": path.name,
        "model_bytes": path.stat().st_size,
        "tensors": tensors,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "dequant-q4km.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {len(tensors)} tensors", file=sys.stderr)


def gguf_version() -> str:
    from importlib.metadata import version
    return version("gguf")


def default_model() -> Path:
    cache = os.environ.get("LAYERSTREAM_CACHE") or os.path.join(os.environ["HOME"], ".cache", "layerstream")
    return Path(cache) / "models" / MODEL_NAME


def main(argv: list) -> None:
    if len(argv) not in (2, 3) or argv[1] not in ("blocks", "model", "all"):
        sys.exit(__doc__)
    model = Path(argv[2]) if len(argv) == 3 else default_model()
    if argv[1] in ("blocks", "all"):
        write_blocks()
    if argv[1] in ("model", "all"):
        write_model(model)


if __name__ == "__main__":
    main(sys.argv)
