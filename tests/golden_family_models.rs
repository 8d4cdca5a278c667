//! The real SmolLM2-135M-Instruct Q4_1 (`llama`) and Gemma 3 270M Q4_K_M (`gemma3`) files on the
//! CPU backend against Hugging Face transformers: for SmolLM2 the tokenizer on strings of every
//! kind and the chat template, for both the logits and greedy tokens of chat and raw prompts.
//!
//! `tests/golden/family-*.json` are written by `scripts/golden/family_real.py` (transformers reads
//! the GGUF and dequantizes it to float32; we dequantize to F16 and compute in F32).

mod common;

use std::path::PathBuf;

use layerstream::backend::cpu::{CpuModel, CpuSession};
use layerstream::chat_template::{ChatMessage, ChatTemplate};
use layerstream::gguf::GgufFile;
use layerstream::model::ModelSpec;
use layerstream::tokenizer::Tokenizer;
use serde::Deserialize;

use common::golden::{check_listed, sha256_hex, top_k};

/// Largest |ours - transformers| allowed on a listed logit. Measured on this data (2026-12-08):
/// at most 0.0133 (SmolLM2) and 0.0173 (Gemma 3) over every top-5 logit of every prompt and step
/// (|logit| up to ~30); the difference is the F16 rounding of the dequantized weights
/// (transformers keeps them in F32). 0.05 leaves 2.9x room; greedy tokens are compared wherever transformers' top two are more
/// than 0.1 apart (its near-ties, down to 0.006, are not ours to break the same way).
const LOGIT_TOL: f32 = 0.05;
const REGENERATE: &str = "regenerate with `.venv-golden/bin/python scripts/golden/family_real.py`";

#[derive(Deserialize)]
struct Golden {
    model_bytes: u64,
    model_sha256: String,
    stop_ids: Vec<u32>,
    prompts: Vec<Prompt>,
    encode: Vec<Encoded>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    messages: Option<Vec<ChatMessage>>,
    rendered: Option<String>,
    text: Option<String>,
    prompt_ids: Vec<u32>,
    top5: Vec<(u32, f32)>,
    greedy: Vec<u32>,
    step_top5: Vec<Vec<(u32, f32)>>,
}

#[derive(Deserialize)]
struct Encoded {
    text: String,
    /// Special-token strings parsed, without BOS.
    prompt_ids: Vec<u32>,
    /// Special-token strings parsed, BOS first where the vocabulary adds it (a raw prompt).
    ids_with_special_tokens: Vec<u32>,
    /// Special-token strings as text.
    plain_ids: Vec<u32>,
    decoded: String,
}

fn golden(name: &str) -> Golden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/golden/{name}"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn open_checked(path: &std::path::Path, g: &Golden) -> GgufFile {
    let bytes = std::fs::metadata(path).expect("model metadata").len();
    assert_eq!(
        bytes,
        g.model_bytes,
        "{} is not the golden file",
        path.display()
    );
    assert_eq!(
        sha256_hex(path),
        g.model_sha256,
        "{} differs",
        path.display()
    );
    GgufFile::open(path).expect("open model")
}

/// The tokenizer on every string of `g` (raw prompt, plain text, decoding) and the chat template
/// on every chat prompt (rendered text and ids); the family's turn end stops generation.
fn check_tokenizer(g: &Golden, path: &std::path::Path) {
    let file = open_checked(path, g);
    let tok = Tokenizer::from_metadata(file.metadata()).expect("tokenizer");
    let tmpl = ChatTemplate::from_metadata(file.metadata()).expect("chat template");
    assert!(g.encode.len() >= 30, "a string set of every kind");
    for e in &g.encode {
        let t = &e.text;
        let want = &e.ids_with_special_tokens;
        assert_eq!(&tok.encode_prompt(t).unwrap(), want, "prompt {t:?}");
        assert_eq!(tok.encode_plain(t).unwrap(), e.plain_ids, "plain {t:?}");
        assert_eq!(
            tok.decode(&e.prompt_ids).unwrap(),
            e.decoded,
            "decode {t:?}"
        );
    }
    let chats: Vec<&Prompt> = g.prompts.iter().filter(|p| p.messages.is_some()).collect();
    assert!(chats.len() >= 3, "chat prompts");
    for p in chats {
        let messages = p.messages.as_ref().unwrap();
        let (text, ids) = tok.encode_chat_with_text(&tmpl, messages).unwrap();
        assert_eq!(Some(&text), p.rendered.as_ref(), "{}: rendered", p.name);
        assert_eq!(ids, p.prompt_ids, "{}: ids", p.name);
    }
    for id in &g.stop_ids {
        assert!(tok.eos_ids().contains(id), "{id} does not stop generation");
    }
}

