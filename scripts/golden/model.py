#!/usr/bin/env python3
"""Golden logits and greedy tokens from Hugging Face transformers' Qwen2ForCausalLM, LlamaForCausalLM
and Qwen3ForCausalLM (float32, CPU).

Run from the repository root, with the venv from scripts/golden/setup-venv:

    .venv-golden/bin/python scripts/golden/model.py tiny [NAME ...]   # needs target/release/layerstream
    .venv-golden/bin/python scripts/golden/model.py real [MODEL.gguf]
    .venv-golden/bin/python scripts/golden/model.py all [MODEL.gguf]

`tiny` writes random-weight models of each family (TINY) with `layerstream gen-model --arch ...` into
tests/golden/models/ and, for each, `<name>.json`: a prompt of token ids, then greedy decode steps
fed back one token at a time through transformers' KV cache (`use_cache=True`, then `cache=`, 5.24's
name for `past_key_values`), with the full float32 logits of the last prompt position and of every
decode step (read by tests/golden_tiny_models.rs).

Without names, `tiny` (and `all`) writes only the models whose files are missing or out of date: no
`.json` or `.gguf`, other gen-model flags, family, prompt seed, prompt length or step count than TINY
says, or a `.gguf` that is not the file its `.json` was computed from; the others are skipped, saying
so. `tiny NAME ...` rewrites the named models regardless. gen-model's weights for given flags are not
stable across its versions (the four Qwen2 files predate such a change and are no longer reproduced
byte for byte), so a model is rewritten only when asked or when its files no longer fit TINY.

`real` runs the F16 conversion of Qwen2.5-Coder-0.5B-Instruct (default: the file the test cache
holds) on chat prompts (rendered by the GGUF's chat template through transformers' tokenizer,
add_generation_prompt=True) and raw prompts, and writes tests/golden/real-model.json: prompt ids,
the top-5 (id, logit) at the last prompt position, and the greedy continuation with the top-5 at
every step (read by tests/golden_real_model.rs).

The model is loaded by transformers' GGUF loader and checked against an independent gguf-py
reading of the file (config, RoPE, RMSNorm modules and eps, tying, every tensor, llama's Q/K rows
un-permuted); see model_load.py for the check, the fallback, and the two cases the loader gets wrong
(vocabulary size without a tokenizer, Qwen3's head dimension).
The JSON files are outputs of this script only: regenerate, never edit.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import model_load  # noqa: E402
import model_real  # noqa: E402
from model_util import cache_errors, f32_list, field, greedy_decode, sha256, versions  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "tests" / "golden" / "models"
BINARY = Path(os.environ.get("LAYERSTREAM_BIN", REPO / "target" / "release" / "layerstream"))
MAX_FILE_BYTES = 1_500_000
DECODE_STEPS = 6
PROMPT_LEN = 7
# A greedy step whose best two logits are closer than this (relative to max |logit|; 5x the
# tests' 1e-3 tolerance) would make the engine's argmax depend on rounding: such a configuration
# is rejected, not recorded.
MIN_TOP2_GAP = 0.005

# name, family (`gen-model --arch`), generator flags, prompt seed. Shapes are chosen to cover:
# - qwen2: GQA (4/2, 4/1, 5/1), MHA (2/2), tied and untied heads, F32/F16/BF16 weights, rope bases
#   1e4/1e6/5e5, head dims 8/16/32/48, widths that are not multiples of the SIMD width (hidden 40,
#   ffn 88, vocab 301), 1-3 layers;
# - llama (Q/K rows stored permuted for interleaved RoPE, no biases): GQA 4/2 F16 untied, and MHA with
#   5 heads of 12 (not a power of two) in hidden 60, tied, F32; Llama 3.1's RoPE scaling (factor 8,
#   original context 32, so that the prompt's positions cross all three bands: frequencies kept,
#   smoothed and divided), written as rope_freqs.weight;
# - qwen2 with YaRN (factor 4 over an original context of 2048: heads of 16 put the ramp over pairs
#   2..6, so some frequencies are kept, some blended, some interpolated; cos/sin scaled by 1.139);
# - qwen3 (per-head q/k RMSNorm, no biases): head_dim 32 from attention.key_length in hidden 64 (q is
#   wider than the hidden state) F16 untied; BF16 tied GQA 6/2 with head_dim hidden / heads (no
#   key_length written); head_dim 8 in hidden 48 (q narrower than the hidden state) F32 MHA, 1 layer.
TINY = [
    ("gqa-f32-untied", "qwen2", ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                 "--ffn", "128", "--vocab-size", "512", "--dtype", "f32", "--seed", "11",
                                 "--context", "256", "--rope-base", "10000"], 101),
    ("tied-f16-gqa4to1", "qwen2", ["--layers", "2", "--hidden", "128", "--heads", "4", "--kv-heads", "1",
                                   "--ffn", "256", "--vocab-size", "640", "--tied", "--dtype", "f16",
                                   "--seed", "22", "--context", "512"], 202),
    ("mha-bf16-3layers", "qwen2", ["--layers", "3", "--hidden", "96", "--heads", "2", "--kv-heads", "2",
                                   "--ffn", "160", "--vocab-size", "1000", "--dtype", "bf16", "--seed", "33",
                                   "--context", "128", "--rope-base", "500000"], 303),
    ("odd-f16-5heads", "qwen2", ["--layers", "1", "--hidden", "40", "--heads", "5", "--kv-heads", "1",
                                 "--ffn", "88", "--vocab-size", "301", "--dtype", "f16", "--seed", "44",
                                 "--context", "64", "--rope-base", "10000"], 404),
    ("llama-gqa-f16-untied", "llama", ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                       "--ffn", "128", "--vocab-size", "512", "--dtype", "f16", "--seed", "55",
                                       "--context", "256", "--rope-base", "10000"], 507),
    ("llama-mha-f32-tied-5heads", "llama", ["--layers", "2", "--hidden", "60", "--heads", "5",
                                            "--kv-heads", "5", "--ffn", "96", "--vocab-size", "301", "--tied",
                                            "--dtype", "f32", "--seed", "66", "--context", "128",
                                            "--rope-base", "500000"], 606),
    ("llama31-rope-f16", "llama", ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                   "--ffn", "128", "--vocab-size", "512", "--dtype", "f16", "--seed", "57",
                                   "--context", "256", "--rope-base", "10000", "--rope-scaling",
                                   "llama3:8:1:4:32"], 508),
    ("qwen2-yarn-f16", "qwen2", ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                 "--ffn", "128", "--vocab-size", "512", "--dtype", "f16", "--seed", "59",
                                 "--context", "256", "--rope-base", "10000", "--rope-scaling", "yarn:4:2048"], 509),
    ("qwen3-f16-headdim32", "qwen3", ["--layers", "2", "--hidden", "64", "--heads", "4", "--kv-heads", "2",
                                      "--head-dim", "32", "--ffn", "128", "--vocab-size", "512", "--dtype",
                                      "f16", "--seed", "77", "--context", "256", "--rope-base", "1000000"], 707),
    ("qwen3-bf16-tied-gqa3to1", "qwen3", ["--layers", "3", "--hidden", "96", "--heads", "6", "--kv-heads", "2",
                                          "--ffn", "160", "--vocab-size", "640", "--tied", "--dtype", "bf16",
                                          "--seed", "88", "--context", "128", "--rope-base", "1000000"], 808),
    ("qwen3-f32-headdim8-mha", "qwen3", ["--layers", "1", "--hidden", "48", "--heads", "4", "--kv-heads", "4",
                                         "--head-dim", "8", "--ffn", "88", "--vocab-size", "301", "--dtype",
                                         "f32", "--seed", "99", "--context", "64", "--rope-base", "10000"], 909),
]


def prompt_ids(prompt_seed: int, vocab: int) -> list:
    rng = np.random.default_rng(prompt_seed)
    return [int(t) for t in rng.integers(0, vocab, PROMPT_LEN)]


def top2_gap(logits: torch.Tensor) -> float:
    top = torch.topk(logits, 2).values
    return float((top[0] - top[1]) / logits.abs().max())


def tiny_steps(model, prompt: list) -> list:
    """Prompt, then DECODE_STEPS greedy tokens fed back through the KV cache."""
    logits, tokens, _ = greedy_decode(model, prompt, DECODE_STEPS)
    # transformers against itself: the cached path must equal one uncached pass over the history.
    for i, err in enumerate(cache_errors(model, prompt, tokens, logits)):
        if err > 1e-5:
            raise AssertionError(f"transformers cached vs uncached differ at step {i}: {err}")
    inputs = [list(prompt)] + [[token] for token in tokens]
    return [{"input": x, "logits": step} for x, step in zip(inputs, logits)]


def rope_parameters(flags: list):
    """transformers' rope parameters for gen-model's `--rope-scaling llama3:...` (None otherwise)."""
    if "--rope-scaling" not in flags:
        return None
    kind, *nums = flags[flags.index("--rope-scaling") + 1].split(":")
    if kind == "yarn":
        factor, ctx = (float(v) for v in nums)
        return {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": int(ctx)}
    if kind != "llama3":
        raise ValueError(f"--rope-scaling {kind}: only llama3 and yarn are described here")
    factor, low, high, ctx = (float(v) for v in nums)
    return {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": int(ctx)}


def tiny_one(name: str, arch: str, flags: list, prompt_seed: int) -> None:
    gguf_path = MODELS / f"{name}.gguf"
    subprocess.run([str(BINARY), "gen-model", "--arch", arch, *flags, "--out", str(gguf_path)], check=True)
    size = gguf_path.stat().st_size
    if size >= MAX_FILE_BYTES:
        raise ValueError(f"{gguf_path} is {size} bytes; keep tiny models under {MAX_FILE_BYTES}")
    rope = rope_parameters(flags)
    loaded = model_load.load_checked(gguf_path, rope)
    fallback = model_load.build_from_state_dict(model_load.read_file(gguf_path, rope))
    if loaded.arch != arch:
        raise ValueError(f"{gguf_path}: gen-model --arch {arch} wrote a {loaded.arch} file")
    prompt = prompt_ids(prompt_seed, loaded.hp["vocab"])
    steps = tiny_steps(loaded.model, prompt)
    # The two ways of building the model must compute the same thing.
    for i, step in enumerate(tiny_steps(fallback, prompt)):
        err = float((step["logits"] - steps[i]["logits"]).abs().max() / steps[i]["logits"].abs().max())
        if err > 1e-5:
            raise AssertionError(f"{name}: GGUF-loaded and state-dict models differ at step {i}: {err}")
    records = []
    for step in steps:
        gap = top2_gap(step["logits"])
        if gap < MIN_TOP2_GAP:
            raise ValueError(f"{name}: top-2 logits only {gap:.2e} apart; pick another seed")
        argmax = int(torch.argmax(step["logits"]))
        records.append({"input": step["input"], "argmax": argmax, "top2_gap": round(gap, 6),
                        "logits": f32_list(step["logits"])})
    doc = {
        "generated_by": "scripts/golden/model.py tiny",
        "versions": versions(),
        "model_file": gguf_path.name,
        "model_sha256": sha256(gguf_path),
        "architecture": arch,
        "gen_model_flags": flags,
        "loader": loaded.loader,
        "hparams": loaded.hp,
        "prompt": prompt,
        "steps": records,
    }
    out = MODELS / f"{name}.json"
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"{out.relative_to(REPO)}: {size} B model, {len(records)} steps, loader: {loaded.loader}")


def out_of_date(name: str, arch: str, flags: list, prompt_seed: int):
    """Why the model's files must be written, or None when they are what TINY says."""
    gguf_path, json_path = MODELS / f"{name}.gguf", MODELS / f"{name}.json"
    if not gguf_path.is_file() or not json_path.is_file():
        return "no .gguf or no .json"
    doc = json.loads(json_path.read_text())
    if doc["gen_model_flags"] != flags:
        return "other gen-model flags"
    found = field(gguf.GGUFReader(str(gguf_path)), "general.architecture")
    if found != arch:
        return f"the .gguf is a {found} file"
    if doc["prompt"] != prompt_ids(prompt_seed, doc["hparams"]["vocab"]):
        return "another prompt seed or prompt length"
    if len(doc["steps"]) != DECODE_STEPS + 1:
        return "another number of decode steps"
    if sha256(gguf_path) != doc["model_sha256"]:
        return "the .gguf is not the file the .json was computed from"
    return None


