//! Hostile clients and faults, the real binary over HTTP on 127.0.0.1: a client that leaves during
//! a long prompt frees the engine at the next step, a client that leaves the queue frees its slot
//! at once, a second signal ends the drain, a model path that is not a regular file is refused
//! without blocking, weights holding NaN fail the load naming the tensor, and `--request-timeout`
//! ends a request with `time_limit`.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{assert_error, run_to_exit, tiny_model, Server};
use serde_json::{json, Value};

fn spawn(model: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Arc<Server> {
    let mut all = vec!["--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    let s = Server::spawn(&all, env);
    s.wait_ready(Duration::from_secs(30));
    Arc::new(s)
}

fn engine(s: &Server) -> Value {
    s.get("/health").json()["engine"].clone()
}

#[test]
fn a_client_that_leaves_during_a_long_prompt_frees_the_engine_at_the_next_step() {
    // One sequence at a time: a follow-up would wait for the whole prompt if it were not
    // cancelled. ~1,500 tokens take many seconds on the real model on two cores.
    let model = common::real_model_f16();
    let s = spawn(&model, &["--max-num-seqs", "1"], &[]);
    let prompt = "The quick brown fox jumps over the lazy dog. ".repeat(150);
    let body = json!({"prompt": prompt, "max_tokens": 4, "stream": true});
    let mut sse = s.sse_post("/generate", &body, Duration::from_secs(60));
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event().unwrap().event, "started");
    std::thread::sleep(Duration::from_millis(1500));
    drop(sse);
    let t0 = Instant::now();
    let r = s.post_json(
        "/generate",
        &json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let waited = t0.elapsed();
    let line = s.wait_for_log("request cancelled", Duration::from_secs(1));
    assert!(
        waited < Duration::from_secs(8),
        "the follow-up waited {waited:?}: the prompt was computed to its end ({line})"
    );
}

#[test]
fn a_queued_client_that_leaves_frees_its_slot_at_once() {
    let s = spawn(
        &tiny_model(),
        &["--max-num-seqs", "1", "--max-queue", "1"],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "5")],
    );
    let running = s.sse_post(
        "/generate",
        &json!({"prompt": "run", "max_tokens": 2000, "stream": true}),
        Duration::from_secs(60),
    );
    assert_eq!(running.status, 200);
    s.wait_engine("never ran", |e| e["running"] == 1, Duration::from_secs(5));
    let queued = s.sse_post(
        "/generate",
        &json!({"prompt": "wait", "max_tokens": 4, "stream": true}),
        Duration::from_secs(60),
    );
    assert_eq!(queued.status, 200);
    s.wait_engine("never queued", |e| e["queued"] == 1, Duration::from_secs(5));
    let full = s.post_json("/generate", &json!({"prompt": "x", "max_tokens": 1}));
    assert_error(&full, 429, "queue_full");
    drop(queued);
    let freed = Instant::now();
    s.wait_engine(
        "slot not freed",
        |e| e["queued"] == 0,
        Duration::from_secs(1),
    );
    let next = s.sse_post(
        "/generate",
        &json!({"prompt": "next", "max_tokens": 2, "stream": true}),
        Duration::from_secs(60),
    );
    assert_eq!(
        next.status,
        200,
        "refused {:?} after the client left",
        freed.elapsed()
    );
    assert_eq!(
        engine(&s)["running"],
        1,
        "the first request is still running"
    );
    drop(running);
}

#[test]
fn a_second_signal_during_the_drain_exits_at_once_with_an_error_status() {
    let s = spawn(
        &tiny_model(),
        &[],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "5")],
    );
    let mut sse = s.sse_post(
        "/generate",
        &json!({"prompt": "long", "max_tokens": 3000, "stream": true}),
        Duration::from_secs(60),
    );
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event().unwrap().event, "started");
    s.terminate();
    s.wait_for_log("shutdown requested", Duration::from_secs(2));
    let t0 = Instant::now();
    s.terminate();
    let status = s
        .wait_exit(Duration::from_secs(2))
        .expect("still running after the second signal");
    assert!(t0.elapsed() < Duration::from_secs(2));
    assert!(!status.success(), "{status:?}");
    s.wait_for_log("second signal", Duration::from_secs(1));
}

#[test]
fn a_model_path_that_is_not_a_regular_file_is_refused_without_blocking() {
    let dir = harness::artifacts_dir().join(format!("not-a-file-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("model.fifo");
    let _ = std::fs::remove_file(&fifo);
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap();
    assert!(made.success());
    for (path, kind) in [(&fifo, "FIFO"), (&dir, "directory")] {
        let path = path.to_str().unwrap();
        let exit = run_to_exit(
            &["serve", "--model", path, "--port", "0"],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(exit.status.code(), Some(1), "{}", exit.stderr);
        assert!(
            exit.stderr.contains(kind) && exit.stderr.contains("not a regular file"),
            "{}",
            exit.stderr
        );
    }
}

/// Offset and size of `name` from `layerstream inspect`.
fn tensor_span(model: &std::path::Path, name: &str) -> (u64, u64) {
    let exit = run_to_exit(
        &["inspect", "--model", model.to_str().unwrap()],
        &[],
        Duration::from_secs(30),
    );
    let line = exit
        .stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in inspect output"));
    let field = |key: &str| -> u64 {
        let words: Vec<&str> = line.split_whitespace().collect();
        let i = words.iter().position(|w| *w == key).unwrap();
        words[i + 1].parse().unwrap()
    };
    (field("offset"), field("bytes"))
}

#[test]
fn weights_holding_nan_fail_the_load_naming_the_tensor() {
    use std::io::{Seek, SeekFrom, Write};
    let path = harness::copy_model(&tiny_model(), "nan-weights");
    let name = "blk.1.ffn_down.weight";
    let (offset, bytes) = tensor_span(&path, name);
    let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.seek(SeekFrom::Start(offset + bytes / 2)).unwrap();
    // F16 NaN (0x7e00), little-endian.
    f.write_all(&[0x00, 0x7e].repeat(8)).unwrap();
    drop(f);
    // The device comes from LAYERSTREAM_DEVICE (auto: the GPU run checks the CUDA loader's kernel).
    let s = Server::spawn(
        &[
            "--model",
            path.to_str().unwrap(),
            "--exit-on-load-failure=false",
        ],
        &[],
    );
    let p = s.wait_load_state("failed", Duration::from_secs(30));
    let error = p["error"].as_str().unwrap_or_default();
    assert!(
        error.contains(name) && error.contains("NaN"),
        "the error does not name the tensor: {p}"
    );
    let r = s.post_json("/generate", &json!({"prompt": "hi", "max_tokens": 2}));
    assert_error(&r, 503, "model_load_failed");
    assert!(!r.text().contains("panicked"), "{}", r.text());
}

#[test]
fn a_request_past_the_request_timeout_ends_with_time_limit_and_frees_its_blocks() {
    let s = spawn(
        &tiny_model(),
        &["--request-timeout", "0.5"],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "5")],
    );
    let t0 = Instant::now();
    let r = s.post_json("/generate", &json!({"prompt": "go", "max_tokens": 2000}));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["finish_reason"], "time_limit", "{v}");
    let n = v["usage"]["completion_tokens"].as_u64().unwrap();
    assert!(n > 0 && n < 2000, "{v}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let e = s.wait_engine("not idle", |e| e["running"] == 0, Duration::from_secs(2));
    assert_eq!(e["kv_blocks_used"], 0, "{e}");
}
