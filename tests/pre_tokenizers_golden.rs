//! The byte-level pre-tokenizers no real file of ours carries (Llama 3's `llama-bpe`, GPT-2's
//! `gpt-2`) over the real Qwen2.5 vocabulary, against Hugging Face `tokenizers` running the pipeline
//! each family's `tokenizer.json` declares (tests/golden/pre_tokenizers.json, written by
//! scripts/golden/pre_tokenizers.py).

mod common;

use layerstream::gguf::GgufFile;
use layerstream::tokenizer::{Tokenizer, VocabParts};
use serde_json::Value;

fn golden() -> Value {
    let path =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/pre_tokenizers.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The vocabulary file's tokenizer with `tokenizer.ggml.pre` set to `pre`.
fn tokenizer_with_pre(pre: &str) -> Tokenizer {
    let file = GgufFile::open(&common::vocab_gguf()).unwrap();
    let m = file.metadata();
    let parts = VocabParts {
        model: m.str("tokenizer.ggml.model").unwrap(),
        pre,
        tokens: m.strings("tokenizer.ggml.tokens").unwrap(),
        merges: m.strings("tokenizer.ggml.merges").unwrap(),
        token_types: m.i32s("tokenizer.ggml.token_type").unwrap(),
        bos_id: None,
        eos_id: m.opt_u64("tokenizer.ggml.eos_token_id").unwrap(),
        eot_id: None,
        add_bos: false,
        spm: Default::default(),
    };
    Tokenizer::from_parts(&parts).unwrap()
}

fn check(pre: &str) {
    let doc = golden();
    let cases = doc["pre_tokenizers"][pre].as_array().unwrap();
    assert!(cases.len() >= 50, "{pre}: {} cases", cases.len());
    let t = tokenizer_with_pre(pre);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            t.encode_plain(text).unwrap(),
            ids(&case["ids"]),
            "{pre} {text:?}"
        );
        assert_eq!(
            t.encode_prompt(text).unwrap(),
            ids(&case["ids_with_special_tokens"]),
            "{pre} {text:?} (special tokens parsed)"
        );
    }
}

#[test]
fn llama3_pre_tokenizer_matches_hugging_face() {
    check("llama-bpe");
}

#[test]
fn gpt2_pre_tokenizer_matches_hugging_face() {
    check("gpt-2");
}

/// The rows differ where the pipelines do: Qwen2 NFC-normalises first, Llama 3 does not.
#[test]
fn llama3_and_qwen2_differ_on_decomposed_text() {
    let (llama, qwen) = (tokenizer_with_pre("llama-bpe"), tokenizer_with_pre("qwen2"));
    let text = "e\u{301}";
    assert_eq!(
        qwen.encode_plain(text).unwrap(),
        qwen.encode_plain("\u{e9}").unwrap()
    );
    assert_ne!(
        llama.encode_plain(text).unwrap(),
        qwen.encode_plain(text).unwrap()
    );
}

/// Llama 3's BPE takes a piece that is a whole token as that token even where no merges lead to
/// it (`ignore_merges`); the other pre-tokenizers merge.
#[test]
fn llama3_takes_whole_word_tokens_without_merges() {
    let tokens: Vec<String> = ["a", "b", "c", "bc", "abc"].map(String::from).to_vec();
    let merges = vec!["b c".to_string()];
    let types = vec![1; tokens.len()];
    let parts = |pre| VocabParts {
        model: "gpt2",
        pre,
        tokens: &tokens,
        merges: &merges,
        token_types: &types,
        bos_id: None,
        eos_id: None,
        eot_id: None,
        add_bos: false,
        spm: Default::default(),
    };
    let llama = Tokenizer::from_parts(&parts("llama-bpe")).unwrap();
    let gpt2 = Tokenizer::from_parts(&parts("gpt-2")).unwrap();
    assert_eq!(llama.encode_plain("abc").unwrap(), vec![4]);
    assert_eq!(gpt2.encode_plain("abc").unwrap(), vec![0, 3]);
}
