//! HTTP limits on the real binary over raw TCP on 127.0.0.1: a header section over 64 KiB gets
//! 431, a malformed head 400, a slow body 408, a connection over the cap 503 — each with the API's
//! JSON error body — and a half-sent request does not hold up shutdown.

#[path = "common/harness.rs"]
mod harness;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use harness::{tiny_model, Server};
use serde_json::Value;

fn spawn(args: &[&str]) -> Server {
    let model = tiny_model();
    let mut all = vec!["--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    let s = Server::spawn(&all, &[]);
    s.wait_ready(Duration::from_secs(30));
    s
}

/// Send `raw` on a new connection and read until the server closes it or `timeout` passes;
/// returns the status and the JSON body.
fn exchange(s: &Server, raw: &[u8], timeout: Duration) -> (u16, Value) {
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.set_read_timeout(Some(timeout)).unwrap();
    let _ = c.write_all(raw);
    read_response(&mut c)
}

fn read_response(c: &mut TcpStream) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match c.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!(
                "reading the answer: {e} (got {:?})",
                String::from_utf8_lossy(&buf)
            ),
        }
        if let Some(body) = complete(&buf) {
            return body;
        }
    }
    complete(&buf)
        .unwrap_or_else(|| panic!("incomplete answer: {:?}", String::from_utf8_lossy(&buf)))
}

/// The status and JSON body once `buf` holds a whole response with a Content-Length.
fn complete(buf: &[u8]) -> Option<(u16, Value)> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })?
        .parse()
        .ok()?;
    (body.len() >= len).then(|| {
        (
            status,
            serde_json::from_str(&body[..len]).unwrap_or(Value::Null),
        )
    })
}

fn assert_json_error(got: (u16, Value), status: u16, kind: &str) {
    assert_eq!(got.0, status, "{}", got.1);
    assert_eq!(got.1["error"]["type"], kind, "{}", got.1);
    assert_eq!(got.1["error"]["code"], status, "{}", got.1);
    assert!(
        got.1["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{}",
        got.1
    );
}

fn get_with_header(name: &str, value_len: usize) -> Vec<u8> {
    format!(
        "GET /live HTTP/1.1\r\nHost: localhost\r\n{name}: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(value_len)
    )
    .into_bytes()
}

#[test]
fn a_header_section_over_64_kib_gets_431_with_a_json_body() {
    let s = spawn(&[]);
    let ok = exchange(
        &s,
        &get_with_header("X-Big", 60 << 10),
        Duration::from_secs(5),
    );
    assert_eq!(ok.0, 200, "{}", ok.1);
    let big = exchange(
        &s,
        &get_with_header("X-Big", 70 << 10),
        Duration::from_secs(5),
    );
    assert_json_error(big, 431, "headers_too_large");
}

#[test]
fn malformed_heads_get_400_with_a_json_body() {
    let s = spawn(&[]);
    for raw in [
        &b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: abc\r\n\r\n"[..],
        &b"GET /live HTTP/1.1\r\nHost: localhost\r\nX-Nul: a\0b\r\n\r\n"[..],
    ] {
        let got = exchange(&s, raw, Duration::from_secs(5));
        assert_json_error(got.clone(), 400, "invalid_request");
        assert_eq!(got.1["error"]["param"], "headers", "{}", got.1);
    }
}

#[test]
fn a_body_that_does_not_arrive_in_time_gets_408() {
    let s = spawn(&["--body-timeout", "1"]);
    let t0 = Instant::now();
    let raw = b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pro";
    let got = exchange(&s, raw, Duration::from_secs(10));
    assert_json_error(got, 408, "body_timeout");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[test]
fn connections_over_the_cap_get_503_and_the_server_stays_healthy() {
    let s = spawn(&["--max-connections", "2"]);
    // The readiness poll's last connection may still hold its slot for a moment after its answer.
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(&s.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let over = exchange(
        &s,
        b"GET /live HTTP/1.1\r\nHost: localhost\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_json_error(over, 503, "overloaded");
    drop(held);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(s.get("/health").status, 200);
}

#[test]
fn half_sent_requests_do_not_hold_up_shutdown() {
    let s = spawn(&[]);
    let mut head = TcpStream::connect(&s.addr).unwrap();
    head.write_all(b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Le")
        .unwrap();
    let mut body = TcpStream::connect(&s.addr).unwrap();
    body.write_all(b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{").unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = Instant::now();
    s.terminate();
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("a half-sent request held the shutdown");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}
