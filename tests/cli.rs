//! The command line through the real binary: `generate` (one request format, JSON or streamed text,
//! exit code 2 on an invalid request), `tokenize`, `inspect`, `gen-model`, `convert`, `bench`'s
//! batched mode, flags from the environment, progress bars on a terminal only.

mod common;

use std::path::PathBuf;
use std::process::{Command, Output};

fn run(args: &[&str]) -> Output {
    Command::new(common::binary())
        .args(args)
        .output()
        .expect("spawn layerstream")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn tiny_model() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/cli");
    std::fs::create_dir_all(&dir).unwrap();
    // One file a call: the tests that make one run at the same time.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let out = dir.join(format!("tiny-{}-{n}.gguf", std::process::id()));
    let vocab = common::vocab_gguf();
    let o = run(&[
        "gen-model",
        "--layers",
        "2",
        "--hidden",
        "64",
        "--heads",
        "4",
        "--kv-heads",
        "2",
        "--ffn",
        "96",
        "--vocab-from",
        vocab.to_str().unwrap(),
        "--seed",
        "3",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "gen-model failed: {}", text(&o.stderr));
    out
}

#[test]
fn generate_json_on_the_real_model_gives_the_known_greedy_haiku() {
    let model = common::real_model_f16();
    let req = r#"{"messages":[{"role":"user","content":"Write a haiku about GPU computing."}],"temperature":0,"max_tokens":40}"#;
    let o = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--request",
        req,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).expect("one JSON document on stdout");
    assert_eq!(
        v["text"],
        "GPU Computing,  \nComputing power,  \nPowerful,  \nComputing power."
    );
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(
        v["usage"]["completion_tokens"],
        v["token_ids"].as_array().unwrap().len()
    );
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    for key in ["prompt_ms", "ttft_ms", "decode_tok_per_s", "total_ms"] {
        assert!(v["timings"][key].is_number(), "timings.{key} missing: {v}");
    }
}

#[test]
fn the_quantized_file_runs_directly_and_matches_its_f16_conversion() {
    // Q4_K/Q5_0/Q6_K/Q8_0 tensors are dequantized on load to exactly the F16 values the converter
    // writes, so greedy output is the same as on the F16 file.
    let model = common::real_model_q4();
    let req = r#"{"messages":[{"role":"user","content":"Write a haiku about GPU computing."}],"temperature":0,"max_tokens":40}"#;
    let o = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--request",
        req,
        "--json",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        v["text"],
        "GPU Computing,  \nComputing power,  \nPowerful,  \nComputing power."
    );
}

