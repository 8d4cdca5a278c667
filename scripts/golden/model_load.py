"""Loading a Qwen2 GGUF file into transformers' Qwen2ForCausalLM, and proving it was read right.

Two independent readings of the same file are compared:

- transformers' own GGUF loader (`from_pretrained(dir, gguf_file=..., dtype=torch.float32)`), and
- gguf-py (`GGUFReader` + `gguf.quants.dequantize`): every metadata key the forward pass depends
  on and every tensor, mapped to Hugging Face names here.

`load_checked` uses transformers' loader when every config field and every parameter agrees with
gguf-py's reading, and otherwise builds the model from a `Qwen2Config` and the gguf-py state dict
(recording why), so the golden numbers never rest on a misread file.

Known mishandling of transformers 5.24's GGUF loader, worked around here:
- A file with no `tokenizer.ggml.tokens` (our tiny models are written with `--vocab-size`) has no
  vocabulary size the loader can find; it falls back to Qwen2Config's default 151936 and the
  embedding shapes no longer match. We pass `vocab_size` taken from `token_embd.weight`.
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import gguf
from transformers import AutoModelForCausalLM, Qwen2Config, Qwen2ForCausalLM

from model_util import arch_hparams, config_fields, field

ARCH = "qwen2"

# GGUF tensor name (per layer, without the `blk.{i}.` prefix) -> Hugging Face parameter suffix.
LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}


@dataclass
class FileModel:
    """What gguf-py reads from the file: hyper-parameters and float32 tensors under HF names."""

    hp: dict
    tensors: dict

    @property
    def tied(self) -> bool:
        return self.hp["tied"]


@dataclass
class Loaded:
    model: Qwen2ForCausalLM
    loader: str  # which path built `model`, and why when it is the fallback
    hp: dict


def hf_name(gguf_name: str) -> str:
    if gguf_name in GLOBAL_TENSORS:
        return GLOBAL_TENSORS[gguf_name]
    blk, layer, rest = gguf_name.split(".", 2)
    if blk != "blk" or rest not in LAYER_TENSORS:
        raise ValueError(f"unexpected tensor '{gguf_name}' in a qwen2 file")
    return f"model.layers.{int(layer)}.{LAYER_TENSORS[rest]}"


def read_file(path: Path) -> FileModel:
    """Read hyper-parameters and every tensor (dequantized to float32) with gguf-py alone."""
    reader = gguf.GGUFReader(str(path))
    arch = field(reader, "general.architecture")
    if arch != ARCH:
        raise ValueError(f"{path}: general.architecture is '{arch}', expected '{ARCH}'")
    tensors = {}
    for t in reader.tensors:
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # ggml dims are innermost first; numpy's shape is the reverse.
        want = tuple(int(d) for d in reversed(t.shape.tolist()))
        tensors[hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(values.reshape(want)))
    # The vocabulary size from the embedding: tiny models have no tokenizer.ggml.tokens.
    hp = arch_hparams(reader, ARCH, vocab=int(tensors["model.embed_tokens.weight"].shape[0]))
    return FileModel(hp=hp, tensors=tensors)


def qwen2_config(hp: dict) -> Qwen2Config:
    return Qwen2Config(
        **config_fields(hp),
        max_position_embeddings=hp["context"],
        rms_norm_eps=hp["rms_eps"],
        rope_parameters={"rope_type": "default", "rope_theta": hp["rope_base"]},
        tie_word_embeddings=hp["tied"],
        hidden_act="silu",
        attention_dropout=0.0,
        use_sliding_window=False,
    )


def build_from_state_dict(fm: FileModel) -> Qwen2ForCausalLM:
    """The fallback: a Qwen2ForCausalLM from our config and gguf-py's tensors, no GGUF loader."""
    model = Qwen2ForCausalLM(qwen2_config(fm.hp)).to(torch.float32)
    missing, unexpected = model.load_state_dict(fm.tensors, strict=False)
    allowed_missing = {"lm_head.weight"} if fm.tied else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if fm.tied:
        model.tie_weights()
    return model.eval()