def tiny(names: list) -> None:
    """The named models, or (no names) every model of TINY whose files are out of date."""
    known = [entry[0] for entry in TINY]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"unknown tiny model {unknown}; known: {known}")
    if not BINARY.is_file():
        raise SystemExit(f"{BINARY} is missing: run `cargo build --release` first")
    MODELS.mkdir(parents=True, exist_ok=True)
    for name, arch, flags, prompt_seed in TINY:
        if names and name not in names:
            continue
        why = "named" if names else out_of_date(name, arch, flags, prompt_seed)
        if why is None:
            print(f"{name}: up to date, skipped (`tiny {name}` rewrites it)")
            continue
        print(f"{name}: {why}; writing it")
        tiny_one(name, arch, flags, prompt_seed)


def main(argv: list) -> None:
    torch.manual_seed(0)
    torch.set_grad_enabled(False)
    if len(argv) < 2 or argv[1] not in ("tiny", "real", "all"):
        raise SystemExit(__doc__)
    if argv[1] == "tiny":
        tiny(argv[2:])
    if argv[1] == "all":
        tiny([])
    if argv[1] in ("real", "all"):
        model_path = Path(argv[2]) if len(argv) > 2 else model_real.default_model()
        model_real.run(model_path, REPO / "tests" / "golden" / "real-model.json")


if __name__ == "__main__":
    main(sys.argv)
