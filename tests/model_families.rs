//! The architecture table on files from our own writer: each supported family (qwen2, llama,
//! qwen3, gemma3) validates with its own tensors, an
//! unknown family is refused listing the supported ones, and a file of a supported family with a
//! missing tensor, a head count that does not divide, biases in some layers only, a window wider
//! than the context, or RoPE scaling it cannot compute is refused naming the key or tensor — before
//! any weight is read.

mod common;

use std::path::{Path, PathBuf};

use layerstream::gguf::{GgufFile, Value};
use layerstream::model::arch::Family;
use layerstream::model::random::{write_random_model, RandomModelSpec, VocabSource, WeightDtype};
use layerstream::model::ModelSpec;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("model-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn random(family: Family, name: &str) -> PathBuf {
    random_with(family, name, None)
}

fn random_with(family: Family, name: &str, head_dim: Option<usize>) -> PathBuf {
    let path = scratch(name);
    let spec = RandomModelSpec {
        family,
        layers: 2,
        hidden: 32,
        heads: 4,
        kv_heads: 2,
        ffn: 48,
        vocab: VocabSource::Size(64),
        tied: true,
        dtype: WeightDtype::F16,
        seed: 3,
        context: 128,
        rope_base: 10_000.0,
        head_dim,
        sliding_window: None,
        rope_scaling: Default::default(),
    };
    write_random_model(&spec, &path).unwrap();
    path
}

/// A copy of `src` without the tensors `drop` names, with metadata `set` (added or replaced)
/// and extra tensors `add` (F32, `[n]`).
fn rewrite(
    src: &Path,
    name: &str,
    drop: &[&str],
    set: &[(&str, Value)],
    add: &[(&str, usize)],
) -> PathBuf {
    common::rewrite::rewrite(src, scratch(name), drop, set, add)
}

