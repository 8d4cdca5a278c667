"""Small helpers shared by the golden-model scripts: number formatting, hashing, provenance."""
import hashlib
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
import transformers


def f32_list(values) -> list:
    """float32 values as JSON numbers: 9 significant digits round-trip any float32 exactly."""
    return [float(f"{float(v):.9g}") for v in np.asarray(values, dtype=np.float32)]


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def versions() -> dict:
    """The versions that produced a golden file (the independent implementation and its reader)."""
    return {"torch": torch.__version__, "transformers": transformers.__version__, "gguf": version("gguf")}
