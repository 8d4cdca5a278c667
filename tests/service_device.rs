//! `--device`: `layerstream devices` says whether CUDA is usable here; `serve --device cuda` then
//! serves on the GPU, or fails before listening with an error that says why; `--device auto`
//! uses the GPU when there is one and otherwise falls back to the CPU with a log line.

#[path = "common/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{run_to_exit, tiny_model, Server};
use serde_json::{json, Value};

/// What the binary under test reports about CUDA on this machine.
fn cuda_here() -> Value {
    let out = run_to_exit(&["devices"], &[], Duration::from_secs(30));
    assert!(out.status.success(), "{}", out.stderr);
    let v: Value = serde_json::from_str(out.stdout.trim()).unwrap();
    v["cuda"].clone()
}

fn generate_once(s: &Server) -> Value {
    let r = s.post_json(
        "/generate",
        &json!({"prompt": "Hello", "max_tokens": 4, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

#[test]
fn device_cuda_serves_on_a_gpu_and_fails_clearly_without_one() {
    let cuda = cuda_here();
    let model = tiny_model();
    let args = ["--model", model.to_str().unwrap(), "--device", "cuda"];
    if cuda["available"] == true {
        let s = Server::spawn(&args, &[]);
        s.wait_ready(Duration::from_secs(30));
        assert_eq!(generate_once(&s)["token_ids"].as_array().unwrap().len(), 4);
        assert!(s.log().contains("using GPU 0"), "{}", s.log());
    } else {
        let reason = cuda["error"].as_str().unwrap().to_string();
        assert!(!reason.is_empty());
        let exit = Server::try_spawn(&args, &[])
            .err()
            .expect("--device cuda must not start without a usable GPU");
        assert_eq!(exit.status.code(), Some(1), "{}", exit.stderr);
        assert!(
            exit.stderr.contains("--device cuda") && exit.stderr.contains(&reason),
            "the error names the flag and the reason: {}",
            exit.stderr
        );
        assert!(!exit.stderr.contains("panicked"), "{}", exit.stderr);
    }
}

#[test]
fn device_auto_uses_the_gpu_when_there_is_one_else_the_cpu() {
    let cuda = cuda_here();
    let model = tiny_model();
    let s = Server::spawn(
        &["--model", model.to_str().unwrap(), "--device", "auto"],
        &[],
    );
    s.wait_ready(Duration::from_secs(30));
    generate_once(&s);
    let log = s.log();
    if cuda["available"] == true {
        assert!(log.contains("using GPU 0"), "{log}");
    } else {
        assert!(
            log.contains("CUDA unavailable") && log.contains("using the CPU backend"),
            "{log}"
        );
    }
}
