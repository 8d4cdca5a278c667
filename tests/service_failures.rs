//! Failure modes: a truncated file is refused before READY with a named error; a load that fails
//! after READY (injected fault, or the file truncated under the running server) moves the service
//! to `failed` — /health, /ready and /load-progress say so, queued and running requests end with an
//! error, nothing hangs, and the process stays alive.

#[path = "common/harness.rs"]
mod harness;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use harness::{assert_error, gen_model, run_to_exit, tiny_model, Server, SseEvent};
use serde_json::{json, Value};

const NO_HANG: Duration = Duration::from_secs(30);

/// Four layers of ~6.3 MB each (FFN 16384) after ~19.5 MB of embeddings: under a bandwidth limit
/// the later layers land seconds after READY, leaving time for requests to be in flight.
fn deep_model() -> std::path::PathBuf {
    static DEEP: OnceLock<std::path::PathBuf> = OnceLock::new();
    DEEP.get_or_init(|| {
        gen_model(
            "deep",
            &[
                "--layers",
                "4",
                "--hidden",
                "64",
                "--heads",
                "4",
                "--kv-heads",
                "2",
                "--ffn",
                "16384",
            ],
        )
    })
    .clone()
}

fn unit_bytes(progress: &Value, name: &str) -> u64 {
    progress["units"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == name)
        .unwrap_or_else(|| panic!("no unit {name} in {progress}"))["bytes"]
        .as_u64()
        .unwrap()
}

/// The service reports `failed` everywhere and keeps serving HTTP; returns the load error.
fn assert_failed_state(s: &Server) -> String {
    let h = s.get("/health");
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["status"], "failed", "{}", h.text());
    assert!(h.header("retry-after").is_some());
    assert_eq!(s.get("/ready").status, 503);
    // A worker that can never become ready is not live: a liveness probe restarts it.
    assert_eq!(s.get("/live").status, 503);
    let p = s.get("/load-progress").json();
    assert_eq!(p["state"], "failed", "{p}");
    assert_eq!(p["ready"], false, "{p}");
    let error = p["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {p}"));
    assert!(!error.is_empty());
    // New requests are refused at once with the load error.
    let r = s.post_json("/generate", &json!({"prompt": "hi", "max_tokens": 2}));
    let e = assert_error(&r, 503, "model_load_failed");
    assert!(r.header("retry-after").is_some());
    assert!(
        e["message"].as_str().unwrap().contains(error),
        "{e} vs {error}"
    );
    // The progress stream ends with the failed state instead of waiting forever.
    let events = s.sse_get("/load-progress", NO_HANG).collect_all();
    let last = events.last().expect("no progress event");
    assert_eq!(last.event, "progress");
    assert_eq!(last.data["state"], "failed", "{:?}", last.data);
    assert!(s.try_exit().is_none(), "the process died");
    error.to_string()
}

fn wait_failed(s: &Server, timeout: Duration) -> Value {
    s.wait_load_state("failed", timeout)
}

#[test]
fn a_truncated_model_is_refused_before_ready_with_a_named_error() {
    let src = tiny_model();
    let len = std::fs::metadata(&src).unwrap().len();
    for (name, keep) in [
        ("cut-data", len * 2 / 3),
        ("cut-header", 4096),
        ("cut-last-byte", len - 1),
    ] {
        let path = harness::copy_model(&src, name);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(keep)
            .unwrap();
        let p = path.to_string_lossy();
        let exit = run_to_exit(&["serve", "--model", &p, "--port", "0"], &[], NO_HANG);
        assert!(!exit.status.success(), "{name}: served a truncated file");
        assert!(
            exit.status.code().is_some(),
            "{name}: killed by a signal: {:?}",
            exit.status
        );
        let err = exit.stderr.to_lowercase();
        // Cut in the data: the tensor is named; cut in the header: the metadata key is.
        let named = err.contains("truncated")
            || ["'token_embd", "'blk.", "'output"]
                .iter()
                .any(|t| err.contains(t))
            || (name == "cut-header" && err.contains("key '"));
        assert!(
            named,
            "{name}: the error names no tensor, key or truncation:\n{}",
            exit.stderr
        );
        assert!(
            !exit.stderr.contains("ready in"),
            "{name}: became READY:\n{}",
            exit.stderr
        );
        assert!(
            !exit.stdout.contains("listening on"),
            "{name}: bound before validating: {}",
            exit.stdout
        );
    }
}

