//! The CPU backend against Hugging Face transformers' `Qwen2ForCausalLM`, `LlamaForCausalLM` and
//! `Qwen3ForCausalLM` on tiny random models of each family.
//!
//! `tests/golden/models/<name>.gguf` is written by `layerstream gen-model --arch <family>`;
//! `<name>.json` holds transformers' float32 logits for a prompt and for greedy decode steps through
//! its KV cache (`scripts/golden/model.py tiny` writes both). Every vector must match within
//! `REL_TOL`, with the same argmax, whether the prompt is prefilled in one pass or in chunks.

use std::collections::BTreeSet;
use std::path::PathBuf;

use layerstream::backend::cpu::{CpuModel, CpuSession};
use layerstream::gguf::GgufFile;
use layerstream::model::ModelSpec;
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// `max|ours - golden| / max|golden|` per logits vector. Measured on this data: at most 5.9e-7
/// (qwen2), 4.4e-7 (llama, qwen3). Without qwen3's q/k norms or llama's Q/K un-permutation the
/// same data differ by 0.1 to 1.8.
const REL_TOL: f32 = 1e-5;
/// Chunked prefill against one-pass prefill of the same engine (only summation order may differ;
/// measured: at most 5.4e-7).
const CHUNK_TOL: f32 = 1e-5;
/// Every golden file the directory must hold; a missing or an extra one fails the test.
const MODELS: [&str; 11] = [
    "gqa-f32-untied",
    "tied-f16-gqa4to1",
    "mha-bf16-3layers",
    "odd-f16-5heads",
    "llama-gqa-f16-untied",
    "llama-mha-f32-tied-5heads",
    "llama31-rope-f16",
    "qwen2-yarn-f16",
    "qwen3-f16-headdim32",
    "qwen3-bf16-tied-gqa3to1",
    "qwen3-f32-headdim8-mha",
];
const REGENERATE: &str = "regenerate with `.venv-golden/bin/python scripts/golden/model.py tiny`";

#[derive(Deserialize)]
struct Golden {
    model_file: String,
    model_sha256: String,
    /// The family transformers computed (`general.architecture`); absent in the four Qwen2 files
    /// written before the other families.
    architecture: Option<String>,
    hparams: GoldenHParams,
    prompt: Vec<u32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct GoldenHParams {
    layers: usize,
    hidden: usize,
    ffn: usize,
    heads: usize,
    kv_heads: usize,
    /// Where the family's transformers config has one (llama, qwen3); Qwen2's heads are
    /// hidden / heads wide.
    head_dim: Option<usize>,
    vocab: usize,
    rope_base: f32,
    rms_eps: f32,
    tied: bool,
}

/// Tokens fed in this step (the prompt, then one greedy token) and transformers' logits after them.
#[derive(Deserialize)]
struct Step {
    input: Vec<u32>,
    argmax: usize,
    logits: Vec<f32>,
}

fn models_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/models")
}

fn read_golden(name: &str) -> (Golden, PathBuf) {
    let json_path = models_dir().join(format!("{name}.json"));
    let text = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", json_path.display()));
    let golden: Golden =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", json_path.display()));
    let model_path = models_dir().join(&golden.model_file);
    let bytes = std::fs::read(&model_path)
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", model_path.display()));
    let sha = format!("{:x}", Sha256::digest(&bytes));
    assert_eq!(
        sha,
        golden.model_sha256,
        "{} is not the file {name}.json was computed from; {REGENERATE}",
        model_path.display()
    );
    (golden, model_path)
}

fn rel_err(ours: &[f32], golden: &[f32]) -> f32 {
    assert_eq!(ours.len(), golden.len(), "logits length");
    let diff = ours
        .iter()
        .zip(golden)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    let scale = golden.iter().map(|b| b.abs()).fold(0f32, f32::max);
    assert!(
        diff.is_finite() && scale > 0.0,
        "logits not finite or all zero (diff {diff}, scale {scale})"
    );
    diff / scale
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (i, &x)| {
            if x > best.1 {
                (i, x)
            } else {
                best
            }
        })
        .0
}

/// Our logits for every golden step, feeding the same tokens, prefilling `max_batch` at a time.
fn run_steps(
    model: &CpuModel,
    spec: &ModelSpec,
    golden: &Golden,
    max_batch: usize,
) -> Vec<Vec<f32>> {
    let mut session = CpuSession::new(&spec.hp, 64, max_batch);
    golden
        .steps
        .iter()
        .map(|step| {
            session
                .eval(&spec.hp, model, &step.input)
                .expect("eval")
                .to_vec()
        })
        .collect()
}

