#!/usr/bin/env python3
"""Golden data for the real files of the other model families: SmolLM2-135M-Instruct Q4_1 (`llama`)
and Gemma 3 270M Q4_K_M (`gemma3`), from Hugging Face transformers (float32 weights dequantized from
the GGUF, CPU). See docs/model-families.md for what the files hold.

Run from the repository root, with the venv from scripts/golden/setup-venv and the files from
`scripts/fetch-test-model --families` (about six minutes for both on two cores):

    .venv-golden/bin/python scripts/golden/family_real.py [smollm2] [gemma3]   (default: both)

For each family it writes tests/golden/family-<name>.json with
- the versions, the model file's name, size and sha256, its hyper-parameters (read with gguf-py) and
  the transformers config fields that shape the forward pass;
- `prompts`: prompt ids, the top-5 (id, logit) at the last prompt position and 16 greedy new tokens
  (stopping after one of `stop_ids`) with the top-5 at every step. SmolLM2's chat prompts are rendered
  by the file's own chat template (`apply_chat_template(..., add_generation_prompt=True)`); Gemma 3's
  file has no chat template, so its chat prompts are Gemma 3's instruct format written out here
  (`gemma3_turns`, stated in the JSON), and its raw prompts get the BOS transformers adds by default.
  Gemma's `raw-squares-long` prompt is longer than the 512-token sliding window; its record holds how
  far the last logits move when the window is lifted (`sliding_window_effect`), proving it tests it.
- `encode`: ids of ~35 strings from the file's transformers tokenizer: `prompt_ids` (no special
  tokens added, special-token text parsed), `ids_with_special_tokens` (transformers' default: Gemma
  adds BOS), `plain_ids` (special-token text left as text) and `decoded`.

The model is transformers' GGUF loader's, checked by model_load.py (the code the tiny and Qwen2
golden files use) against an independent gguf-py reading of the file (every config field the forward
pass uses, both RoPE tables, the RMSNorm modules, and every tensor after undoing the two transforms
the loader applies: llama.cpp's Q/K row permutation for `llama`, and the `+1` folded into Gemma's norm
weights); any disagreement stops the script (no fallback here). Cached decoding is checked against
one uncached pass over the whole sequence.

Tokenizer fix: transformers builds SmolLM2's tokenizer from GGUF as plain GPT-2 byte-level BPE and
ignores `tokenizer.ggml.pre = "smollm"`, with which llama.cpp first splits every digit off (in
tokenizers terms, `Digits(individual_digits=True)` before ByteLevel). The vocabulary has no digit merges, so only the
whitespace before a digit tokenizes differently ("a  1": [a, Ġ, Ġ, 1] vs [a, ĠĠ, 1]); the model's
pre-tokenizer is set here and the default's differing ids are kept as `ids_transformers_gguf_default`.
The JSON files are outputs of this script only: regenerate, never edit.
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import gguf
import tokenizers
import torch
from tokenizers import pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_load  # noqa: E402
from model_util import (  # noqa: E402
    EVERY_FAMILY, cache_errors, encode_texts, field, greedy_decode, plain_ids, sha256,
    top_k, versions)

REPO = Path(__file__).resolve().parents[2]
OUT_DIR = REPO / "tests" / "golden"
MAX_NEW = 16
# Cached decoding must equal an uncached pass over the same tokens to this relative error.
CACHE_TOLERANCE = 1e-4

HAIKU = "Write a haiku about GPU computing."
KV_CACHE = "Explain in two sentences what a KV cache is in a transformer."
MULTITURN = [
    {"role": "system", "content": "You are a terse assistant who answers in Python."},
    {"role": "user", "content": "Reverse a string s."},
    {"role": "assistant", "content": "s[::-1]"},
    {"role": "user", "content": "Now a function that returns the n-th prime, with a docstring."},
]
# 60 lines of about 12 tokens: past Gemma 3's 512-token sliding window.
SQUARES = "".join(f"{i}. The square of {i} is {i * i}.\n" for i in range(1, 61)) + "61. The square of 61 is"

# Strings every family's tokenizer encodes; each family adds its own special-token strings.
COMMON_STRINGS = encode_texts(EVERY_FAMILY)  # model_util.ENCODE_TEXTS, shared with tokenizer.py


def gemma3_turns(messages: list) -> str:
    """Gemma 3's instruct format (its official chat template's output), written out: BOS, a turn per
    message with `assistant` called `model`, a system message folded into the first user turn, then
    the open model turn. The GGUF file carries no template, so this is what the tests hold it to."""
    messages = list(messages)
    prefix = ""
    if messages and messages[0]["role"] == "system":
        prefix = messages.pop(0)["content"] + "\n\n"
    text = "<bos>"
    for i, m in enumerate(messages):
        role = "model" if m["role"] == "assistant" else m["role"]
        text += f"<start_of_turn>{role}\n{prefix if i == 0 else ''}{m['content'].strip()}<end_of_turn>\n"
    return text + "<start_of_turn>model\n"


GEMMA3_TEMPLATE_NOTE = (
    "The file has no tokenizer.chat_template. Chat prompts are Gemma 3's instruct format written out by "
    "scripts/golden/family_real.py (gemma3_turns): '<bos>' then per message "
    "'<start_of_turn>{user|model}\\n{content}<end_of_turn>\\n' (a system message is prepended to the first "
    "user turn followed by a blank line; message contents are stripped), then '<start_of_turn>model\\n'; "
    "the rendered text is encoded without adding special tokens."
)


@dataclass
class Family:
    name: str
    file: str
    arch: str
    stop_ids: tuple  # end-of-turn ids: greedy decoding stops after emitting one
    special_tokens: list  # recorded with their ids in the tokenizer's metadata
    prompts: list
    special_strings: list
    template_note: str


FAMILIES = [
    Family(
        name="smollm2",
        file="smollm2-135m-instruct-q4_1.gguf",
        arch="llama",
        stop_ids=(2, 0),  # <|im_end|>, <|endoftext|>
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        prompts=[
            {"name": "chat-haiku", "messages": [{"role": "user", "content": HAIKU}]},
            {"name": "chat-kv-cache", "messages": [{"role": "user", "content": KV_CACHE}]},
            {"name": "chat-system-multiturn", "messages": MULTITURN},
            {"name": "chat-capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
            {"name": "chat-unicode", "messages": [
                {"role": "user", "content": "Translate to English: « Le cafe\u0301 est très chaud. » 🙂"}]},
            {"name": "raw-fibonacci", "text": "def fibonacci(n):"},
            # Indentation before digits: the case the `smollm` pre-tokenizer changes.
            {"name": "raw-list-digits", "text": "primes = [\n    2, 3, 5, 7,\n    11,"},
        ],
        special_strings=[
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
            "text before <|endoftext|> text after",
            "<|im_start|><|im_end|><|endoftext|><repo_name><file_sep>",
            "almost special: <|im_start| and <im_start|> and <|IM_START|>",
        ],
        template_note="The file's tokenizer.chat_template, rendered by transformers' apply_chat_template "
                      "(add_generation_prompt=True) and encoded without adding special tokens.",
    ),
    Family(
        name="gemma3",
        file="gemma-3-270m-q4_k_m.gguf",
        arch="gemma3",
        stop_ids=(106, 1),  # <end_of_turn>, <eos>
        special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"],
        prompts=[
            {"name": "chat-haiku", "messages": [{"role": "user", "content": HAIKU}]},
            {"name": "chat-kv-cache", "messages": [{"role": "user", "content": KV_CACHE}]},
            {"name": "chat-system-multiturn", "messages": MULTITURN},
            {"name": "chat-capital", "messages": [{"role": "user", "content": "What is the capital of France?"}]},
            {"name": "raw-fibonacci", "text": "def fibonacci(n):"},
            {"name": "raw-story", "text": "Once upon a time, in a small village by the sea,"},
            {"name": "raw-unicode", "text": "日本の首都は"},
            {"name": "raw-squares-long", "text": SQUARES},
        ],
        special_strings=[
            "<start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>model\n",
            "<bos>text<eos> and <pad><unk><mask>",
            "<start_of_image><end_of_image>[multimodal]<unused0>",
            "almost special: <start_of_turn and <START_OF_TURN>",
        ],
        template_note=GEMMA3_TEMPLATE_NOTE,
    ),
]


def model_path(fam: Family) -> Path:
    cache = os.environ.get("LAYERSTREAM_CACHE")
    base = Path(cache) if cache else Path.home() / ".cache" / "layerstream"
    return base / "models" / fam.file


# ---- tokenizer ---------------------------------------------------------------------------------


def smollm_pre_tokenizer():
    """llama.cpp's `smollm` pre-tokenizer (digits split one by one, then GPT-2's regex) in tokenizers
    terms."""
    return pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
    ])


def load_tokenizers(fam: Family, path: Path) -> tuple:
    """(the tokenizer the model was trained with, transformers' GGUF tokenizer as built)."""
    default = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if fam.arch == "llama":
        tok.backend_tokenizer.pre_tokenizer = smollm_pre_tokenizer()
    return tok, default


def tokenizer_meta(fam: Family, tok, reader: gguf.GGUFReader) -> dict:
    backend = json.loads(tok.backend_tokenizer.to_str())
    model = backend["model"]
    bare = tok.encode("a", add_special_tokens=False)
    return {
        "class": type(tok).__name__,
        "vocab_size": len(tok),
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "special_ids": {t: tok.convert_tokens_to_ids(t) for t in fam.special_tokens},
        "gguf_add_bos_token": bool(field(reader, "tokenizer.ggml.add_bos_token", False)),
        # What `tok(text)` (add_special_tokens=True, transformers' default) puts around the text's ids.
        "default_added_ids": [i for i in tok.encode("a") if i not in bare],
        "normalizer": backend.get("normalizer"),
        "pre_tokenizer": backend.get("pre_tokenizer"),
        "decoder": backend.get("decoder"),
        "model_type": model.get("type"),
        "byte_fallback": model.get("byte_fallback"),
        "added_tokens": len(backend.get("added_tokens", [])),
    }


def encode_cases(fam: Family, tok, default) -> list:
    cases = []
    for text in COMMON_STRINGS + fam.special_strings:
        ids = tok.encode(text, add_special_tokens=False)
        assert ids == tok.backend_tokenizer.encode(text, add_special_tokens=False).ids, text
        decoded = tok.decode(ids, skip_special_tokens=False)
        case = {
            "text": text,
            "prompt_ids": ids,
            "ids_with_special_tokens": tok.encode(text),
            "plain_ids": plain_ids(tok, text),
            "decoded": decoded,
        }
        default_ids = default.encode(text, add_special_tokens=False)
        if default_ids != ids:
            case["ids_transformers_gguf_default"] = default_ids
        cases.append(case)
    return cases


def render(fam: Family, tok, prompt: dict) -> tuple:
    """(rendered text, prompt ids, whether the tokenizer added special tokens)."""
    if "messages" in prompt:
        if tok.chat_template is not None:
            text = tok.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=False)
        else:
            text = gemma3_turns(prompt["messages"])
        return text, tok.encode(text, add_special_tokens=False), False
    text = prompt["text"]
    return text, tok.encode(text), True


