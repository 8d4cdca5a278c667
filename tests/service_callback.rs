//! The load callbacks: the service POSTs `ready` (at READY), then `resident` (every unit resident)
//! or `failed` (the load failed) to `--callback-url`, in that order, each with the ready notice's
//! fields `{worker_id, uri, vram_bytes, ready_ms}`; a failed attempt is retried (a `failed` one
//! before the process exits), and a callback nobody answers never stops it from serving. The
//! URL's credentials (userinfo, query values) never reach a log line or an error.

#[path = "common/harness.rs"]
mod harness;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use harness::{tiny_model, Server};
use serde_json::{json, Value};

/// One HTTP request as the callback receiver saw it.
struct Received {
    method: String,
    path: String,
    content_type: Option<String>,
    body: Value,
    at: Instant,
}

/// Accept one connection within `timeout`, read its request, answer `status`.
fn accept_one(listener: &TcpListener, timeout: Duration, status: u16) -> Option<Received> {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + timeout;
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() >= deadline {
                    return None;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    let at = Instant::now();
    Some(read_and_answer(stream, status, at))
}

fn read_and_answer(mut stream: TcpStream, status: u16, at: Instant) -> Received {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let mut parts = line.split_whitespace();
    let (method, path) = (
        parts.next().unwrap().to_string(),
        parts.next().unwrap().to_string(),
    );
    let (mut len, mut content_type) = (0usize, None);
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':').unwrap();
        match k.trim().to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap(),
            "content-type" => content_type = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).unwrap();
    let reason = if status == 200 {
        "OK"
    } else {
        "Internal Server Error"
    };
    let _ = stream.write_all(
        format!("HTTP/1.1 {status} {reason}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    );
    Received {
        method,
        path,
        content_type,
        body: serde_json::from_slice(&body).unwrap(),
        at,
    }
}

fn spawn_with_callback(url: &str) -> Server {
    let model = tiny_model();
    Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--callback-url",
            url,
            "--worker-id",
            "worker-7",
        ],
        &[],
    )
}

fn keys(body: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = body
        .as_object()
        .unwrap()
        .keys()
        .map(|k| k.as_str())
        .collect();
    keys.sort_unstable();
    keys
}

#[test]
fn ready_then_resident_are_posted_in_order_with_the_worker_details() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/workers/ready", listener.local_addr().unwrap());
    let s = spawn_with_callback(&url);
    let got = accept_one(&listener, Duration::from_secs(30), 200).expect("no callback within 30 s");
    // The service was READY when it called.
    let health = s.get("/health");
    assert_eq!(health.status, 200, "{}", health.text());
    assert_eq!(got.method, "POST");
    assert_eq!(got.path, "/workers/ready");
    assert!(
        got.content_type
            .as_deref()
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        got.content_type
    );
    let b = &got.body;
    assert_eq!(b["event"], "ready", "{b}");
    assert_eq!(b["worker_id"], "worker-7", "{b}");
    assert_eq!(b["uri"], format!("http://{}", s.addr), "{b}");
    assert!(b["vram_bytes"].is_u64(), "{b}");
    let ready_ms = b["ready_ms"].as_f64().unwrap_or_else(|| panic!("{b}"));
    assert!(ready_ms > 0.0, "{b}");
    assert_eq!(
        json!(ready_ms),
        health.json()["ready_ms"],
        "callback and /health disagree"
    );
    assert_eq!(
        keys(b),
        ["event", "ready_ms", "uri", "vram_bytes", "worker_id"],
        "{b}"
    );

    let resident = accept_one(&listener, Duration::from_secs(30), 200).expect("no resident event");
    let r = &resident.body;
    assert_eq!(r["event"], "resident", "{r}");
    let progress = s.get("/load-progress").json();
    assert_eq!(progress["state"], "resident", "{progress}");
    assert_eq!(
        r["resident_ms"], progress["resident_ms"],
        "{r} vs {progress}"
    );
    assert_eq!(
        r["bytes_resident"], progress["bytes_total"],
        "{r} vs {progress}"
    );
    assert!(r["resident_ms"].as_f64().unwrap() >= ready_ms, "{r}");
    for field in ["worker_id", "uri", "ready_ms"] {
        assert_eq!(r[field], b[field], "{field}: {r}");
    }
    assert_eq!(
        keys(r),
        [
            "bytes_resident",
            "event",
            "ready_ms",
            "resident_ms",
            "uri",
            "vram_bytes",
            "worker_id"
        ],
        "{r}"
    );
    // Nothing more arrives once both were answered 200.
    let again = accept_one(&listener, Duration::from_secs(2), 200);
    assert!(
        again.is_none(),
        "a third callback: {:?}",
        again.map(|r| r.body)
    );
}

