#!/usr/bin/env python3
"""Golden tokenizer and chat-template data from Hugging Face transformers, for tests/tokenizer_golden.rs
and tests/chat_template.rs.

Run from the repository root (about a minute; most of it is importing torch):
    scripts/golden/setup-venv
    .venv-golden/bin/python scripts/golden/tokenizer.py
It writes tests/golden/tokenizer_encode.json and tests/golden/tokenizer_chat.json; commit them as written.

The tokenizer is transformers' own, loaded from the same vocab file the Rust tests read
(tests/data/qwen2-vocab.gguf). transformers builds it from GGUF without a normalizer, while Qwen2's
tokenizer.json (what the model was trained with) uses NFC, so NFC is set here to match the model.
"""

import json
import pathlib
import sys

import tokenizers
import transformers
from transformers import AutoTokenizer
from transformers.utils.chat_template_utils import _compile_jinja_template

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from model_util import QWEN2, encode_texts, plain_ids  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[2]
VOCAB_DIR = REPO / "tests" / "data"
VOCAB_FILE = "qwen2-vocab.gguf"
OUT_DIR = REPO / "tests" / "golden"

# The texts tokenizer_encode.json holds: model_util.ENCODE_TEXTS, shared with family_real.py.
STRINGS = encode_texts(QWEN2)

CHATS = [
    {"name": "default_system_prompt", "messages": [{"role": "user", "content": "Write a haiku about GPU computing."}]},
    {
        "name": "with_system",
        "messages": [
            {"role": "system", "content": "You are a terse assistant."},
            {"role": "user", "content": "What is 2 + 2?"},
        ],
    },
    {
        "name": "multi_turn",
        "messages": [
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "Name a prime number."},
            {"role": "assistant", "content": "7 is a prime number."},
            {"role": "user", "content": "And an even one?"},
        ],
    },
    {
        "name": "unicode",
        "messages": [
            {"role": "user", "content": "翻译成英文：你好，世界！😀 café e\u0301"},
            {"role": "assistant", "content": "Hello, world! 😀"},
            {"role": "user", "content": "Спасибо! 🎉"},
        ],
    },
    {
        "name": "whitespace_at_content_edges",
        "messages": [
            {"role": "system", "content": "\n\nsystem with newlines\n"},
            {"role": "user", "content": "  two spaces first\n\n"},
            {"role": "assistant", "content": "\tTab first and trailing space "},
            {"role": "user", "content": "\n"},
        ],
    },
    {
        "name": "code_content",
        "messages": [
            {"role": "user", "content": "Fix this:\n```python\ndef f(x):\n\treturn x+1\n```"},
            {"role": "assistant", "content": "```python\ndef f(x):\n    return x + 1\n```\n"},
            {"role": "user", "content": "Thanks!"},
        ],
    },
    {
        "name": "empty_content",
        "messages": [
            {"role": "system", "content": ""},
            {"role": "user", "content": ""},
        ],
    },
    {"name": "assistant_last", "messages": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi."},
    ]},
]

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city <today> & 'now', in °C",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "description": "城市"}, "days": {"type": "integer"}},
                "required": ["city"],
            },
        },
    }
]

TOJSON_CASES = [
    {"template": "{{ x|tojson }}", "x": {"html": "<a href='x'>&</a>", "text": "héllo 日本 😀", "n": None}},
    {"template": "{{ x|tojson }}", "x": [1, 2.5, 1.0, 1e16, 1.5e-05, 0.0001, -0.0, 123456789012345678, True, False]},
    {"template": "{{ x|tojson(indent=2) }}", "x": {"a": [1, {"b": []}, {}], "c": "<>&'\"\\\n\t\u0001"}},
    {"template": "{{ x|tojson(ensure_ascii=True) }}", "x": {"k": "é 日 😀 \u2028"}},
    {"template": "{{ x|tojson(indent=4, sort_keys=True) }}", "x": {"z": 1, "a": {"y": 2, "b": 3}, "é": 0}},
    {"template": "{{ x|tojson(separators=(',', ':')) }}", "x": {"a": [1, 2], "b": "c"}},
    {"template": "{{ x|tojson(indent='\t') }}", "x": {"a": [1]}},
    {"template": "{{ x|tojson }}", "x": "plain string with \"quotes\" and \\ backslash"},
]


def load_tokenizer():
    tok = AutoTokenizer.from_pretrained(str(VOCAB_DIR), gguf_file=VOCAB_FILE)
    tok.backend_tokenizer.normalizer = tokenizers.normalizers.NFC()
    return tok


def chat_ids(tok, messages):
    out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(out, "keys"):  # transformers 5 returns a BatchEncoding by default
        out = out["input_ids"]
    return list(out)


def encode_cases(tok):
    cases = []
    for text in STRINGS:
        ids = tok.encode(text, add_special_tokens=False)
        backend_ids = tok.backend_tokenizer.encode(text, add_special_tokens=False).ids
        assert ids == backend_ids, text
        decoded = tok.backend_tokenizer.decode(ids, skip_special_tokens=False)
        assert decoded == tok.decode(ids, skip_special_tokens=False), text
        cases.append({"text": text, "prompt_ids": ids, "decoded": decoded, "plain_ids": plain_ids(tok, text)})
    return cases


def chat_cases(tok):
    cases = []
    for chat in CHATS:
        msgs = chat["messages"]
        text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
        ids = chat_ids(tok, msgs)
        assert ids == tok.encode(text, add_special_tokens=False), chat["name"]
        no_gen = tok.apply_chat_template(msgs, add_generation_prompt=False, tokenize=False)
        cases.append({**chat, "rendered": text, "ids": ids, "rendered_without_generation_prompt": no_gen})
    return cases


def tool_chat_cases(tok):
    msgs = [{"role": "user", "content": "Weather in Paris?"}]
    text = tok.apply_chat_template(msgs, tools=TOOLS, add_generation_prompt=True, tokenize=False)
    # Variables as JSON text: the Rust side keeps object keys in written order only from text.
    variables = json.dumps({"messages": msgs, "tools": TOOLS, "add_generation_prompt": True}, ensure_ascii=False)
    return [{"name": "tools_default_system", "variables": variables, "rendered": text}]


def tojson_cases():
    out = []
    for case in TOJSON_CASES:
        template = _compile_jinja_template(case["template"])
        variables = json.dumps({"x": case["x"]}, ensure_ascii=False)
        out.append({"template": case["template"], "variables": variables, "rendered": template.render(x=case["x"])})
    return out


def main():
    tok = load_tokenizer()
    special = {t: tok.convert_tokens_to_ids(t) for t in ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]}
    meta = {
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "vocab_file": f"tests/data/{VOCAB_FILE}",
        "vocab_size": len(tok),
        "eos_token_id": tok.eos_token_id,
        "bos_token_id": tok.bos_token_id,
        "special_ids": special,
    }
    encode = {"meta": meta, "cases": encode_cases(tok)}
    chat = {
        "meta": meta,
        "chat_template": tok.chat_template,
        "chats": chat_cases(tok),
        "tool_chats": tool_chat_cases(tok),
        "tojson": tojson_cases(),
    }
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in [("tokenizer_encode.json", encode), ("tokenizer_chat.json", chat)]:
        path = OUT_DIR / name
        path.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