# ---- the model, checked against gguf-py --------------------------------------------------------


def file_hparams(reader: gguf.GGUFReader, arch: str) -> dict:
    hp = {
        "architecture": field(reader, "general.architecture"),
        **model_load.file_hparams(reader, arch, vocab=len(field(reader, "tokenizer.ggml.tokens"))),
    }
    if arch == "gemma3":
        k = lambda s: f"{arch}.{s}"  # noqa: E731
        hp["value_dim"] = int(field(reader, k("attention.value_length")))
        hp["sliding_window"] = int(field(reader, k("attention.sliding_window")))
        # Not in the file: llama.cpp's gemma3 loader fixes these (every sixth layer global, local base 1e4).
        hp["sliding_window_pattern"] = 6
        hp["rope_base_local"] = 10000.0
    return hp


def load_checked(path: Path, arch: str) -> tuple:
    """transformers' GGUF loader, checked by model_load.mismatches against gguf-py's reading (the
    same check as the tiny and Qwen2 files', with no fallback: any disagreement stops the script)."""
    reader = gguf.GGUFReader(str(path))
    hp = file_hparams(reader, arch)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    bad = model_load.mismatches(model, arch, hp, model_load.read_tensors(reader, arch, hp))
    if bad:
        raise SystemExit(f"{path.name}: transformers' GGUF loader disagrees with gguf-py:\n  " + "\n  ".join(bad))
    return model, hp, reader