#[test]
fn a_failed_callback_is_retried_after_a_backoff_before_the_next_event() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let s = spawn_with_callback(&url);
    let first = accept_one(&listener, Duration::from_secs(30), 500).expect("no callback");
    let second = accept_one(&listener, Duration::from_secs(10), 200).expect("not retried");
    assert_eq!(first.body["event"], "ready", "{}", first.body);
    assert_eq!(first.body, second.body);
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_millis(200),
        "retried after only {gap:?}"
    );
    // `resident` waited for `ready`'s retry: it comes after, and once.
    let third = accept_one(&listener, Duration::from_secs(10), 200).expect("no resident event");
    assert_eq!(third.body["event"], "resident", "{}", third.body);
    assert!(
        accept_one(&listener, Duration::from_secs(2), 200).is_none(),
        "a fourth callback"
    );
    s.wait_for_log("callback 'ready'", Duration::from_secs(5));
}

#[test]
fn a_callback_refused_with_a_4xx_is_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let s = spawn_with_callback(&url);
    let refused = accept_one(&listener, Duration::from_secs(30), 404).expect("no callback");
    assert_eq!(refused.body["event"], "ready", "{}", refused.body);
    let next = accept_one(&listener, Duration::from_secs(10), 200).expect("no resident event");
    assert_eq!(
        next.body["event"], "resident",
        "a 404 was retried: {}",
        next.body
    );
    assert!(
        accept_one(&listener, Duration::from_secs(2), 200).is_none(),
        "a third callback"
    );
    s.wait_for_log("not retried", Duration::from_secs(5));
}

/// Serve the tiny model with `LAYERSTREAM_TEST_FAIL_UNIT=unit` under a bandwidth limit (so the
/// embeddings take ~2 s), posting callbacks to `url`; the process exits 1 after the failure.
fn spawn_failing_at(unit: &str, url: &str) -> Server {
    let model = tiny_model();
    Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--callback-url",
            url,
            "--worker-id",
            "worker-7",
            "--load-bandwidth-limit",
            "10",
        ],
        &[("LAYERSTREAM_TEST_FAIL_UNIT", unit)],
    )
}

#[test]
fn a_load_failing_before_ready_posts_failed_only_and_retries_it_before_exiting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let s = spawn_failing_at("embed", &url);
    let first = accept_one(&listener, Duration::from_secs(30), 500).expect("no callback");
    let b = &first.body;
    assert_eq!(b["event"], "failed", "{b}");
    let error = b["error"].as_str().unwrap_or_else(|| panic!("{b}"));
    assert!(
        error.contains("token_embd.weight"),
        "the tensor is not named: {b}"
    );
    assert!(error.contains("embed"), "the unit is not named: {b}");
    assert!(b["ready_ms"].is_null(), "{b}");
    assert_eq!(b["worker_id"], "worker-7", "{b}");
    assert_eq!(b["uri"], format!("http://{}", s.addr), "{b}");
    assert_eq!(
        keys(b),
        [
            "error",
            "event",
            "ready_ms",
            "uri",
            "vram_bytes",
            "worker_id"
        ],
        "{b}"
    );
    // The 500 is retried before the process exits, and nothing else is sent.
    let second = accept_one(&listener, Duration::from_secs(10), 200).expect("not retried");
    assert_eq!(second.body, first.body);
    let status = s.wait_exit(Duration::from_secs(30)).expect("still running");
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(accept_one(&listener, Duration::from_millis(200), 200).is_none());
}

#[test]
fn a_load_failing_after_ready_posts_ready_then_failed() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let s = spawn_failing_at("layer.1", &url);
    let ready = accept_one(&listener, Duration::from_secs(30), 200).expect("no callback");
    assert_eq!(ready.body["event"], "ready", "{}", ready.body);
    let failed = accept_one(&listener, Duration::from_secs(30), 200).expect("no failed event");
    let f = &failed.body;
    assert_eq!(f["event"], "failed", "{f}");
    assert!(f["error"].as_str().unwrap().contains("layer.1"), "{f}");
    assert_eq!(f["ready_ms"], ready.body["ready_ms"], "{f}");
    assert!(f["ready_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{f}");
    let status = s.wait_exit(Duration::from_secs(30)).expect("still running");
    assert_eq!(status.code(), Some(1), "{status:?}");
    assert!(accept_one(&listener, Duration::from_millis(200), 200).is_none());
}

