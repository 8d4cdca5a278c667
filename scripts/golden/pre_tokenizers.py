"""Golden data for the byte-level BPE pre-tokenizers that no real file of ours carries: Llama 3's
(`tokenizer.ggml.pre = llama-bpe`) and GPT-2's (`gpt-2`).

    .venv-golden/bin/python scripts/golden/pre_tokenizers.py   -> tests/golden/pre_tokenizers.json

No Llama 3 vocabulary reaches this workplace, so each pre-tokenizer is run over the real Qwen2.5
vocabulary and merges (tests/data/qwen2-vocab.gguf, read with gguf-py): Hugging Face `tokenizers`
builds the pipeline each family's `tokenizer.json` declares --

- llama-bpe (Meta-Llama-3-8B's tokenizer.json): BPE with `ignore_merges`, no normalizer,
  Split(Llama 3 regex, Isolated) then ByteLevel(add_prefix_space=False, use_regex=False);
- gpt-2: BPE, ByteLevel(add_prefix_space=False, use_regex=True);

-- with the file's control tokens as special added tokens and its user-defined ones as added tokens,
as our engine reads them. The texts are model_util.ENCODE_TEXTS (every one of them); each case
records the ids without special-token parsing of the text and the ids with it.
"""
import json
import sys
from pathlib import Path

import gguf
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

sys.path.insert(0, str(Path(__file__).parent))
from model_util import ENCODE_TEXTS, sha256, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
VOCAB = REPO / "tests/data/qwen2-vocab.gguf"
OUT = REPO / "tests/golden/pre_tokenizers.json"

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
CONTROL, USER_DEFINED = 3, 4


def field(reader, key):
    f = reader.fields[key]
    return f.contents()


def build(name: str, tokens: list, merges: list, types: list) -> Tokenizer:
    vocab = {t: i for i, t in enumerate(tokens)}
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    if name == "llama-bpe":
        tok = Tokenizer(models.BPE(vocab, pairs, ignore_merges=True))
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ])
    else:
        tok = Tokenizer(models.BPE(vocab, pairs))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t, ty in zip(tokens, types) if ty == CONTROL])
    tok.add_tokens([AddedToken(t, special=False, normalized=False)
                    for t, ty in zip(tokens, types) if ty == USER_DEFINED])
    return tok


def main() -> None:
    reader = gguf.GGUFReader(str(VOCAB))
    tokens = field(reader, "tokenizer.ggml.tokens")
    merges = field(reader, "tokenizer.ggml.merges")
    types = field(reader, "tokenizer.ggml.token_type")
    texts = list(dict.fromkeys(text for _, text in ENCODE_TEXTS))
    doc = {"generated_by": "scripts/golden/pre_tokenizers.py", "versions": versions(),
           "vocab_file": VOCAB.name, "vocab_sha256": sha256(VOCAB), "pre_tokenizers": {}}
    for name in ("llama-bpe", "gpt-2"):
        tok = build(name, tokens, merges, types)
        cases = []
        for text in texts:
            with_special = tok.encode(text, add_special_tokens=False).ids
            tok.encode_special_tokens = True
            plain = tok.encode(text, add_special_tokens=False).ids
            tok.encode_special_tokens = False
            cases.append({"text": text, "ids": plain, "ids_with_special_tokens": with_special})
        doc["pre_tokenizers"][name] = cases
    OUT.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"{OUT.relative_to(REPO)}: {len(texts)} texts x {len(doc['pre_tokenizers'])} pre-tokenizers")


if __name__ == "__main__":
    main()