#[test]
fn generate_streams_text_and_the_same_seed_repeats_itself() {
    let model = tiny_model();
    let m = model.to_str().unwrap();
    let req = r#"{"prompt":"Once upon a time","temperature":0.9,"seed":11,"max_tokens":12}"#;
    let a = run(&["generate", "--model", m, "--request", req]);
    let b = run(&["generate", "--model", m, "--request", req]);
    assert!(a.status.success(), "{}", text(&a.stderr));
    assert!(!text(&a.stdout).trim().is_empty());
    assert_eq!(a.stdout, b.stdout);
    let json = run(&["generate", "--model", m, "--request", req, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    // Streamed text (plus the trailing newline) is the JSON text.
    assert_eq!(
        text(&a.stdout),
        format!("{}\n", v["text"].as_str().unwrap())
    );
}

#[test]
fn an_invalid_request_exits_2_and_names_the_field() {
    let model = tiny_model();
    let cases = [
        (r#"{"prompt":"x","top_p":2}"#, "top_p"),
        (r#"{"prompt":"x","max_tokens":0}"#, "max_tokens"),
        (r#"{"prompt":"x","colour":"red"}"#, "colour"),
        (r#"{"messages":[{"role":"user"}]}"#, "messages[0].content"),
        (r#"not json"#, "body"),
    ];
    for (req, field) in cases {
        let o = run(&[
            "generate",
            "--model",
            model.to_str().unwrap(),
            "--request",
            req,
        ]);
        assert_eq!(o.status.code(), Some(2), "{req}: {}", text(&o.stderr));
        assert!(
            text(&o.stderr).contains(field),
            "{req}: stderr does not name {field}: {}",
            text(&o.stderr)
        );
    }
    let o = run(&[
        "generate",
        "--model",
        model.to_str().unwrap(),
        "--ctx-size",
        "8",
        "--request",
        r#"{"prompt":"a b c d e f g h i j","max_tokens":4}"#,
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o.stderr));
    assert!(text(&o.stderr).contains("context"), "{}", text(&o.stderr));
}

#[test]
fn tokenize_parses_special_tokens_in_a_raw_prompt() {
    let vocab = common::vocab_gguf();
    let o = run(&[
        "tokenize",
        "--model",
        vocab.to_str().unwrap(),
        "--text",
        "<|im_start|>user\nHello world",
    ]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let ids: Vec<u32> = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ids.first(), Some(&151644));
    assert_eq!(&ids[ids.len() - 2..], &[9707, 1879]);
}

#[test]
fn a_tool_flag_is_read_from_the_environment_and_the_command_line_wins() {
    let vocab = common::vocab_gguf();
    let tokenize = |args: &[&str]| {
        let o = Command::new(common::binary())
            .arg("tokenize")
            .args(args)
            .env("LAYERSTREAM_MODEL", &vocab)
            .env("LAYERSTREAM_TEXT", "Hello world")
            .output()
            .expect("spawn layerstream");
        assert!(o.status.success(), "{}", text(&o.stderr));
        serde_json::from_slice::<Vec<u32>>(&o.stdout).unwrap()
    };
    assert_eq!(tokenize(&[]), [9707, 1879]);
    assert_eq!(tokenize(&["--text", "Hello"]), [9707]);
}

/// `bench --batch-invariant` sends even one sequence through the batched step and says so in its
/// JSON; `--batch 2` alone runs without it; both measure a decode rate.
#[test]
fn bench_runs_the_batched_step_with_the_invariance_asked_for() {
    let model = tiny_model();
    let bench = |extra: &[&str]| {
        let mut args = vec![
            "bench",
            "--device",
            "cpu",
            "--model",
            model.to_str().unwrap(),
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
            "--reps",
            "1",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = run(&args);
        assert!(o.status.success(), "bench {extra:?}: {}", text(&o.stderr));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let one = bench(&["--batch-invariant", "true"]);
    assert_eq!(one["batch"], 1);
    assert_eq!(one["batch_invariant"], true);
    assert!(one["decode_tok_per_s"].as_f64().unwrap() > 0.0, "{one}");
    let two = bench(&["--batch", "2"]);
    assert_eq!(
        (two["batch"].clone(), two["batch_invariant"].clone()),
        (2.into(), false.into())
    );
    assert!(two["decode_tok_per_s"].as_f64().unwrap() > 0.0, "{two}");
    // Without the flag one sequence takes the one-sequence path, whose JSON has no batch field.
    let alone = bench(&[]);
    assert!(alone.get("batch").is_none(), "{alone}");
}

#[test]
fn inspect_dumps_header_metadata_and_tensors() {
    let model = tiny_model();
    let o = run(&["inspect", "--model", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let out = text(&o.stdout);
    for needle in [
        "general.architecture",
        "qwen2.block_count",
        "tokenizer.ggml.tokens",
        "blk.1.ffn_down.weight",
        "token_embd.weight",
    ] {
        assert!(out.contains(needle), "inspect output lacks {needle}");
    }
    let bad = run(&["inspect", "--model", "/nonexistent.gguf"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).contains("/nonexistent.gguf"));
}

#[test]
fn gen_model_refuses_shapes_that_do_not_divide() {
    let o = run(&[
        "gen-model",
        "--layers",
        "1",
        "--hidden",
        "60",
        "--heads",
        "7",
        "--kv-heads",
        "1",
        "--ffn",
        "8",
        "--vocab-size",
        "32",
        "--out",
        "/tmp/never.gguf",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o.stderr).contains("heads 7"), "{}", text(&o.stderr));
}

#[test]
fn gen_model_is_deterministic_per_seed_across_parallel_chunks() {
    // Embeddings of 2048 × 1024 are several generator chunks, filled in parallel.
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/cli");
    std::fs::create_dir_all(&dir).unwrap();
    let make = |seed: &str, tag: &str| {
        let out = dir.join(format!("det-{tag}-{}.gguf", std::process::id()));
        let o = run(&[
            "gen-model",
            "--layers",
            "1",
            "--hidden",
            "1024",
            "--heads",
            "8",
            "--kv-heads",
            "2",
            "--ffn",
            "64",
            "--vocab-size",
            "2048",
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "gen-model failed: {}", text(&o.stderr));
        let bytes = std::fs::read(&out).unwrap();
        std::fs::remove_file(&out).unwrap();
        bytes
    };
    let (a, b, c) = (make("11", "a"), make("11", "b"), make("12", "c"));
    assert_eq!(a, b, "the same seed must give the same file");
    assert_eq!(a.len(), c.len());
    assert_ne!(a, c, "another seed must give other weights");
}

fn artifact(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts/cli");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}-{}.gguf", std::process::id()))
}

#[test]
fn convert_and_gen_model_print_only_their_summary_when_stderr_is_not_a_terminal() {
    let model = tiny_model();
    let out = artifact("converted");
    let o = run(&["convert", model.to_str().unwrap(), out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let summary = format!("wrote {} (", out.display());
    let err = text(&o.stderr);
    assert!(err.starts_with(&summary), "{err:?}");
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(o.stdout.is_empty());
    std::fs::remove_file(&out).unwrap();
}

/// Run `layerstream ARGS…` with a terminal as its stdin/stdout/stderr (through `script`, from
/// util-linux); returns its exit status and everything it wrote to the terminal.
fn run_on_terminal(args: &[&str], envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let cmd = std::iter::once(common::binary().to_string_lossy().into_owned())
        .chain(args.iter().map(|a| a.to_string()))
        .map(|a| format!("'{a}'"))
        .collect::<Vec<_>>()
        .join(" ");
    let o = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .env("TERM", "xterm")
        .envs(envs.iter().copied())
        .output()
        .expect("spawn script (util-linux)");
    (o.status.code(), text(&o.stdout))
}

#[test]
fn gen_model_and_convert_draw_a_progress_bar_on_a_terminal() {
    let out = artifact("bar");
    let (code, shown) = run_on_terminal(
        &[
            "gen-model",
            "--layers",
            "2",
            "--hidden",
            "512",
            "--heads",
            "8",
            "--kv-heads",
            "2",
            "--ffn",
            "1024",
            "--vocab-size",
            "32000",
            "--out",
            out.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("generating (units) ["), "no bar: {shown:?}");
    assert!(shown.contains("wrote "), "{shown:?}");
    let converted = artifact("bar-converted");
    let (code, shown) = run_on_terminal(
        &[
            "convert",
            out.to_str().unwrap(),
            converted.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{shown}");
    assert!(shown.contains("converting ["), "no bar: {shown:?}");
    assert!(shown.contains("wrote "), "{shown:?}");
    std::fs::remove_file(&out).unwrap();
    std::fs::remove_file(&converted).unwrap();
}

#[test]
fn serve_draws_its_load_on_a_terminal() {
    // The load fails at layer.1 after ~2 s of embeddings, and the process exits 1 by itself.
    let model = tiny_model();
    let (code, shown) = run_on_terminal(
        &[
            "serve",
            "--port",
            "0",
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "10",
        ],
        &[("LAYERSTREAM_TEST_FAIL_UNIT", "layer.1")],
    );
    assert_eq!(code, Some(1), "{shown}");
    assert!(shown.contains("loading 0/4 units ["), "no bar: {shown:?}");
    assert!(shown.contains("listening on http://"), "{shown:?}");
}