#[test]
fn a_model_file_refused_at_startup_posts_failed_naming_the_tensor() {
    let path = harness::copy_model(&tiny_model(), "callback-truncated");
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len * 2 / 3)
        .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let receiver = std::thread::spawn(move || {
        let got = accept_one(&listener, Duration::from_secs(30), 200);
        let more = accept_one(&listener, Duration::from_millis(500), 200);
        (got, more.is_some())
    });
    let p = path.to_string_lossy();
    let exit = harness::run_to_exit(
        &[
            "serve",
            "--model",
            &p,
            "--port",
            "0",
            "--callback-url",
            &url,
        ],
        &[],
        Duration::from_secs(30),
    );
    assert_eq!(exit.status.code(), Some(1), "{}", exit.stderr);
    let (got, more) = receiver.join().unwrap();
    let b = got.expect("no callback before the exit").body;
    assert_eq!(b["event"], "failed", "{b}");
    let error = b["error"].as_str().unwrap();
    assert!(
        ["'token_embd", "'blk.", "'output"]
            .iter()
            .any(|t| error.contains(t)),
        "the tensor is not named: {b}"
    );
    assert!(b["ready_ms"].is_null(), "{b}");
    // Never bound: the configured address.
    assert_eq!(b["uri"], "http://127.0.0.1:0", "{b}");
    assert!(!more, "a second callback");
}

#[test]
fn a_callback_nobody_listens_on_does_not_stop_the_server() {
    // A port that was free a moment ago: connecting to it is refused.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = spawn_with_callback(&format!("http://127.0.0.1:{port}/ready"));
    s.wait_ready(Duration::from_secs(30));
    s.wait_for_log("callback 'ready'", Duration::from_secs(10));
    let r = s.post_json(
        "/generate",
        &json!({"prompt": "still serving", "max_tokens": 3}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(harness::token_ids(&r.json()).len(), 3);
    assert_eq!(s.get("/health").status, 200);
    assert!(s.try_exit().is_none(), "the process exited");
}

#[test]
fn callback_credentials_never_reach_the_log() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url =
        format!("http://hookuser:hunter2pw@127.0.0.1:{port}/ready?token=tok3n&sig=s1gn#frag9");
    let s = spawn_with_callback(&url);
    s.wait_ready(Duration::from_secs(30));
    let line = s.wait_for_log("failed (attempt 2/", Duration::from_secs(10));
    assert!(
        line.contains(&format!("***@127.0.0.1:{port}/ready?token=***&sig=***")),
        "{line}"
    );
    let log = s.log();
    for secret in ["hookuser", "hunter2pw", "tok3n", "s1gn", "frag9"] {
        assert!(!log.contains(secret), "'{secret}' is in the log:\n{log}");
    }
    // Refused at startup: the error shows the URL masked too.
    let model = tiny_model();
    let bad = "https://hookuser:hunter2pw@example.com/ready?token=tok3n";
    let exit = harness::run_to_exit(
        &[
            "serve",
            "--model",
            model.to_str().unwrap(),
            "--port",
            "0",
            "--callback-url",
            bad,
        ],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    assert!(exit.stderr.contains("--callback-url"), "{}", exit.stderr);
    for secret in ["hookuser", "hunter2pw", "tok3n"] {
        assert!(!exit.stderr.contains(secret), "{}", exit.stderr);
    }
}

#[test]
fn a_callback_url_that_cannot_work_is_refused_at_startup() {
    let model = tiny_model();
    let m = model.to_str().unwrap();
    for url in [
        "not a url",
        "https://example.com/ready",
        "ftp://example.com/x",
    ] {
        let exit = harness::run_to_exit(
            &["serve", "--model", m, "--port", "0", "--callback-url", url],
            &[],
            Duration::from_secs(10),
        );
        assert_eq!(exit.status.code(), Some(2), "{url}: {}", exit.stderr);
        assert!(
            exit.stderr.contains("--callback-url"),
            "{url}: {}",
            exit.stderr
        );
    }
    let exit = harness::run_to_exit(
        &["serve", "--model", m, "--port", "0", "--ctx-size", "0"],
        &[],
        Duration::from_secs(10),
    );
    assert_eq!(exit.status.code(), Some(2), "{}", exit.stderr);
    assert!(exit.stderr.contains("--ctx-size"), "{}", exit.stderr);
}

#[test]
fn the_callback_reports_the_advertised_url_when_one_is_set() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let model = tiny_model();
    let _s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--callback-url",
            &url,
            "--advertise-url",
            "http://worker-7.internal:9000",
        ],
        &[],
    );
    let got = accept_one(&listener, Duration::from_secs(30), 200).expect("no callback within 30 s");
    assert_eq!(
        got.body["uri"], "http://worker-7.internal:9000",
        "{}",
        got.body
    );
}