def mismatches(model: Qwen2ForCausalLM, fm: FileModel) -> list:
    """Every way `model` disagrees with the file as gguf-py reads it (empty when it agrees)."""
    c, hp, bad = model.config, fm.hp, []
    want = {**config_fields(hp), "tie_word_embeddings": fm.tied}
    for key, value in want.items():
        if getattr(c, key) != value:
            bad.append(f"config.{key} = {getattr(c, key)!r}, file says {value!r}")
    theta = (c.rope_parameters or {}).get("rope_theta")
    if theta is None or np.float32(theta) != np.float32(hp["rope_base"]):
        bad.append(f"rope_theta = {theta!r}, file says {hp['rope_base']!r}")
    head_dim = hp["hidden"] // hp["heads"]
    inv_freq = 1.0 / (hp["rope_base"] ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    got = model.model.rotary_emb.inv_freq.double().numpy()
    if got.shape != inv_freq.shape or not np.allclose(got, inv_freq, rtol=1e-6, atol=0):
        bad.append(f"rotary inv_freq {got[:4]}... != NeoX 1/base^(2i/d) {inv_freq[:4]}...")
    norms = [m for m in model.modules() if type(m).__name__ == "Qwen2RMSNorm"]
    if len(norms) != 2 * hp["layers"] + 1:
        bad.append(f"{len(norms)} RMSNorm modules, expected {2 * hp['layers'] + 1}")
    for m in norms:
        if np.float32(m.variance_epsilon) != np.float32(hp["rms_eps"]):
            bad.append(f"RMSNorm eps {m.variance_epsilon!r}, file says {hp['rms_eps']!r}")
            break
    if c.hidden_act != "silu":
        bad.append(f"hidden_act {c.hidden_act!r}, expected 'silu' (SwiGLU)")
    bad += weight_mismatches(model, fm)
    return bad


def weight_mismatches(model: Qwen2ForCausalLM, fm: FileModel) -> list:
    bad = []
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, want in fm.tensors.items():
        got = params.get(name)
        if got is None:
            bad.append(f"parameter {name} missing")
        elif got.shape != want.shape or not torch.equal(got.detach(), want):
            bad.append(f"parameter {name} differs from the file ({tuple(got.shape)} vs {tuple(want.shape)})")
    if model.model.layers[0].self_attn.o_proj.bias is not None:
        bad.append("o_proj has a bias; Qwen2 has none")
    lm_head, embd = params["lm_head.weight"], params["model.embed_tokens.weight"]
    if fm.tied and not torch.equal(lm_head, embd):
        bad.append("file has no output.weight but lm_head is not the embedding")
    expected = set(fm.tensors) | ({"lm_head.weight"} if fm.tied else set())
    extra = set(params) - expected
    if extra:
        bad.append(f"parameters not in the file: {sorted(extra)}")
    return bad


def load_checked(path: Path) -> Loaded:
    """transformers' GGUF loader when it reads the file exactly as gguf-py does; else the fallback."""
    fm = read_file(path)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=torch.float32,
        vocab_size=fm.hp["vocab"],
        attn_implementation="eager",
    ).eval()
    bad = mismatches(model, fm)
    loader = "transformers GGUF loader"
    if bad:
        print(f"{path.name}: transformers' GGUF loader misread the file; using gguf-py tensors:")
        for line in bad:
            print(f"  {line}")
        model = build_from_state_dict(fm)
        loader = "Qwen2Config + gguf-py state dict (transformers' GGUF loader: " + "; ".join(bad[:3]) + ")"
        still = mismatches(model, fm)
        if still:
            raise ValueError(f"{path}: fallback model disagrees with the file: {still}")
    return Loaded(model=model, loader=loader, hp=fm.hp)
