//! Helpers shared by the integration tests: where the real test model lives and how to build fixtures.
#![allow(dead_code)]

pub mod golden;
pub mod rewrite;

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
        "{} is missing: run scripts/fetch-test-model --families first (the test command does)",
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

/// The real SmolLM2-135M-Instruct Q4_1 file (`llama` family; see docs/model-families.md).
pub fn real_smollm2() -> PathBuf {
    cached("smollm2-135m-instruct-q4_1.gguf")
}

/// The real Gemma 3 270M Q4_K_M file (`gemma3` family; see docs/model-families.md).
pub fn real_gemma3() -> PathBuf {
    cached("gemma-3-270m-q4_k_m.gguf")
}

/// The tokenizer-only vocabulary file committed with the tests.
pub fn vocab_gguf() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/qwen2-vocab.gguf")
}

/// The release binary built by the test command (tests spawn it; they never build it).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_layerstream"))
}

/// A fresh directory under the system temp dir, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let dir =
            std::env::temp_dir().join(format!("layerstream-{name}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Run `python3 scripts/<script> ARGS…` from the repository root and wait for it.
pub fn run_script(script: &str, args: &[std::ffi::OsString]) -> std::process::Output {
    std::process::Command::new("python3")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg(format!("scripts/{script}"))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("spawn python3 scripts/{script}: {e}"))
}

/// Status, stdout and stderr of a finished process, for assertion messages.
pub fn describe(o: &std::process::Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}
