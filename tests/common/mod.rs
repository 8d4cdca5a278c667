//! Helpers shared by the integration tests: where the real test model lives and how to build fixtures.
#![allow(dead_code)]

use std::path::PathBuf;

/// The cache folder that `scripts/fetch-test-model` fills.
pub fn model_cache_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("LAYERSTREAM_CACHE") {
        return PathBuf::from(dir).join("models");
    }
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    PathBuf::from(home).join(".cache/layerstream/models")
}

fn cached(name: &str) -> PathBuf {
    let path = model_cache_dir().join(name);
    assert!(
        path.is_file(),
        "{} is missing: run scripts/fetch-test-model first (the test command does)",
        path.display()
    );
    path
}

/// The real Qwen2.5-Coder-0.5B-Instruct Q4_K_M file.
pub fn real_model_q4() -> PathBuf {
    cached("qwen2.5-coder-0.5b-instruct-q4_k_m.gguf")
}

/// Its F16 conversion made by `layerstream convert`.
pub fn real_model_f16() -> PathBuf {
    cached("qwen2.5-coder-0.5b-instruct-f16.gguf")
}

/// The tokenizer-only vocabulary file committed with the tests.
pub fn vocab_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-vocab.gguf")
}

/// The release binary built by the test command (tests spawn it; they never build it).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_layerstream"))
}