#[test]
fn smollm2_tokenizer_and_template_match_transformers() {
    check_tokenizer(&golden("family-smollm2.json"), &common::real_smollm2());
}

/// Gemma 3's SentencePiece-style vocabulary (merges recovered from the vocabulary, byte fallback,
/// runs of spaces, newlines and tabs as user-defined tokens, BOS added) and its instruct format
/// (built in: the file has no template).
#[test]
fn gemma3_tokenizer_and_template_match_transformers() {
    check_tokenizer(&golden("family-gemma3.json"), &common::real_gemma3());
}

/// Every prompt of `g` through the CPU backend on `path`, teacher-forced on transformers' greedy
/// tokens: each listed top-5 logit within `tol`, and our greedy pick transformers' wherever its
/// top two are more than `2 * tol` apart. Returns the largest difference and the steps compared.
fn check_logits(g: &Golden, path: &std::path::Path, tol: f32) -> (f32, usize) {
    let file = open_checked(path, g);
    let spec = ModelSpec::from_file(&file).expect("model spec");
    let model = CpuModel::load(&file, &spec).expect("load model");
    let (mut worst, mut steps) = (0f32, 0);
    for p in &g.prompts {
        let name = &p.name;
        assert!(p.messages.is_some() || p.text.is_some(), "{name}");
        let room = p.prompt_ids.len() + p.greedy.len() + 1;
        let mut session = CpuSession::new(&spec.hp, room, 256);
        let ids = &p.prompt_ids;
        let mut logits = session
            .eval(&spec.hp, &model, ids)
            .expect("prefill")
            .to_vec();
        let what = format!("{name} after the prompt");
        worst = worst.max(check_listed(&what, &logits, &p.top5, tol));
        for (i, &want) in p.greedy.iter().enumerate() {
            let top = if i == 0 { &p.top5 } else { &p.step_top5[i - 1] };
            if top[0].1 - top[1].1 > 2.0 * tol {
                assert_eq!(top_k(&logits, 1)[0].0, want, "{name}: greedy token {i}");
                steps += 1;
            }
            if i + 1 == p.greedy.len() || i >= p.step_top5.len() {
                break;
            }
            logits = session
                .eval(&spec.hp, &model, &[want])
                .expect("decode")
                .to_vec();
            let what = format!("{name} after greedy token {i}");
            worst = worst.max(check_listed(&what, &logits, &p.step_top5[i], tol));
        }
    }
    (worst, steps)
}

#[test]
fn smollm2_logits_and_greedy_tokens_match_transformers() {
    let g = golden("family-smollm2.json");
    let (worst, steps) = check_logits(&g, &common::real_smollm2(), LOGIT_TOL);
    println!("SmolLM2: largest top-5 logit difference {worst}; {steps} greedy steps compared");
    assert!(steps >= 50, "too few greedy steps compared: {steps}");
}

/// Gemma 3 270M (transformers' prompt ids are fed, so this checks the model alone): sliding-window and global layers with two RoPE bases, q/k norms, post norms,
/// GeGLU, scaled embeddings. `raw-squares-long` (970 tokens) is longer than the 512-position
/// window, so a model without the window cannot pass.
#[test]
fn gemma3_logits_and_greedy_tokens_match_transformers() {
    let g = golden("family-gemma3.json");
    assert!(
        g.prompts.iter().any(|p| p.prompt_ids.len() > 512),
        "a prompt past the window"
    );
    let (worst, steps) = check_logits(&g, &common::real_gemma3(), LOGIT_TOL);
    println!("Gemma 3: largest top-5 logit difference {worst}; {steps} greedy steps compared");
    assert!(steps >= 50, "too few greedy steps compared: {steps}");
}