#[test]
fn a_missing_model_or_a_taken_port_is_refused_with_a_named_error() {
    let missing = harness::artifacts_dir().join("models/does-not-exist.gguf");
    let m = missing.to_string_lossy();
    let exit = run_to_exit(&["serve", "--model", &m, "--port", "0"], &[], NO_HANG);
    assert!(!exit.status.success());
    assert!(
        exit.stderr.contains("does-not-exist.gguf"),
        "{}",
        exit.stderr
    );
    assert!(!exit.stdout.contains("listening on"), "{}", exit.stdout);

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let model = tiny_model();
    let t = model.to_string_lossy();
    let exit = run_to_exit(&["serve", "--model", &t, "--port", &port], &[], NO_HANG);
    assert!(!exit.status.success(), "served on a taken port");
    assert!(
        exit.stderr.contains(&port) && exit.stderr.contains("bind"),
        "the error does not name the address: {}",
        exit.stderr
    );
}

#[test]
fn an_injected_fault_at_layer_1_fails_the_load_without_hanging() {
    let model = tiny_model();
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "10",
            "--exit-on-load-failure=false",
        ],
        &[("LAYERSTREAM_TEST_FAIL_UNIT", "layer.1")],
    );
    // Requests sent all through the load: every one is answered 503, none hangs or succeeds.
    let deadline = Instant::now() + NO_HANG;
    loop {
        let r = s.post_json("/generate", &json!({"prompt": "hi", "max_tokens": 2}));
        assert_eq!(r.status, 503, "{}", r.text());
        let kind = r.json()["error"]["type"].as_str().unwrap().to_string();
        assert!(
            kind == "loading" || kind == "model_load_failed",
            "{}",
            r.text()
        );
        if kind == "model_load_failed" {
            break;
        }
        assert!(Instant::now() < deadline, "the load never failed");
        std::thread::sleep(Duration::from_millis(20));
    }
    let error = assert_failed_state(&s);
    assert!(
        error.contains("layer.1"),
        "error does not name the unit: {error}"
    );
    let p = s.get("/load-progress").json();
    let resident: Vec<&str> = p["units"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|u| !u["resident_ms"].is_null())
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(resident, ["embed", "layer.0"], "{p}");
}

/// Start a streamed request (it runs, gated on a layer still loading) and two whole ones (they
/// queue behind it) right at READY, then `fail` the load: all three must end with the load error.
/// Returns the load error.
fn requests_in_flight_when_the_load_fails(s: &Arc<Server>, fail: impl FnOnce()) -> String {
    let body = json!({"prompt": "hello", "max_tokens": 4, "temperature": 0});
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut sse = s.sse_post("/generate", &streamed, NO_HANG);
    assert_eq!(sse.status, 200);
    let started = sse.next_event().unwrap();
    assert_eq!(started.event, "started", "{started:?}");
    let spawn_whole = |s: &Arc<Server>| {
        let (s, body) = (s.clone(), body.clone());
        std::thread::spawn(move || s.post_json("/generate", &body))
    };
    let whole = spawn_whole(s);
    let queued = spawn_whole(s);
    std::thread::sleep(Duration::from_millis(200));
    let p = s.get("/load-progress").json();
    assert_eq!(
        p["state"], "ready",
        "the load moved on before the requests were in flight: {p}"
    );
    fail();
    let t0 = Instant::now();
    let rest: Vec<SseEvent> = sse.collect_all();
    let names: Vec<&str> = rest.iter().map(|e| e.event.as_str()).collect();
    assert!(
        names.iter().all(|n| *n == "token" || *n == "error"),
        "after started: {names:?}"
    );
    let last = rest.last().expect("stream ended without an error event");
    assert_eq!(last.event, "error", "{names:?}");
    assert_eq!(last.data["code"], "model_load_failed", "{:?}", last.data);
    for (what, h) in [("first queued", whole), ("second queued", queued)] {
        let r = h.join().unwrap();
        let e = assert_error(&r, 503, "model_load_failed");
        let m = e["message"].as_str().unwrap();
        assert!(m.contains("load"), "{what}: {e}");
        assert_eq!(
            m.matches("model loading failed").count(),
            1,
            "{what}: said twice: {m}"
        );
    }
    assert!(t0.elapsed() < NO_HANG);
    wait_failed(s, NO_HANG);
    assert_failed_state(s)
}

