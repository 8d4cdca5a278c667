//! A SentencePiece-style vocabulary read the way Llama 2, Mistral and TinyLlama files are: merges
//! ranked by `tokenizer.ggml.scores` and a space before the start of the input
//! (`tokenizer.ggml.add_space_prefix`), against transformers' `LlamaTokenizer` built from the same
//! file (tests/golden/spm_llama.json, scripts/golden/spm_llama.py). No real file of ours carries
//! such a vocabulary: the real Gemma 3 file's is rewritten with `general.architecture = llama` and
//! the prefix on, as the script does.

mod common;

use layerstream::gguf::{GgufFile, GgufWriter, Value};
use layerstream::tokenizer::Tokenizer;
use serde_json::Value as Json;

fn ids(v: &Json) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

/// The Gemma file's tokenizer keys under a llama architecture, with the space prefix (and no BOS
/// added, as the golden ids were taken without special tokens).
fn llama_style_tokenizer() -> Tokenizer {
    let src = GgufFile::open(&common::real_gemma3()).unwrap();
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    for (k, v) in src.metadata().iter() {
        let replaced = [
            "tokenizer.ggml.add_space_prefix",
            "tokenizer.ggml.add_bos_token",
        ];
        if k.starts_with("tokenizer.") && !replaced.contains(&k) {
            w.add_kv(k, v.clone()).unwrap();
        }
    }
    w.add_kv("tokenizer.ggml.add_space_prefix", Value::Bool(true))
        .unwrap();
    w.add_kv("tokenizer.ggml.add_bos_token", Value::Bool(false))
        .unwrap();
    let path = std::env::temp_dir().join(format!("spm-llama-{}.gguf", std::process::id()));
    w.write_file(&path).unwrap();
    let file = GgufFile::open(&path).unwrap();
    let t = Tokenizer::from_metadata(file.metadata()).unwrap();
    let _ = std::fs::remove_file(&path);
    t
}

#[test]
fn llama_style_sentencepiece_matches_transformers() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/spm_llama.json");
    let doc: Json = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let want_sha = doc["source_sha256"].as_str().unwrap();
    assert_eq!(
        common::golden::sha256_hex(&common::real_gemma3()),
        want_sha,
        "the golden ids were taken from another file"
    );
    let t = llama_style_tokenizer();
    let cases = doc["cases"].as_array().unwrap();
    assert!(cases.len() >= 60);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        assert_eq!(
            t.encode_prompt(text).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(
            t.encode_plain(text).unwrap(),
            ids(&case["plain_ids"]),
            "{text:?} as plain text"
        );
    }
    // Decoding drops the prefix's space again, whole or streamed (transformers' `Strip(left=1)`).
    let ids = t.encode_prompt("Hello there, world").unwrap();
    assert_eq!(t.decode(&ids).unwrap(), "Hello there, world");
    let mut d = layerstream::tokenizer::IncrementalDecoder::new();
    let streamed: String = ids.iter().map(|&id| d.push(&t, id).unwrap()).collect();
    assert_eq!(streamed, "Hello there, world");
}