fn refusal(path: &Path) -> String {
    let file = GgufFile::open(path).unwrap();
    match ModelSpec::from_file(&file) {
        Ok(_) => panic!("{} was accepted", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn each_family_validates_with_its_own_tensors() {
    let q = GgufFile::open(&random(Family::Qwen2, "qwen2.gguf")).unwrap();
    let spec = ModelSpec::from_file(&q).unwrap();
    assert_eq!(spec.hp.family, Family::Qwen2);
    assert!(spec.qkv_bias);
    let l = GgufFile::open(&random(Family::Llama, "llama.gguf")).unwrap();
    let spec = ModelSpec::from_file(&l).unwrap();
    assert_eq!(spec.hp.family, Family::Llama);
    assert!(!spec.qkv_bias, "Llama files carry no Q/K/V biases");
    assert_eq!(spec.hp.head_dim, 8);
    // Qwen3: q/k norms, no biases, a head dimension from attention.key_length (not 32 / 4).
    let q3 = GgufFile::open(&random_with(Family::Qwen3, "qwen3.gguf", Some(16))).unwrap();
    let spec = ModelSpec::from_file(&q3).unwrap();
    assert_eq!(
        (spec.hp.family, spec.hp.head_dim, spec.qkv_bias),
        (Family::Qwen3, 16, false)
    );
    assert_eq!(spec.hp.q_dim(), 64);
    let names: Vec<&str> = spec.layer_tensors().iter().map(|t| t.suffix()).collect();
    assert!(names.contains(&"attn_q_norm.weight") && !names.contains(&"attn_q.bias"));
    // Gemma 3: q/k norms and post norms, local layers but every sixth.
    let g = GgufFile::open(&random(Family::Gemma3, "gemma3.gguf")).unwrap();
    let spec = ModelSpec::from_file(&g).unwrap();
    assert_eq!(
        spec.hp.sliding_window,
        Some(128),
        "the window is capped at the context"
    );
    assert_eq!((spec.hp.window(0), spec.hp.window(5)), (Some(128), None));
    assert_eq!(
        (spec.hp.local_rope(0), spec.hp.local_rope(5)),
        (true, false)
    );
    let d = spec.hp.head_dim as f32;
    assert_eq!(spec.hp.inv_freq(true)[1], 1.0 / 10_000f32.powf(2.0 / d));
    let names: Vec<&str> = spec.layer_tensors().iter().map(|t| t.suffix()).collect();
    assert!(names.contains(&"post_ffw_norm.weight"), "{names:?}");
    assert_eq!(spec.hp.attn_scale(), 1.0 / d.sqrt());
    // Gemma 3 27B (62 layers, 5376 wide, 32 heads of 128) scales by its hidden size per head.
    let mut big = spec.hp.clone();
    (big.n_layer, big.hidden, big.n_head, big.head_dim) = (62, 5376, 32, 128);
    assert_eq!(big.attn_scale(), 1.0 / 168f32.sqrt());
}

#[test]
fn an_unknown_architecture_is_refused_listing_the_supported_ones() {
    let src = random(Family::Llama, "llama-src.gguf");
    let set = [("general.architecture", Value::String("mamba".into()))];
    let e = refusal(&rewrite(&src, "mamba.gguf", &[], &set, &[]));
    assert!(e.contains("'mamba'") && e.contains("qwen2, llama"), "{e}");
    let set = [("general.architecture", Value::String("mixtral".into()))];
    let e = refusal(&rewrite(&src, "mixtral.gguf", &[], &set, &[]));
    assert!(e.contains("mixture-of-experts"), "{e}");
}

#[test]
fn a_missing_tensor_or_bias_is_named() {
    let llama = random(Family::Llama, "llama-missing-src.gguf");
    let e = refusal(&rewrite(
        &llama,
        "no-up.gguf",
        &["blk.1.ffn_up.weight"],
        &[],
        &[],
    ));
    assert!(e.contains("'blk.1.ffn_up.weight' is missing"), "{e}");
    let qwen = random(Family::Qwen2, "qwen-missing-src.gguf");
    let e = refusal(&rewrite(
        &qwen,
        "no-bias.gguf",
        &["blk.0.attn_k.bias"],
        &[],
        &[],
    ));
    assert!(e.contains("'blk.0.attn_k.bias' is missing"), "{e}");
    let qwen3 = random(Family::Qwen3, "qwen3-missing-src.gguf");
    let e = refusal(&rewrite(
        &qwen3,
        "no-k-norm.gguf",
        &["blk.1.attn_k_norm.weight"],
        &[],
        &[],
    ));
    assert!(e.contains("'blk.1.attn_k_norm.weight' is missing"), "{e}");
    // A Llama file with biases in layer 1 but not layer 0.
    let e = refusal(&rewrite(
        &llama,
        "half-bias.gguf",
        &[],
        &[],
        &[("blk.1.attn_q.bias", 32)],
    ));
    assert!(e.contains("blk.1.attn_q.bias"), "{e}");
}

#[test]
fn shapes_and_rope_settings_that_cannot_be_computed_are_named() {
    let src = random(Family::Llama, "llama-shape-src.gguf");
    let set = [("llama.attention.head_count", Value::U32(5))];
    let e = refusal(&rewrite(&src, "heads5.gguf", &[], &set, &[]));
    assert!(
        e.contains("llama.attention.head_count") && e.contains("does not divide"),
        "{e}"
    );
    let set = [("llama.rope.scaling.type", Value::String("longrope".into()))];
    let e = refusal(&rewrite(&src, "longrope.gguf", &[], &set, &[]));
    assert!(
        e.contains("llama.rope.scaling.type") && e.contains("longrope"),
        "{e}"
    );
    // YaRN needs its original context.
    let set = [
        ("llama.rope.scaling.type", Value::String("yarn".into())),
        ("llama.rope.scaling.factor", Value::F32(4.0)),
    ];
    let e = refusal(&rewrite(&src, "yarn.gguf", &[], &set, &[]));
    assert!(
        e.contains("llama.rope.scaling.original_context_length"),
        "{e}"
    );
    let e = refusal(&rewrite(
        &src,
        "freqs.gguf",
        &[],
        &[],
        &[("rope_freqs.weight", 4)],
    ));
    assert!(e.contains("rope_freqs.weight"), "{e}");
    let set = [("llama.attention.key_length", Value::U32(7))];
    let e = refusal(&rewrite(&src, "odd-head.gguf", &[], &set, &[]));
    assert!(e.contains("head dimension 7"), "{e}");
    // A sliding window where the family has none, or one larger than the context.
    let qwen3 = random(Family::Qwen3, "qwen3-window-src.gguf");
    let set = [("qwen3.attention.sliding_window", Value::U32(64))];
    let e = refusal(&rewrite(&qwen3, "qwen3-window.gguf", &[], &set, &[]));
    assert!(e.contains("qwen3.attention.sliding_window"), "{e}");
    // Mistral's window covers every layer; linear scaling divides every frequency.
    let set = [
        ("llama.attention.sliding_window", Value::U32(64)),
        ("llama.rope.scaling.type", Value::String("linear".into())),
        ("llama.rope.scaling.factor", Value::F32(4.0)),
    ];
    let f = GgufFile::open(&rewrite(&src, "mistral-window.gguf", &[], &set, &[])).unwrap();
    let hp = ModelSpec::from_file(&f).unwrap().hp;
    assert_eq!((hp.window(0), hp.window(1)), (Some(64), Some(64)));
    assert_eq!(hp.inv_freq(false)[0], 0.25);
    let set = [("llama.rope.scaling.type", Value::String("linear".into()))];
    let e = refusal(&rewrite(&src, "linear-no-factor.gguf", &[], &set, &[]));
    assert!(e.contains("llama.rope.scaling.factor"), "{e}");
    let gemma = random(Family::Gemma3, "gemma3-window-src.gguf");
    let set = [("gemma3.attention.sliding_window", Value::U32(4096))];
    let e = refusal(&rewrite(&gemma, "gemma3-window.gguf", &[], &set, &[]));
    assert!(
        e.contains("gemma3.attention.sliding_window") && e.contains("4096"),
        "{e}"
    );
}