#[test]
fn an_injected_fault_after_ready_ends_running_and_queued_requests_with_an_error() {
    let model = deep_model();
    let s = Arc::new(Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "8",
            "--exit-on-load-failure=false",
        ],
        &[("LAYERSTREAM_TEST_FAIL_UNIT", "layer.3")],
    ));
    s.wait_ready(NO_HANG);
    let error = requests_in_flight_when_the_load_fails(&s, || {});
    assert!(error.contains("layer.3"), "{error}");
}

#[test]
fn a_file_truncated_under_the_running_server_fails_the_load_without_sigbus() {
    let path = harness::copy_model(&deep_model(), "truncated-live");
    let s = Arc::new(Server::spawn(
        &[
            "--model",
            path.to_str().unwrap(),
            "--load-bandwidth-limit",
            "8",
            "--exit-on-load-failure=false",
        ],
        &[],
    ));
    s.wait_ready(NO_HANG);
    let p = s.get("/load-progress").json();
    // Units sit in the file in plan order: cut in the middle of layer.3, ahead of the loader.
    let len = std::fs::metadata(&path).unwrap().len();
    let cut = len - unit_bytes(&p, "head") - unit_bytes(&p, "layer.3") / 2;
    let truncate = || {
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        let after = s.get("/load-progress").json();
        let done = after["bytes_resident"].as_u64().unwrap();
        let total = after["bytes_total"].as_u64().unwrap();
        assert!(
            done < total - unit_bytes(&after, "head") - unit_bytes(&after, "layer.3"),
            "the loader reached layer.3 before the file was cut: {after}"
        );
    };
    let error = requests_in_flight_when_the_load_fails(&s, truncate);
    assert!(
        error.contains("blk.3"),
        "the error does not name the tensor: {error}"
    );
    assert!(s.try_exit().is_none(), "the process died (SIGBUS?)");
}

#[test]
fn a_bandwidth_limit_that_is_not_a_positive_rate_is_refused_at_startup() {
    let model = tiny_model();
    let m = model.to_str().unwrap();
    for limit in ["0", "-5", "NaN", "inf"] {
        let flag = format!("--load-bandwidth-limit={limit}");
        match Server::try_spawn(&["--model", m, &flag], &[]) {
            Err(exit) => {
                assert!(!exit.status.success(), "{limit}: exit 0");
                assert!(exit.status.code().is_some(), "{limit}: {:?}", exit.status);
                assert!(
                    exit.stderr.contains("load-bandwidth-limit"),
                    "{limit}: the error does not name the flag:\n{}",
                    exit.stderr
                );
            }
            Ok(s) => panic!(
                "--load-bandwidth-limit {limit} was accepted; log:\n{}",
                s.log()
            ),
        }
    }
}

#[test]
fn a_failed_load_drains_and_exits_1_by_default() {
    let model = tiny_model();
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "10",
        ],
        &[("LAYERSTREAM_TEST_FAIL_UNIT", "layer.1")],
    );
    let status = s
        .wait_exit(NO_HANG)
        .expect("still running after the load failed");
    assert_eq!(status.code(), Some(1), "{status:?}");
    s.wait_for_log("exiting with status 1", Duration::from_secs(1));
}
