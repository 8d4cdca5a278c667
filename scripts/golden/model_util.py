"""Helpers shared by the golden-data scripts: number formatting, hashing, provenance, GGUF metadata,
greedy decoding through transformers' KV cache, and the texts the tokenizer golden data encode."""
import hashlib
from importlib.metadata import version
from pathlib import Path

import gguf
import numpy as np
import torch
import transformers

TOP_K = 5


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


# ---- GGUF metadata (gguf-py) -------------------------------------------------------------------


def field(reader: gguf.GGUFReader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            raise KeyError(f"GGUF key '{key}' is missing")
        return default
    return f.contents()


def arch_hparams(reader: gguf.GGUFReader, arch: str, vocab: int) -> dict:
    """The hyper-parameters every family reads from its `<arch>.*` keys, in the order the golden files
    record them, then `vocab` (where it comes from is the caller's) and whether the head is tied."""
    k = lambda s: f"{arch}.{s}"  # noqa: E731
    return {
        "layers": int(field(reader, k("block_count"))),
        "hidden": int(field(reader, k("embedding_length"))),
        "ffn": int(field(reader, k("feed_forward_length"))),
        "heads": int(field(reader, k("attention.head_count"))),
        "kv_heads": int(field(reader, k("attention.head_count_kv"))),
        "context": int(field(reader, k("context_length"))),
        "rope_base": float(np.float32(field(reader, k("rope.freq_base")))),
        "rms_eps": float(np.float32(field(reader, k("attention.layer_norm_rms_epsilon")))),
        "vocab": vocab,
        # No output.weight: the LM head reads the embedding matrix.
        "tied": all(t.name != "output.weight" for t in reader.tensors),
    }


def config_fields(hp: dict) -> dict:
    """The transformers config fields set by arch_hparams' shapes, under the names Qwen2, Qwen3, Llama
    and Gemma 3 configs share."""
    return {
        "vocab_size": hp["vocab"],
        "hidden_size": hp["hidden"],
        "intermediate_size": hp["ffn"],
        "num_hidden_layers": hp["layers"],
        "num_attention_heads": hp["heads"],
        "num_key_value_heads": hp["kv_heads"],
    }


# ---- greedy decoding ---------------------------------------------------------------------------


def top_k(logits: torch.Tensor) -> list:
    """The TOP_K best [id, logit] pairs, best first."""
    values, ids = torch.topk(logits, TOP_K)
    return [[int(i), v] for i, v in zip(ids.tolist(), f32_list(values))]


@torch.inference_mode()
def greedy_decode(model, ids: list, max_new: int, stop_ids: tuple = ()) -> tuple:
    """Up to `max_new` greedy tokens fed back one at a time through transformers' KV cache
    (`use_cache=True`, then `cache=`, 5.24's name for `past_key_values`), stopping after a stop id.
    Returns (logits: the last prompt position's, then each fed-back token's; tokens; stopped)."""
    out = model(input_ids=torch.tensor([ids]), use_cache=True)
    logits, past = out.logits[0, -1], out.cache
    seen, tokens, stopped = [logits], [], False
    while len(tokens) < max_new:
        token = int(torch.argmax(logits))
        tokens.append(token)
        if token in stop_ids:
            stopped = True
            break
        out = model(input_ids=torch.tensor([[token]]), cache=past, use_cache=True)
        logits, past = out.logits[0, -1], out.cache
        seen.append(logits)
    return seen, tokens, stopped


@torch.inference_mode()
def cache_errors(model, ids: list, tokens: list, logits: list) -> list:
    """For each of greedy_decode's logits, max |difference| relative to max |logit| from the same
    position of one uncached pass over the prompt and the generated tokens."""
    full = model(input_ids=torch.tensor([ids + tokens]), use_cache=False).logits[0, len(ids) - 1:]
    return [float((full[i] - step).abs().max() / step.abs().max()) for i, step in enumerate(logits)]


# ---- the texts the tokenizer golden data encode ------------------------------------------------


def plain_ids(tok, text: str) -> list:
    """Ids with special-token strings left as text (tokenizers' encode_special_tokens)."""
    backend = tok.backend_tokenizer
    backend.encode_special_tokens = True
    try:
        return backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = False


# Who encodes a text: tokenizer.py (Qwen2's vocabulary, tests/golden/tokenizer_encode.json) and
# family_real.py (every family's tokenizer, before the family's own special-token strings).
QWEN2, EVERY_FAMILY, BOTH = "q", "f", "qf"
# Each script encodes its texts in this order, which its JSON files keep: "a" and " " come before
# the non-breaking spaces for Qwen2 and last for the families, hence a row for each.
ENCODE_TEXTS = [
    (BOTH, "Hello, world!"),
    (BOTH, "The quick brown fox jumps over the lazy dog."),
    (BOTH, " leading space"),
    (BOTH, "trailing space "),
    (BOTH, "  two leading spaces and   three inside"),
    (BOTH, "tabs\tand\t\ttabs"),
    (BOTH, "line one\nline two\n\nline four\n"),
    (BOTH, "\n\n\n"),
    (BOTH, "   \n  \t \n"),
    (BOTH, "windows\r\nline endings\r\n"),
    (QWEN2, "12345"),
    (EVERY_FAMILY, "1234567"),
    (BOTH, "3.14159265358979"),
    (BOTH, "The year 2024 had 366 days; 1,000,000 people."),
    (QWEN2, "123456789012345678901234567890"),
    (EVERY_FAMILY, "x = [\n    1, 2, 3,\n]  42\ta  7"),
    (QWEN2, "I'm sure you'll see they've done it, he'd say; it's WE'LL and I'M."),
    (EVERY_FAMILY, "I'm sure you'll see they've done it, he'd say; it's WE'LL."),
    (BOTH, "naïve café résumé déjà vu"),
    (BOTH, "e\u0301 (decomposed e-acute) and \u00e9 (precomposed)"),
    (QWEN2, "A\u030a and \u212b and \u00c5"),
    (BOTH, "你好，世界！这是一个测试。"),
    (BOTH, "日本語のテキストとカタカナ、ひらがな。"),
    (BOTH, "한국어 문장입니다."),
    (BOTH, "Здравствуйте, как дела?"),
    (BOTH, "مرحبا بالعالم"),
    (QWEN2, "שלום עולם"),
    (QWEN2, "नमस्ते दुनिया"),
    (QWEN2, "ภาษาไทยไม่มีช่องว่าง"),
    (BOTH, "emoji: 😀🎉👍🏽 👨‍👩‍👧‍👦 🇯🇵"),
    (EVERY_FAMILY, "rare: 𓀀 \U0001f9ec \u2fff"),
    (BOTH, "math: ∑_{i=1}^{n} x_i² ≤ √π ≈ 1.77 ∞"),
    (QWEN2, "mixed: English, 中文, русский, العربية, 😀 and 123"),
    (BOTH, "def fib(n):\n    if n < 2:\n        return n\n    return fib(n - 1) + fib(n - 2)\n"),
    (BOTH, 'fn main() {\n\tprintln!("{}", 1 + 2);\n}\n'),
    (QWEN2, "<html><body class=\"x\">&amp; &lt;tag&gt;</body></html>"),
    (EVERY_FAMILY, "<html><body class=\"x\">&amp; <td>cell</td></body></html>"),
    (QWEN2, '{"key": [1, 2, 3], "nested": {"a": null, "b": true}}'),
    (BOTH, "https://example.com/path?query=1&other=two#frag"),
    (QWEN2, "user@example.com, +1 (555) 123-4567"),
    (QWEN2, "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"),
    (QWEN2, "text before <|endoftext|> text after"),
    (QWEN2, "<|im_start|><|im_end|><|endoftext|>"),
    (QWEN2, "almost special: <|im_start| and <im_start|> and <|IM_START|>"),
    (QWEN2, "<tool_call>{\"name\": \"f\"}</tool_call>"),
    (QWEN2, "<|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>"),
    (QWEN2, "a"),
    (QWEN2, " "),
    (QWEN2, "!"),
    (BOTH, "\u00a0non-breaking\u00a0spaces\u2003em space"),
    (BOTH, "zero\u200bwidth\u200djoiner"),
    (QWEN2, "ALL CAPS SHOUTING AND MiXeD CaSe"),
    (QWEN2, "----- ===== ***** ##### ....."),
    (BOTH, "Ünïcödé Çhàràctérs ß ẞ"),
    (QWEN2, "\U0001f600" * 5),
    (BOTH, "a\u0000b\u0007c\u001b[31mred"),
    (EVERY_FAMILY, "a"),
    (EVERY_FAMILY, " "),
]


def encode_texts(who: str) -> list:
    """The texts `who` (QWEN2 or EVERY_FAMILY) encodes, in ENCODE_TEXTS's order."""
    return [text for users, text in ENCODE_TEXTS if who in users]
