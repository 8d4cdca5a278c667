"""Loading a GGUF file into transformers, and proving it was read right: qwen2 (Qwen2ForCausalLM),
llama (LlamaForCausalLM) and qwen3 (Qwen3ForCausalLM) files, with a fallback (model.py, model_real.py);
gemma3 files are read and checked with the same code by family_real.py, which has no fallback.

Two independent readings of the same file are compared:

- transformers' own GGUF loader (`from_pretrained(dir, gguf_file=..., dtype=torch.float32)`), and
- gguf-py (`GGUFReader` + `gguf.quants.dequantize`): every metadata key the forward pass depends on
  and every tensor, mapped to Hugging Face names and conventions here (`read_tensors`). Two
  transforms the loader applies are made here too, independently: llama.cpp's converter permuted
  each head's llama Q/K rows for interleaved RoPE (`unpermute` undoes it, as the loader does and as
  our engine does at load), and Gemma's norm weights hold 1 + w (compared as such).

`mismatches` lists every disagreement: the config fields of the family (`expected_config`: shapes,
head dimension, tying, context, activation, biases, attention layout), the RoPE tables (default
rope type, NeoX inverse frequencies 1/base^(2i/head_dim)), the RMSNorm modules (count and eps), and
every parameter (equal to the file's, none missing, none extra, no o_proj bias).

`load_checked` uses transformers' loader when `mismatches` is empty, and otherwise builds the model
from the family's config and the gguf-py state dict (`build_from_state_dict`, recording why), so
the golden numbers never rest on a misread file.

Known mishandling of transformers 5.24's GGUF loader, worked around here (`loader_overrides`):
- A file with no `tokenizer.ggml.tokens` (our tiny models are written with `--vocab-size`) has no
  vocabulary size the loader can find; it falls back to the config class's default (Qwen2's
  151936) and the embedding shapes no longer match. We pass `vocab_size` taken from
  `token_embd.weight`.
- qwen3: the loader's metadata map has no `qwen3.attention.key_length`, so the head dimension is
  Qwen3Config's default 128 whatever the file says, and every attention shape mismatches. We pass
  `head_dim` as the file gives it (`attention.key_length`, else hidden / heads, as our engine reads
  it).
"""
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import gguf
from transformers import (AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM,
                          Qwen3Config, Qwen3ForCausalLM)

from model_util import arch_hparams, config_fields, field

# The families load_checked builds, each with the classes of its fallback.
FALLBACK_CLASSES = {
    "qwen2": (Qwen2Config, Qwen2ForCausalLM),
    "llama": (LlamaConfig, LlamaForCausalLM),
    "qwen3": (Qwen3Config, Qwen3ForCausalLM),
}

# GGUF tensor name (per layer, without the `blk.{i}.` prefix) -> Hugging Face parameter suffix.
_ATTENTION_MLP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_QKV_BIAS = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}
_QK_NORM = {"attn_q_norm.weight": "self_attn.q_norm.weight", "attn_k_norm.weight": "self_attn.k_norm.weight"}
_FFN_NORM = {"ffn_norm.weight": "post_attention_layernorm.weight"}
LAYER_TENSORS = {
    "qwen2": {**_ATTENTION_MLP, **_QKV_BIAS, **_FFN_NORM},
    "llama": {**_ATTENTION_MLP, **_FFN_NORM},
    "qwen3": {**_ATTENTION_MLP, **_QK_NORM, **_FFN_NORM},
    "gemma3": {
        **_ATTENTION_MLP,
        **_QK_NORM,
        "post_attention_norm.weight": "post_attention_layernorm.weight",
        "ffn_norm.weight": "pre_feedforward_layernorm.weight",
        "post_ffw_norm.weight": "post_feedforward_layernorm.weight",
    },
}
GLOBAL_TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
# RMSNorm modules per layer: attention and MLP inputs, then q/k heads, then Gemma's two post-norms.
NORMS_PER_LAYER = {"qwen2": 2, "llama": 2, "qwen3": 4, "gemma3": 6}


@dataclass
class FileModel:
    """What gguf-py reads from the file: its family, hyper-parameters and float32 tensors under HF
    names, in HF's conventions."""

    arch: str
    hp: dict
    tensors: dict

    @property
    def tied(self) -> bool:
        return self.hp["tied"]


@dataclass
class Loaded:
    model: torch.nn.Module
    loader: str  # which path built `model`, and why when it is the fallback
    arch: str
    hp: dict


