"""Golden data for the real model: prompt ids, top-5 logits and greedy continuations from
transformers (float32 weights dequantized from the F16 GGUF), for chat and raw prompts."""
import json
import os
from pathlib import Path

import torch
import tokenizers
from transformers import AutoTokenizer

import model_load
from model_util import greedy_decode, sha256, top_k, versions

MODEL_NAME = "qwen2.5-coder-0.5b-instruct-f16.gguf"
EOS_IDS = (151645, 151643)  # <|im_end|>, <|endoftext|>
MAX_NEW = 16

# Each prompt: chat messages (rendered by the chat template) or raw text (special tokens parsed).
# The haiku's greedy answer is known independently (transformers F32 and llama.cpp F16 agree):
# "GPU Computing,  \nComputing power,  \nPowerful,  \nComputing power."; it runs to EOS so the
# test can compare the whole text.
PROMPTS = [
    {"name": "chat-haiku", "max_new": 32,
     "messages": [{"role": "user", "content": "Write a haiku about GPU computing."}]},
    {"name": "chat-kv-cache",
     "messages": [{"role": "user", "content": "Explain in two sentences what a KV cache is in a transformer."}]},
    {"name": "chat-system-multiturn",
     "messages": [
         {"role": "system", "content": "You are a terse assistant who answers in Python."},
         {"role": "user", "content": "Reverse a string s."},
         {"role": "assistant", "content": "s[::-1]"},
         {"role": "user", "content": "Now a function that returns the n-th prime, with a docstring."},
     ]},
    # "cafe\u0301" is decomposed: tokenizers must apply NFC, as Qwen2's tokenizer.json does.
    {"name": "chat-unicode",
     "messages": [{"role": "user", "content": "Translate to English: « Le cafe\u0301 est très chaud. » 🙂"}]},
    {"name": "raw-fibonacci", "text": "def fibonacci(n):"},
    {"name": "raw-rust", "text": "// Sum the even numbers of a slice.\nfn sum_even(xs: &[i64]) -> i64 {\n"},
]


def default_model() -> Path:
    cache = os.environ.get("LAYERSTREAM_CACHE")
    base = Path(cache) if cache else Path.home() / ".cache" / "layerstream"
    return base / "models" / MODEL_NAME


def load_tokenizer(path: Path):
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    # Qwen2's tokenizer.json normalizes with NFC; the GGUF-built tokenizer has no normalizer.
    tok.backend_tokenizer.normalizer = tokenizers.normalizers.NFC()
    return tok


def prompt_ids(tok, prompt: dict) -> tuple:
    if "messages" in prompt:
        text = tok.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=False)
    else:
        text = prompt["text"]
    return text, tok(text, add_special_tokens=False)["input_ids"]


@torch.inference_mode()
def greedy(model, ids: list, max_new: int) -> dict:
    """Greedy continuation through the KV cache, stopping after an EOS token."""
    seen, tokens, stopped = greedy_decode(model, ids, max_new, EOS_IDS)
    return {"top5": top_k(seen[0]), "greedy": tokens, "stopped_at_eos": stopped,
            "step_top5": [top_k(logits) for logits in seen[1:]]}


def run(path: Path, out: Path) -> None:
    if not path.is_file():
        raise SystemExit(f"{path} is missing: it is the F16 conversion `layerstream convert` makes")
    tok = load_tokenizer(path)
    loaded = model_load.load_checked(path)
    print(f"{path.name}: loader: {loaded.loader}")
    records = []
    for prompt in PROMPTS:
        text, ids = prompt_ids(tok, prompt)
        result = greedy(loaded.model, ids, prompt.get("max_new", MAX_NEW))
        record = {"name": prompt["name"]}
        record.update({k: prompt[k] for k in ("messages", "text") if k in prompt})
        record.update({"rendered": text, "prompt_ids": ids, "max_new_tokens": prompt.get("max_new", MAX_NEW)})
        record.update(result)
        record["greedy_text"] = tok.decode(result["greedy"], skip_special_tokens=False)
        records.append(record)
        print(f"  {prompt['name']}: {len(ids)} prompt ids -> {record['greedy_text']!r}")
    doc = {
        "generated_by": "scripts/golden/model.py real",
        "versions": versions(),
        "model_file": path.name,
        "model_bytes": path.stat().st_size,
        "model_sha256": sha256(path),
        "loader": loaded.loader,
        "hparams": loaded.hp,
        "eos_ids": list(EOS_IDS),
        "prompts": records,
    }
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {out}")