def config_summary(model) -> dict:
    """The transformers config fields that shape the forward pass (what the golden numbers assume)."""
    keys = ["model_type", "hidden_act", "hidden_activation", "head_dim", "rope_parameters", "rms_norm_eps",
            "tie_word_embeddings", "sliding_window", "layer_types", "query_pre_attn_scalar",
            "final_logit_softcapping", "attn_logit_softcapping", "attention_bias", "mlp_bias"]
    c = model.config
    return {k: getattr(c, k) for k in keys if hasattr(c, k)}


# ---- generation --------------------------------------------------------------------------------


@torch.inference_mode()
def greedy(model, ids: list, stop_ids: tuple) -> dict:
    """Greedy continuation through the KV cache, stopping after a stop id; checked against one
    uncached pass over the prompt and the generated tokens."""
    seen, tokens, stopped = greedy_decode(model, ids, MAX_NEW, stop_ids)
    for i, err in enumerate(cache_errors(model, ids, tokens, seen)):
        if err > CACHE_TOLERANCE:
            raise AssertionError(f"cached vs uncached logits differ at step {i}: {err:.2e}")
    return {"top5": top_k(seen[0]), "greedy": tokens, "stopped_at_stop_id": stopped,
            "step_top5": [top_k(logits) for logits in seen[1:]]}


