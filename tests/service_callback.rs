//! The ready callback: after READY the service POSTs `{worker_id, uri, vram_bytes, ready_ms}` once
//! to `--callback-url` (retrying a failed attempt), and a callback nobody answers never stops it
//! from serving.

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

#[test]
fn the_ready_callback_is_posted_once_after_ready_with_the_worker_details() {
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
    let mut keys: Vec<&str> = b.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["ready_ms", "uri", "vram_bytes", "worker_id"], "{b}");
    // Exactly one: nothing more arrives once it was answered 200.
    let again = accept_one(&listener, Duration::from_secs(2), 200);
    assert!(
        again.is_none(),
        "a second callback: {:?}",
        again.map(|r| r.body)
    );
}

#[test]
fn a_failed_callback_is_retried_after_a_backoff() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let s = spawn_with_callback(&url);
    let first = accept_one(&listener, Duration::from_secs(30), 500).expect("no callback");
    let second = accept_one(&listener, Duration::from_secs(10), 200).expect("not retried");
    assert_eq!(first.body, second.body);
    let gap = second.at - first.at;
    assert!(
        gap >= Duration::from_millis(200),
        "retried after only {gap:?}"
    );
    assert!(
        accept_one(&listener, Duration::from_secs(2), 200).is_none(),
        "a third callback"
    );
    s.wait_for_log("ready callback", Duration::from_secs(5));
}

#[test]
fn a_callback_refused_with_a_4xx_is_not_retried() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/ready", listener.local_addr().unwrap());
    let s = spawn_with_callback(&url);
    accept_one(&listener, Duration::from_secs(30), 404).expect("no callback");
    assert!(
        accept_one(&listener, Duration::from_secs(2), 200).is_none(),
        "a 404 was retried"
    );
    s.wait_for_log("not retried", Duration::from_secs(5));
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
    s.wait_for_log("ready callback", Duration::from_secs(10));
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
