//! The CPU backend, tokenizer and chat template against Hugging Face transformers on the real
//! Qwen2.5-Coder-0.5B-Instruct F16 model.
//!
//! `tests/golden/real-model.json` (written by `scripts/golden/model.py real`) holds, per prompt,
//! transformers' prompt token ids, its top-5 (id, logit) after the prompt and after every greedy
//! token, and its greedy continuation. One test function loads the 1.27 GB model once and checks
//! every prompt.

mod common;

use std::path::PathBuf;

use layerstream::backend::cpu::{CpuModel, CpuSession};
use layerstream::chat_template::{ChatMessage, ChatTemplate};
use layerstream::gguf::GgufFile;
use layerstream::model::ModelSpec;
use layerstream::tokenizer::Tokenizer;
use serde::Deserialize;

use common::golden::{check_top5, sha256_hex, top_k};

/// Largest |ours - transformers| allowed on a top-5 logit. Measured on this data: at most 2.4e-5
/// over all 455 top-5 logits (|logit| <= 28.1), both computing F16 weights in F32. 5e-3 leaves
/// room for another summation order and stays 5x below the smallest top-1/top-2 gap (0.025).
const LOGIT_TOL: f32 = 5e-3;
const HAIKU: &str = "GPU Computing,  \nComputing power,  \nPowerful,  \nComputing power.";
const REGENERATE: &str = "regenerate with `.venv-golden/bin/python scripts/golden/model.py real`";

#[derive(Deserialize)]
struct Golden {
    model_bytes: u64,
    model_sha256: String,
    eos_ids: Vec<u32>,
    prompts: Vec<Prompt>,
}

#[derive(Deserialize)]
struct Prompt {
    name: String,
    messages: Option<Vec<ChatMessage>>,
    text: Option<String>,
    prompt_ids: Vec<u32>,
    max_new_tokens: usize,
    /// transformers' top-5 (id, logit) after the prompt.
    top5: Vec<(u32, f32)>,
    greedy: Vec<u32>,
    stopped_at_eos: bool,
    /// Top-5 after each greedy token but the last.
    step_top5: Vec<Vec<(u32, f32)>>,
    greedy_text: String,
}

fn read_golden() -> Golden {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/real-model.json");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}; {REGENERATE}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn prompt_ids(tok: &Tokenizer, tmpl: &ChatTemplate, p: &Prompt) -> Vec<u32> {
    match (&p.messages, &p.text) {
        (Some(messages), None) => tok.encode_chat(tmpl, messages).expect("encode chat"),
        (None, Some(text)) => tok.encode_prompt(text).expect("encode prompt"),
        _ => panic!("{}: a prompt has either messages or text", p.name),
    }
}

#[test]
fn real_model_matches_transformers_on_chat_and_raw_prompts() {
    let golden = read_golden();
    let path = common::real_model_f16();
    let bytes = std::fs::metadata(&path).expect("model metadata").len();
    assert_eq!(
        bytes,
        golden.model_bytes,
        "{} is not the F16 file the golden data came from",
        path.display()
    );
    assert_eq!(
        sha256_hex(&path),
        golden.model_sha256,
        "{} has the golden file's size but not its contents",
        path.display()
    );
    let file = GgufFile::open(&path).expect("open model");
    let spec = ModelSpec::from_file(&file).expect("model spec");
    let model = CpuModel::load(&file, &spec).expect("load model");
    let tok = Tokenizer::from_metadata(file.metadata()).expect("tokenizer");
    let tmpl = ChatTemplate::from_metadata(file.metadata()).expect("chat template");
    assert!(
        golden
            .prompts
            .iter()
            .filter(|p| p.messages.is_some())
            .count()
            >= 3,
        "at least 3 chat prompts"
    );
    assert!(
        golden.prompts.iter().filter(|p| p.text.is_some()).count() >= 2,
        "at least 2 raw prompts"
    );
    assert!(
        golden.prompts.iter().all(|p| p.max_new_tokens >= 16),
        "every prompt runs at least 16 greedy tokens (or to EOS)"
    );

    for p in &golden.prompts {
        let name = &p.name;
        let ids = prompt_ids(&tok, &tmpl, p);
        assert_eq!(
            ids, p.prompt_ids,
            "{name}: prompt token ids differ from transformers'"
        );
        let mut session = CpuSession::new(&spec.hp, ids.len() + p.max_new_tokens + 1, 256);
        let mut logits = session
            .eval(&spec.hp, &model, &ids)
            .expect("prefill")
            .to_vec();
        check_top5(
            &format!("{name} after the prompt"),
            &logits,
            &p.top5,
            LOGIT_TOL,
        );
        // Our greedy choice must be transformers' at every step; feeding its token keeps each
        // step's top-5 comparable even after a failure.
        assert!(
            !p.greedy.is_empty() && p.greedy.len() <= p.max_new_tokens,
            "{name}: greedy length"
        );
        for (i, &want) in p.greedy.iter().enumerate() {
            let ours = top_k(&logits, 2);
            assert_eq!(
                ours[0].0, want,
                "{name}: greedy token {i} differs from transformers' (ours {ours:?})"
            );
            if i + 1 == p.greedy.len() {
                break;
            }
            logits = session
                .eval(&spec.hp, &model, &[want])
                .expect("decode")
                .to_vec();
            check_top5(
                &format!("{name} after greedy token {i}"),
                &logits,
                &p.step_top5[i],
                LOGIT_TOL,
            );
        }
        let last = p.greedy[p.greedy.len() - 1];
        let stopped = golden.eos_ids.contains(&last);
        assert_eq!(stopped, p.stopped_at_eos, "{name}: stopped at EOS");
        assert!(
            stopped || p.greedy.len() == p.max_new_tokens,
            "{name}: stops only at EOS or the limit"
        );
        assert!(
            !p.greedy[..p.greedy.len() - 1]
                .iter()
                .any(|id| golden.eos_ids.contains(id)),
            "{name}: EOS inside"
        );
        let greedy = &p.greedy;
        let text = tok.decode(greedy).expect("decode");
        assert_eq!(
            text, p.greedy_text,
            "{name}: decoded text differs from transformers'"
        );
    }

    let haiku = golden
        .prompts
        .iter()
        .find(|p| p.name == "chat-haiku")
        .expect("haiku prompt in golden data");
    let text = tok.decode(&haiku.greedy).expect("decode");
    assert_eq!(text.trim_end_matches("<|im_end|>"), HAIKU, "the haiku");
    assert!(
        haiku.stopped_at_eos,
        "the haiku ends with EOS within {} tokens",
        haiku.max_new_tokens
    );
}
