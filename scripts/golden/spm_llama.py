"""Golden ids for a SentencePiece-style vocabulary read the way Llama 2, Mistral and TinyLlama files
are (merges ranked by `tokenizer.ggml.scores`, a space prefix from `tokenizer.ggml.add_space_prefix`),
which no real file of ours carries: the real Gemma 3 file's vocabulary, with `general.architecture`
set to `llama` and `add_space_prefix` to true, no tensors.

    .venv-golden/bin/python scripts/golden/spm_llama.py [GEMMA.gguf]   -> tests/golden/spm_llama.json

transformers builds `LlamaTokenizer` for it (merges from the scores, `Metaspace` with
`prepend_scheme="first"`); the Rust test (tests/spm_llama_golden.rs) rewrites the same file the same
way with our writer and compares. Texts: model_util.ENCODE_TEXTS plus a few that start with spaces or
put text right after a special token.
"""
import json
import os
import sys
import tempfile
from pathlib import Path

import gguf
from transformers import AutoTokenizer

from model_util import ENCODE_TEXTS, plain_ids, sha256, versions

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests/golden/spm_llama.json"
CACHE = Path(os.environ.get("LAYERSTREAM_CACHE", Path.home() / ".cache/layerstream")) / "models"
EXTRA = ["  two leading spaces", " one", "<bos>after a special token", "a<start_of_turn>b", ""]


def rewrite(src: Path, dst: Path) -> None:
    """`src`'s metadata, architecture `llama`, a space prefix, no tensors."""
    reader = gguf.GGUFReader(str(src))
    writer = gguf.GGUFWriter(str(dst), "llama")
    for name, f in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture" or not name.startswith("tokenizer."):
            continue
        if name == "tokenizer.ggml.add_space_prefix":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, f.contents(), vtype, sub)
    writer.add_bool("tokenizer.ggml.add_space_prefix", True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main(argv: list) -> None:
    src = Path(argv[1]) if len(argv) > 1 else CACHE / "gemma-3-270m-q4_k_m.gguf"
    with tempfile.TemporaryDirectory() as d:
        dst = Path(d) / "spm-llama.gguf"
        rewrite(src, dst)
        tok = AutoTokenizer.from_pretrained(d, gguf_file=dst.name)
        texts = list(dict.fromkeys([text for _, text in ENCODE_TEXTS] + EXTRA))
        cases = [{"text": t, "ids": tok.encode(t, add_special_tokens=False), "plain_ids": plain_ids(tok, t)}
                 for t in texts]
        backend = json.loads(tok.backend_tokenizer.to_str())
        doc = {"generated_by": "scripts/golden/spm_llama.py", "versions": versions(),
               "source_file": src.name, "source_sha256": sha256(src),
               "tokenizer_class": type(tok).__name__, "pre_tokenizer": backend.get("pre_tokenizer"),
               "normalizer": backend.get("normalizer"), "cases": cases}
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT.relative_to(REPO)}: {len(cases)} texts, {doc['tokenizer_class']}")


if __name__ == "__main__":
    main(sys.argv)
