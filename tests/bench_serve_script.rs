//! `scripts/bench-serve` end to end: the script starts the real binary on a tiny random model (CPU),
//! runs 2 clients × 2 streamed requests through `/generate`, stops the server, and its `--json`
//! report must say 4 requests ok, 0 failed, tokens > 0 and finite TTFT percentiles.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{SystemTime, UNIX_EPOCH};

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
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

fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_layerstream"))
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn describe(o: &Output) -> String {
    format!(
        "status {}\n--- stdout\n{}\n--- stderr\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn gen_tiny_model(out: &Path) {
    let vocab = repo_root().join("tests/data/qwen2-vocab.gguf");
    let o = Command::new(binary())
        .args([
            "gen-model",
            "--layers",
            "2",
            "--hidden",
            "64",
            "--heads",
            "4",
        ])
        .args(["--kv-heads", "2", "--ffn", "128", "--seed", "1"])
        .arg("--vocab-from")
        .arg(&vocab)
        .arg("--out")
        .arg(out)
        .output()
        .expect("spawn layerstream gen-model");
    assert!(o.status.success(), "gen-model failed: {}", describe(&o));
}

/// The number after the first `"key":` in `json`; panics when it is absent or not a number
/// (the script writes `null` for a percentile of no samples).
fn json_number(json: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    let start = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let rest = json[start..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

#[test]
fn bench_serve_starts_the_server_and_reports_every_request() {
    let tmp = TempDir::new("bench-serve");
    let model = tmp.0.join("tiny.gguf");
    let report = tmp.0.join("out.json");
    gen_tiny_model(&model);

    let o = Command::new("python3")
        .current_dir(repo_root())
        .arg("scripts/bench-serve")
        .arg("--layerstream-bin")
        .arg(binary())
        .arg("--model")
        .arg(&model)
        .args(["--device", "cpu", "--clients", "2", "--requests", "2"])
        .args([
            "--max-tokens",
            "8",
            "--ready-timeout",
            "60",
            "--timeout",
            "120",
        ])
        .arg("--json")
        .arg(&report)
        .output()
        .expect("spawn python3 scripts/bench-serve");
    assert!(o.status.success(), "bench-serve failed: {}", describe(&o));

    let json = std::fs::read_to_string(&report).expect("the --json report");
    assert_eq!(
        json.matches("\"requests_ok\":").count(),
        1,
        "one run: {json}"
    );
    // `settings` comes first and has its own `clients` (the list); read the run's row.
    let run = &json[json.find("\"runs\":").expect("a runs list")..];
    assert_eq!(json_number(run, "clients"), 2.0, "{json}");
    assert_eq!(json_number(run, "requests_ok"), 4.0, "{json}");
    assert_eq!(json_number(run, "requests_failed"), 0.0, "{json}");
    assert_eq!(json_number(run, "warmup_failed"), 0.0, "{json}");
    assert!(json_number(run, "completion_tokens") > 0.0, "{json}");
    assert!(json_number(run, "tok_per_s") > 0.0, "{json}");
    let p50 = json_number(run, "ttft_ms_p50");
    let p99 = json_number(run, "ttft_ms_p99");
    assert!(p50.is_finite() && p50 > 0.0, "{json}");
    assert!(p99.is_finite() && p99 >= p50, "{json}");
}
