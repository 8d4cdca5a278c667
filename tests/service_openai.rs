//! The OpenAI-compatible routes driven by the official `openai` Python client (pinned in
//! `scripts/install-test-python`; `LAYERSTREAM_TEST_PYTHON` names its interpreter) against the
//! real binary on 127.0.0.1 behind an API key: models, chat completions whole and streamed with
//! usage, completions, log-probabilities (both shapes, streamed too), `n` choices reproducible by
//! seed, refusals that name the parameter, and a wrong key seen as the client's
//! `AuthenticationError` — on the tiny model and the real SmolLM2 file (`llama` family); and tool
//! calls on the real model (`tests/openai/tools_check.py`).

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use harness::{tiny_model, Server};

fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("LAYERSTREAM_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-test/bin/python");
    assert!(
        venv.is_file(),
        "no Python with the openai client: run scripts/install-test-python (scripts/test does)"
    );
    venv
}

/// Runs `tests/openai/<script>` against `s`; it must print `ok`.
fn run_check(s: &Server, script: &str, key: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/openai")
        .join(script);
    let out = Command::new(python())
        .arg(&script)
        .arg(format!("http://{}/v1", s.addr))
        .arg(key)
        .output()
        .expect("run the client check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(
        out.status.success(),
        "client check failed:\n{stdout}\n{stderr}\nserver log:\n{}",
        s.log()
    );
    assert_eq!(stdout.trim(), "ok", "{stderr}");
}

#[test]
fn the_official_openai_client_works_against_the_server() {
    let model = tiny_model();
    let key = "sk-client-check";
    let s = Server::spawn(
        &["--model", model.to_str().unwrap(), "--device", "cpu"],
        &[("LAYERSTREAM_API_KEY", key)],
    );
    s.wait_ready(Duration::from_secs(30));
    run_check(&s, "client_check.py", key);
}

#[test]
fn the_official_openai_client_works_against_the_real_smollm2_file() {
    let key = "sk-client-check";
    let model = common::real_smollm2();
    let s = Server::spawn(
        &["--model", model.to_str().unwrap(), "--device", "cpu"],
        &[("LAYERSTREAM_API_KEY", key)],
    );
    s.wait_ready(Duration::from_secs(60));
    run_check(&s, "client_check.py", key);
}

#[test]
fn the_real_model_calls_a_tool_and_answers_from_its_result() {
    let model = common::real_model_f16();
    let key = "sk-tools-check";
    let s = Server::spawn(
        &["--model", model.to_str().unwrap()],
        &[("LAYERSTREAM_API_KEY", key)],
    );
    s.wait_ready(Duration::from_secs(30));
    run_check(&s, "tools_check.py", key);
}
