//! HTTP limits on the real binary over raw TCP on 127.0.0.1: a header section over 64 KiB gets
//! 431, a malformed head 400, a slow body 408, a connection over the cap 503 — each with the API's
//! JSON error body — and a half-sent request does not hold up shutdown. An absolute-form target
//! must name an allowed host, HTTP/1.1 requires `Host`, every oversized Content-Length is a 413,
//! one address cannot take every connection, and a head that does not arrive closes its connection.

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

/// A connection to the server from source address `from` (any 127.x.y.z works on Linux).
fn connect_from(s: &Server, from: &str) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let sock = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let local: std::net::SocketAddr = format!("{from}:0").parse().unwrap();
    sock.bind(&local.into()).unwrap();
    let server: std::net::SocketAddr = s.addr.parse().unwrap();
    sock.connect(&server.into()).unwrap();
    sock.into()
}

fn exchange_on(mut c: TcpStream, raw: &[u8]) -> (u16, Value) {
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    c.write_all(raw).unwrap();
    read_response(&mut c)
}

#[test]
fn an_absolute_form_target_must_name_an_allowed_host() {
    let s = spawn(&[]);
    for target in ["http://evil.com/health", "http://127.0.0.1@evil.com/health"] {
        let raw = format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let got = exchange(&s, raw.as_bytes(), Duration::from_secs(5));
        assert_json_error(got.clone(), 403, "host_not_allowed");
        assert!(got.1.to_string().contains("evil.com"), "{}", got.1);
    }
    let ok = format!(
        "GET http://{}/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
        s.addr
    );
    assert_eq!(exchange(&s, ok.as_bytes(), Duration::from_secs(5)).0, 200);
}

#[test]
fn an_http_1_1_request_without_host_gets_400() {
    let s = spawn(&[]);
    let got = exchange(
        &s,
        b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    );
    assert_json_error(got.clone(), 400, "invalid_request");
    assert_eq!(got.1["error"]["param"], "Host", "{}", got.1);
    // HTTP/1.0 predates the header.
    let old = exchange(&s, b"GET /health HTTP/1.0\r\n\r\n", Duration::from_secs(5));
    assert_eq!(old.0, 200, "{}", old.1);
}

#[test]
fn every_oversized_content_length_gets_413_naming_the_limit() {
    let s = spawn(&[]);
    for len in [
        "18446744073709551615",
        "18446744073709551614",
        "18446744073709551613",
        "18446744073709551616",
        "99999999999999999999999999",
        "1048577",
    ] {
        let raw = format!(
            "POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{"
        );
        let got = exchange(&s, raw.as_bytes(), Duration::from_secs(5));
        assert_json_error(got.clone(), 413, "payload_too_large");
        let msg = got.1["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains("1048576"), "{len}: {msg}");
    }
    // A malformed length stays a 400.
    let raw = b"POST /generate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 12a\r\n\r\n";
    assert_json_error(
        exchange(&s, raw, Duration::from_secs(5)),
        400,
        "invalid_request",
    );
}

#[test]
fn one_address_cannot_take_every_connection() {
    // 8 connections in all, 4 per address: partial heads from 127.0.0.1 fill its share, and
    // 127.0.0.2 is still answered.
    let s = spawn(&["--max-connections", "8"]);
    std::thread::sleep(Duration::from_millis(200));
    let held: Vec<TcpStream> = (0..4)
        .map(|_| {
            let mut c = connect_from(&s, "127.0.0.1");
            c.write_all(b"GET /live HTTP/1.1\r\nHost: localh").unwrap();
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let over = exchange_on(
        connect_from(&s, "127.0.0.1"),
        b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_json_error(over.clone(), 503, "overloaded");
    assert!(
        over.1.to_string().contains("--max-connections-per-peer"),
        "{}",
        over.1
    );
    let other = exchange_on(
        connect_from(&s, "127.0.0.2"),
        b"GET /live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(other.0, 200, "{}", other.1);
    drop(held);
}

#[test]
fn a_connection_that_sends_no_whole_head_is_closed_after_the_head_timeout() {
    let s = spawn(&["--head-timeout", "1"]);
    let mut c = TcpStream::connect(&s.addr).unwrap();
    c.write_all(b"GET /live HTTP/1.1\r\nHost: localh").unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    let mut buf = [0u8; 1024];
    let n = loop {
        match c.read(&mut buf) {
            Ok(n) => break n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => panic!("the connection stayed open: {e}"),
        }
    };
    let waited = t0.elapsed();
    assert!(
        waited < Duration::from_secs(4),
        "closed after {waited:?} (n = {n})"
    );
    // An idle connection that never sent anything is closed the same way.
    let mut idle = TcpStream::connect(&s.addr).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let t0 = Instant::now();
    let _ = idle.read(&mut buf);
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}