@torch.inference_mode()
def sliding_window_effect(model, ids: list) -> dict:
    """How far the last prompt position's logits move when Gemma's sliding window is lifted."""
    windowed = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    saved = model.config.sliding_window
    model.config.sliding_window = 1 << 30
    for layer in model.model.layers:
        if layer.self_attn.sliding_window is not None:
            layer.self_attn.sliding_window = 1 << 30
    try:
        full = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
    finally:
        model.config.sliding_window = saved
        for layer in model.model.layers:
            if layer.self_attn.sliding_window is not None:
                layer.self_attn.sliding_window = saved
    return {"max_abs_logit_change": float(f"{float((windowed - full).abs().max()):.6g}"),
            "top5_without_window": top_k(full)}


def run(fam: Family) -> None:
    path = model_path(fam)
    if not path.is_file():
        raise SystemExit(f"{path} is missing: run scripts/fetch-test-model --families")
    tok, default_tok = load_tokenizers(fam, path)
    model, hp, reader = load_checked(path, fam.arch)
    print(f"{path.name}: transformers' GGUF loader agrees with gguf-py ({len(reader.tensors)} tensors)")
    records = []
    for prompt in fam.prompts:
        text, ids, added = render(fam, tok, prompt)
        result = greedy(model, ids, fam.stop_ids)
        record = {"name": prompt["name"]}
        record.update({k: prompt[k] for k in ("messages", "text") if k in prompt})
        record.update({"rendered": text, "special_tokens_added": added, "prompt_ids": ids,
                       "max_new_tokens": MAX_NEW})
        record.update(result)
        record["greedy_text"] = tok.decode(result["greedy"], skip_special_tokens=False)
        if fam.arch == "gemma3" and len(ids) > hp["sliding_window"]:
            record["sliding_window_effect"] = sliding_window_effect(model, ids)
        records.append(record)
        print(f"  {prompt['name']}: {len(ids)} prompt ids -> {record['greedy_text']!r}")
    doc = {
        "generated_by": "scripts/golden/family_real.py",
        "versions": {**versions(), "tokenizers": tokenizers.__version__},
        "family": fam.name,
        "model_file": path.name,
        "model_bytes": path.stat().st_size,
        "model_sha256": sha256(path),
        "loader": "transformers GGUF loader, checked against gguf-py (config, RoPE tables, every tensor)",
        "hparams": hp,
        "transformers_config": config_summary(model),
        "stop_ids": list(fam.stop_ids),
        "chat_template": fam.template_note,
        "tokenizer": tokenizer_meta(fam, tok, reader),
        "prompts": records,
        "encode": encode_cases(fam, tok, default_tok),
    }
    out = OUT_DIR / f"family-{fam.name}.json"
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {out.relative_to(REPO)}")


def main(argv: list) -> None:
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    names = argv[1:] or [f.name for f in FAMILIES]
    by_name = {f.name: f for f in FAMILIES}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown family {unknown}; known: {sorted(by_name)}\n\n{__doc__}")
    for name in names:
        run(by_name[name])


if __name__ == "__main__":
    main(sys.argv)