# ---- gguf-py's reading -------------------------------------------------------------------------


def file_hparams(reader: gguf.GGUFReader, arch: str, vocab: int) -> dict:
    """model_util.arch_hparams, then `head_dim` where the family's transformers config has one (Qwen2's
    has none: its heads are hidden / heads wide): llama's from `rope.dimension_count` (the key the
    loader maps), qwen3's and gemma3's from `attention.key_length` (qwen3: else hidden / heads)."""
    found = field(reader, "general.architecture")
    if found != arch:
        raise ValueError(f"general.architecture is '{found}', expected '{arch}'")
    hp = arch_hparams(reader, arch, vocab)
    even = hp["hidden"] // hp["heads"]
    if arch == "llama":
        hp["head_dim"] = int(field(reader, "llama.rope.dimension_count", even))
    elif arch == "qwen3":
        hp["head_dim"] = int(field(reader, "qwen3.attention.key_length", even))
    elif arch == "gemma3":
        hp["head_dim"] = int(field(reader, "gemma3.attention.key_length"))
    freqs = [t for t in reader.tensors if t.name == "rope_freqs.weight"]
    if freqs:
        hp["rope_freqs"] = [float(v) for v in np.asarray(freqs[0].data, dtype=np.float32)]
    return hp


def head_dim(hp: dict) -> int:
    return hp.get("head_dim", hp["hidden"] // hp["heads"])


def unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf permutation of llama Q/K rows (made so that ggml's
    adjacent-pair RoPE on the file's rows equals HF's rotate-half RoPE on the original rows)."""
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def read_tensors(reader: gguf.GGUFReader, arch: str, hp: dict) -> dict:
    """Every tensor, dequantized to float32 by gguf-py, under the HF name and in HF's convention."""
    layer_names = LAYER_TENSORS[arch]
    out = {}
    for t in reader.tensors:
        if t.name == "rope_freqs.weight":
            continue  # Llama 3.1's frequency factors: hp["rope_freqs"] (file_hparams), not a parameter
        values = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        # ggml dims are innermost first; numpy's shape is the reverse.
        values = values.reshape(tuple(int(d) for d in reversed(t.shape.tolist())))
        if t.name in GLOBAL_TENSORS:
            name, short = GLOBAL_TENSORS[t.name], t.name
        else:
            blk, layer, short = t.name.split(".", 2)
            if blk != "blk" or short not in layer_names:
                raise ValueError(f"unexpected tensor '{t.name}' in a {arch} file")
            name = f"model.layers.{int(layer)}.{layer_names[short]}"
        if arch == "llama" and short == "attn_q.weight":
            values = unpermute(values, hp["heads"])
        elif arch == "llama" and short == "attn_k.weight":
            values = unpermute(values, hp["kv_heads"])
        out[name] = torch.from_numpy(np.ascontiguousarray(values))
    return out


def read_file(path: Path, rope_parameters: dict = None) -> FileModel:
    """Read the family, hyper-parameters and every tensor (dequantized to float32) with gguf-py alone.
    `rope_parameters`: the RoPE scaling the file was made with, where the file cannot say it whole
    (Llama 3.1's `llama3` type is stored as its per-frequency factors only); checked against them."""
    reader = gguf.GGUFReader(str(path))
    arch = field(reader, "general.architecture")
    if arch not in FALLBACK_CLASSES:
        raise ValueError(f"{path}: general.architecture is '{arch}', expected one of {sorted(FALLBACK_CLASSES)}")
    # The vocabulary size from the embedding: tiny models have no tokenizer.ggml.tokens.
    embd = next(t for t in reader.tensors if t.name == "token_embd.weight")
    hp = file_hparams(reader, arch, vocab=int(embd.shape[1]))
    if rope_parameters is not None:
        hp["rope_parameters"] = {**rope_parameters, "rope_theta": hp["rope_base"]}
    elif "rope_freqs" in hp:
        raise ValueError(f"{path}: rope_freqs.weight is set; say which rope parameters made it")
    return FileModel(arch=arch, hp=hp, tensors=read_tensors(reader, arch, hp))


# ---- what the model must be --------------------------------------------------------------------


def expected_config(arch: str, hp: dict) -> dict:
    """The transformers config fields that shape the family's forward pass, as the file gives them."""
    want = {**config_fields(hp), "tie_word_embeddings": hp["tied"], "max_position_embeddings": hp["context"]}
    if arch != "qwen2":
        want["head_dim"] = hp["head_dim"]
    if arch == "gemma3":
        pattern = hp["sliding_window_pattern"]
        want.update({
            "hidden_activation": "gelu_pytorch_tanh",
            "sliding_window": hp["sliding_window"],
            "query_pre_attn_scalar": hp["head_dim"],
            "final_logit_softcapping": None,
            "attn_logit_softcapping": None,
            "use_bidirectional_attention": False,
            "layer_types": ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
                            for i in range(hp["layers"])],
        })
        return want
    want["hidden_act"] = "silu"  # SwiGLU
    if arch == "llama":
        want.update({"attention_bias": False, "mlp_bias": False})
    if arch == "qwen3":
        want["attention_bias"] = False
    if arch in ("qwen2", "qwen3"):
        want["use_sliding_window"] = False
    return want