fn check_model(name: &str) {
    let (golden, path) = read_golden(name);
    let file = GgufFile::open(&path).expect("open golden model");
    let spec = ModelSpec::from_file(&file).expect("model spec");
    let (hp, want) = (&spec.hp, &golden.hparams);
    assert_eq!(
        (
            hp.n_layer,
            hp.hidden,
            hp.ffn,
            hp.n_head,
            hp.n_kv_head,
            hp.vocab,
            spec.tied
        ),
        (
            want.layers,
            want.hidden,
            want.ffn,
            want.heads,
            want.kv_heads,
            want.vocab,
            want.tied
        ),
        "{name}: hyper-parameters as we read them vs as transformers was given them"
    );
    assert_eq!(
        (hp.rope_base, hp.rms_eps),
        (want.rope_base, want.rms_eps),
        "{name}: rope base, rms eps"
    );
    assert_eq!(
        (hp.family.name(), hp.head_dim),
        (
            golden.architecture.as_deref().unwrap_or("qwen2"),
            want.head_dim.unwrap_or(want.hidden / want.heads)
        ),
        "{name}: family and head dimension"
    );
    assert_eq!(
        golden.steps.first().map(|s| &s.input),
        Some(&golden.prompt),
        "{name}: first step is the prompt"
    );
    assert!(
        golden.steps.len() >= 5,
        "{name}: expected the prompt and at least 4 decode steps"
    );
    let model = CpuModel::load(&file, &spec).expect("load model");

    let reference = run_steps(&model, &spec, &golden, 256);
    let errs: Vec<f32> = reference
        .iter()
        .zip(&golden.steps)
        .map(|(ours, step)| rel_err(ours, &step.logits))
        .collect();
    // Every step's error, printed before any assertion (`--nocapture` shows it on success too).
    let shown: Vec<String> = errs.iter().map(|e| format!("{e:.2e}")).collect();
    eprintln!(
        "{name}: relative error per step (prompt first): {}",
        shown.join(" ")
    );
    for (i, (ours, step)) in reference.iter().zip(&golden.steps).enumerate() {
        let err = errs[i];
        assert!(
            err <= REL_TOL,
            "{name} step {i} (input {:?}): relative error {err:.3e} > {REL_TOL:e}",
            step.input
        );
        assert_eq!(
            argmax(ours),
            step.argmax,
            "{name} step {i}: greedy token differs from transformers"
        );
        if let Some(next) = golden.steps.get(i + 1) {
            assert_eq!(
                next.input,
                vec![step.argmax as u32],
                "{name}: step {} feeds back the greedy token",
                i + 1
            );
        }
    }
    for max_batch in [1, 3] {
        let chunked = run_steps(&model, &spec, &golden, max_batch);
        for (i, (ours, one_pass)) in chunked.iter().zip(&reference).enumerate() {
            let err = rel_err(ours, one_pass);
            assert!(
                err <= CHUNK_TOL,
                "{name} step {i}: max_batch {max_batch} differs from one pass by {err:.3e}"
            );
            assert!(
                rel_err(ours, &golden.steps[i].logits) <= REL_TOL,
                "{name} step {i}: max_batch {max_batch} vs golden"
            );
        }
    }
}

#[test]
fn gqa_f32_untied_model_matches_transformers() {
    check_model("gqa-f32-untied");
}

#[test]
fn tied_head_f16_model_with_one_kv_head_matches_transformers() {
    check_model("tied-f16-gqa4to1");
}

#[test]
fn three_layer_bf16_mha_model_matches_transformers() {
    check_model("mha-bf16-3layers");
}

#[test]
fn odd_width_f16_model_with_five_heads_matches_transformers() {
    check_model("odd-f16-5heads");
}

#[test]
fn llama_gqa_f16_model_matches_transformers() {
    check_model("llama-gqa-f16-untied");
}

#[test]
fn llama_tied_f32_mha_model_with_five_heads_matches_transformers() {
    check_model("llama-mha-f32-tied-5heads");
}

/// Llama 3.1's RoPE scaling (`rope_freqs.weight`), positions crossing all three bands of it.
#[test]
fn llama31_model_with_rope_frequency_factors_matches_transformers() {
    check_model("llama31-rope-f16");
}

/// YaRN: kept, blended and interpolated frequencies, cos/sin scaled by its attention factor.
#[test]
fn qwen2_model_with_yarn_rope_scaling_matches_transformers() {
    check_model("qwen2-yarn-f16");
}

#[test]
fn qwen3_f16_model_with_head_dim_wider_than_hidden_over_heads_matches_transformers() {
    check_model("qwen3-f16-headdim32");
}

#[test]
fn qwen3_tied_bf16_model_with_default_head_dim_matches_transformers() {
    check_model("qwen3-bf16-tied-gqa3to1");
}

#[test]
fn qwen3_f32_mha_model_with_narrow_heads_matches_transformers() {
    check_model("qwen3-f32-headdim8-mha");
}

#[test]
fn every_golden_model_on_disk_is_checked() {
    let on_disk: BTreeSet<String> = std::fs::read_dir(models_dir())
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", models_dir().display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    let listed: BTreeSet<String> = MODELS.iter().map(|s| s.to_string()).collect();
    assert_eq!(
        on_disk, listed,
        "tests/golden/models/*.json and MODELS must name the same models"
    );
}