def rope_tables(model, arch: str, hp: dict) -> dict:
    """label -> (the model's inverse frequencies, its rope parameters, the base the file gives)."""
    c, rotary = model.config, model.model.rotary_emb
    if arch == "gemma3":
        return {"full_attention": (rotary.full_attention_inv_freq, c.rope_parameters["full_attention"],
                                   hp["rope_base"]),
                "sliding_attention": (rotary.sliding_attention_inv_freq, c.rope_parameters["sliding_attention"],
                                      hp["rope_base_local"])}
    return {"": (rotary.inv_freq, c.rope_parameters or {}, hp["rope_base"])}


def inv_freq(base: float, dim: int) -> np.ndarray:
    return 1.0 / (base ** (np.arange(0, dim, 2, dtype=np.float64) / dim))


def yarn_inv_freq(base: float, dim: int, factor: float, ctx: int, beta_fast=32.0, beta_slow=1.0) -> np.ndarray:
    """YaRN's frequencies from the paper's definition, in float64: kept below the dimension that
    turns `beta_fast` times over `ctx`, divided by `factor` above the one that turns `beta_slow`
    times, blended linearly between (boundaries truncated to whole dimensions)."""
    def dim_of(rotations):
        return dim * np.log(ctx / (rotations * 2 * np.pi)) / (2 * np.log(base))
    low, high = max(np.floor(dim_of(beta_fast)), 0), min(np.ceil(dim_of(beta_slow)), dim - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    kept = inv_freq(base, dim)
    return kept / factor * ramp + kept * (1 - ramp)


def config_mismatches(model, arch: str, hp: dict) -> list:
    c, bad = model.config, []
    for key, value in expected_config(arch, hp).items():
        if getattr(c, key, None) != value:
            bad.append(f"config.{key} = {getattr(c, key, None)!r}, file says {value!r}")
    if np.float32(c.rms_norm_eps) != np.float32(hp["rms_eps"]):
        bad.append(f"rms_norm_eps {c.rms_norm_eps!r}, file says {hp['rms_eps']!r}")
    dim = head_dim(hp)
    for label, (got, params, base) in rope_tables(model, arch, hp).items():
        want = hp.get("rope_parameters", {"rope_type": "default", "rope_theta": base})
        theta = params.get("rope_theta")
        if any(params.get(k) != v for k, v in want.items() if k != "rope_theta") or theta is None \
                or np.float32(theta) != np.float32(base):
            bad.append(f"rope parameters {label} {params!r}, the file says {want!r}")
        expect = inv_freq(base, dim)
        if "rope_freqs" in hp:
            # Llama 3.1: the converter's factors divide each frequency (as our engine applies them).
            expect = expect / np.asarray(hp["rope_freqs"], dtype=np.float64)
        if want.get("rope_type") == "yarn":
            expect = yarn_inv_freq(base, dim, want["factor"], want["original_max_position_embeddings"])
            scaling = model.model.rotary_emb.attention_scaling
            if not np.isclose(scaling, 0.1 * np.log(want["factor"]) + 1, rtol=1e-9):
                bad.append(f"yarn attention scaling {scaling}, expected 0.1 ln(factor) + 1")
        got = got.double().numpy()
        if got.shape != expect.shape or not np.allclose(got, expect, rtol=1e-6, atol=0):
            bad.append(f"rotary inv_freq {label} {got[:3]}... != the file's {expect[:3]}...")
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm")]
    count = NORMS_PER_LAYER[arch] * hp["layers"] + 1
    if len(norms) != count:
        bad.append(f"{len(norms)} RMSNorm modules, expected {count}")
    for m in norms:
        eps = getattr(m, "variance_epsilon", getattr(m, "eps", None))
        if eps is None or np.float32(eps) != np.float32(hp["rms_eps"]):
            bad.append(f"RMSNorm eps {eps!r}, file says {hp['rms_eps']!r}")
            break
    return bad


def weight_mismatches(model, arch: str, hp: dict, tensors: dict) -> list:
    bad = []
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, want in tensors.items():
        got = params.get(name)
        if got is None:
            bad.append(f"parameter {name} missing")
            continue
        got = got.detach()
        if arch == "gemma3" and name.endswith("norm.weight"):
            # Gemma's RMSNorm scales by (1 + w); the file stores 1 + w and the loader subtracts 1.
            same = got.shape == want.shape and torch.allclose(got + 1, want, rtol=1e-6, atol=1e-6)
        else:
            same = got.shape == want.shape and torch.equal(got, want)
        if not same:
            bad.append(f"parameter {name} differs from the file ({tuple(got.shape)} vs {tuple(want.shape)})")
    if model.model.layers[0].self_attn.o_proj.bias is not None:
        bad.append("o_proj has a bias; no family here has one")
    if hp["tied"] and not torch.equal(params["lm_head.weight"], params["model.embed_tokens.weight"]):
        bad.append("file has no output.weight but lm_head is not the embedding")
    extra = set(params) - set(tensors) - ({"lm_head.weight"} if hp["tied"] else set())
    if extra:
        bad.append(f"parameters not in the file: {sorted(extra)}")
    return bad


def mismatches(model, arch: str, hp: dict, tensors: dict) -> list:
    """Every way `model` disagrees with the file as gguf-py reads it (empty when it agrees)."""
    return config_mismatches(model, arch, hp) + weight_mismatches(model, arch, hp, tensors)


# ---- building the model ------------------------------------------------------------------------


def hf_config(fm: FileModel):
    """The fallback's config: expected_config's fields, the RMSNorm eps and default RoPE."""
    config_class = FALLBACK_CLASSES[fm.arch][0]
    return config_class(
        **expected_config(fm.arch, fm.hp),
        rms_norm_eps=fm.hp["rms_eps"],
        rope_parameters=fm.hp.get("rope_parameters", {"rope_type": "default", "rope_theta": fm.hp["rope_base"]}),
        attention_dropout=0.0,
    )


def build_from_state_dict(fm: FileModel):
    """The fallback: the family's model from our config and gguf-py's tensors, no GGUF loader."""
    model = FALLBACK_CLASSES[fm.arch][1](hf_config(fm)).to(torch.float32)
    missing, unexpected = model.load_state_dict(fm.tensors, strict=False)
    allowed_missing = {"lm_head.weight"} if fm.tied else set()
    if set(missing) - allowed_missing or unexpected:
        raise ValueError(f"state dict mismatch: missing {missing}, unexpected {unexpected}")
    if fm.tied:
        model.tie_weights()
    return model.eval()


def loader_overrides(fm: FileModel) -> dict:
    """Config values transformers' GGUF loader cannot find in our files (see the module's docstring)."""
    out = {"vocab_size": fm.hp["vocab"]}
    if fm.arch == "qwen3":
        out["head_dim"] = fm.hp["head_dim"]
    if "rope_parameters" in fm.hp:
        out["rope_parameters"] = fm.hp["rope_parameters"]
    return out


def load_checked(path: Path, rope_parameters: dict = None) -> Loaded:
    """transformers' GGUF loader when it reads the file exactly as gguf-py does; else the fallback."""
    fm = read_file(path, rope_parameters)
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent),
        gguf_file=path.name,
        dtype=torch.float32,
        attn_implementation="eager",
        **loader_overrides(fm),
    ).eval()
    bad = mismatches(model, fm.arch, fm.hp, fm.tensors)
    loader = "transformers GGUF loader"
    if bad:
        print(f"{path.name}: transformers' GGUF loader misread the file; using gguf-py tensors:")
        for line in bad:
            print(f"  {line}")
        model = build_from_state_dict(fm)
        config_name = FALLBACK_CLASSES[fm.arch][0].__name__
        loader = f"{config_name} + gguf-py state dict (transformers' GGUF loader: " + "; ".join(bad[:3]) + ")"
        still = mismatches(model, fm.arch, fm.hp, fm.tensors)
        if still:
            raise ValueError(f"{path}: fallback model disagrees with the file: {still}")
    return Loaded(model=model, loader=loader, arch=fm.arch, hp=fm.hp)
