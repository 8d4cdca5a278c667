//! Every malformed request gets its status and the one JSON error shape naming the field: bad
//! bodies (JSON, UTF-8, types, unknown fields), out-of-range values, context overflow, oversized
//! bodies, unknown routes and methods, and 503 + Retry-After before READY.

#[path = "common/harness.rs"]
mod harness;

use std::sync::OnceLock;
use std::time::Duration;

use harness::{assert_error, tiny_model, Server};
use serde_json::{json, Value};

fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let model = tiny_model();
        let s = Server::spawn(&["--model", model.to_str().unwrap()], &[]);
        s.wait_ready(Duration::from_secs(30));
        s
    })
}

/// POST `body` and check a 400 `invalid_request` naming `param`; returns the message.
fn assert_invalid(s: &Server, body: &[u8], param: &str) -> String {
    let r = s.post_raw("/generate", body);
    let shown = String::from_utf8_lossy(body);
    assert_eq!(r.status, 400, "{shown} → {}", r.text());
    let e = assert_error(&r, 400, "invalid_request");
    assert_eq!(e["param"], param, "{shown} → {e}");
    let message = e["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(param) || param == "body",
        "the message of {shown} does not name {param}: {message}"
    );
    message
}

#[test]
fn malformed_json_is_400_naming_the_body() {
    let m = assert_invalid(shared(), br#"{"prompt": "a""#, "body");
    assert!(m.contains("JSON"), "{m}");
    let m = assert_invalid(shared(), b"[1, 2]", "body");
    assert!(m.contains("object"), "{m}");
    assert_invalid(shared(), b"", "body");
}

#[test]
fn invalid_utf8_is_400_naming_the_body() {
    let m = assert_invalid(shared(), b"{\"prompt\": \"\xff\xfe\"}", "body");
    assert!(m.contains("UTF-8"), "{m}");
}

#[test]
fn wrong_types_are_400_naming_the_field() {
    let cases: [(&str, &str); 9] = [
        (r#"{"prompt": 3}"#, "prompt"),
        (r#"{"prompt": "a", "temperature": "hot"}"#, "temperature"),
        (r#"{"prompt": "a", "max_tokens": "10"}"#, "max_tokens"),
        (r#"{"prompt": "a", "max_tokens": 2.5}"#, "max_tokens"),
        (r#"{"prompt": "a", "seed": -1}"#, "seed"),
        (r#"{"prompt": "a", "stream": "yes"}"#, "stream"),
        (r#"{"prompt": "a", "stop": 5}"#, "stop"),
        (r#"{"messages": "hi"}"#, "messages"),
        (
            r#"{"messages": [{"role": "user", "content": 1}]}"#,
            "messages[0].content",
        ),
    ];
    for (body, param) in cases {
        assert_invalid(shared(), body.as_bytes(), param);
    }
}

#[test]
fn unknown_fields_are_400_naming_the_field() {
    assert_invalid(shared(), br#"{"prompt": "a", "bogus": 1}"#, "bogus");
    assert_invalid(
        shared(),
        br#"{"messages": [{"role": "user", "content": "x", "name": "y"}]}"#,
        "messages[0].name",
    );
}

#[test]
fn empty_or_missing_input_is_400_naming_the_prompt() {
    assert_invalid(shared(), br#"{"prompt": ""}"#, "prompt");
    assert_invalid(shared(), br#"{"max_tokens": 4}"#, "prompt");
    assert_invalid(shared(), br#"{"messages": []}"#, "messages");
    assert_invalid(
        shared(),
        br#"{"messages": [{"role": "wizard", "content": "x"}]}"#,
        "messages[0].role",
    );
}

#[test]
fn max_tokens_zero_or_above_the_context_is_400() {
    let m = assert_invalid(
        shared(),
        br#"{"prompt": "a", "max_tokens": 0}"#,
        "max_tokens",
    );
    assert!(m.contains("4096"), "the limit is not stated: {m}");
    let m = assert_invalid(
        shared(),
        br#"{"prompt": "a", "max_tokens": 5000}"#,
        "max_tokens",
    );
    assert!(m.contains("4096") && m.contains("5000"), "{m}");
}

#[test]
fn sampling_values_out_of_range_are_400_stating_the_limit() {
    let m = assert_invalid(
        shared(),
        br#"{"prompt": "a", "temperature": -0.5}"#,
        "temperature",
    );
    assert!(m.contains(">= 0"), "{m}");
    let m = assert_invalid(shared(), br#"{"prompt": "a", "top_p": 0}"#, "top_p");
    assert!(m.contains("> 0"), "{m}");
    let m = assert_invalid(shared(), br#"{"prompt": "a", "top_p": 1.5}"#, "top_p");
    assert!(m.contains("<= 1"), "{m}");
}

#[test]
fn nine_stop_strings_or_an_empty_one_are_400() {
    let nine = json!({"prompt": "a", "stop": ["a", "b", "c", "d", "e", "f", "g", "h", "i"]});
    let m = assert_invalid(shared(), nine.to_string().as_bytes(), "stop");
    assert!(
        m.contains('8') && m.contains('9'),
        "limit and count expected: {m}"
    );
    let eight =
        json!({"prompt": "a", "max_tokens": 1, "stop": ["a", "b", "c", "d", "e", "f", "g", "h"]});
    assert_eq!(shared().post_json("/generate", &eight).status, 200);
    assert_invalid(
        shared(),
        br#"{"prompt": "a", "stop": ["x", ""]}"#,
        "stop[1]",
    );
    assert_invalid(shared(), br#"{"prompt": "a", "stop": ""}"#, "stop[0]");
}

#[test]
fn prompt_plus_max_tokens_beyond_the_context_is_400_stating_both() {
    let model = tiny_model();
    let s = Server::spawn(
        &["--model", model.to_str().unwrap(), "--ctx-size", "64"],
        &[],
    );
    s.wait_ready(Duration::from_secs(30));
    let prompt =
        "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron \
                  pi rho sigma tau upsilon phi chi psi omega";
    let n = harness::tokenize(&model, prompt).len();
    assert!(
        n < 64 && n + 40 > 64,
        "prompt of {n} tokens does not suit the case"
    );
    let body = json!({"prompt": prompt, "max_tokens": 40});
    let m = assert_invalid(&s, body.to_string().as_bytes(), "max_tokens");
    for number in [n.to_string(), "40".into(), "64".into()] {
        assert!(m.contains(&number), "{number} missing from: {m}");
    }
    // Without max_tokens, a prompt longer than the context is refused the same way.
    let long = format!("{prompt} {prompt} {prompt}");
    let n_long = harness::tokenize(&model, &long).len();
    assert!(n_long > 64);
    let r = s.post_json("/generate", &json!({"prompt": long}));
    let e = assert_error(&r, 400, "invalid_request");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains(&n_long.to_string()) && m.contains("64"), "{m}");
    // The same prompt with room to spare is served.
    let fits = json!({"prompt": prompt, "max_tokens": 64 - n});
    let r = s.post_json("/generate", &fits);
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_body_over_1_mib_is_413() {
    let big = json!({"prompt": "x".repeat(1 << 20)}).to_string();
    let r = shared().post_raw("/generate", big.as_bytes());
    assert_error(&r, 413, "payload_too_large");
    // Without a Content-Length (chunked), the limit still holds while reading.
    let mut chunked = Vec::new();
    for piece in big.as_bytes().chunks(64 * 1024) {
        chunked.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
        chunked.extend_from_slice(piece);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let r = shared().request(
        "POST",
        "/generate",
        &[
            ("Content-Type", "application/json"),
            ("Transfer-Encoding", "chunked"),
        ],
        &chunked,
    );
    assert_error(&r, 413, "payload_too_large");
    // Just under the limit is not refused for its size.
    let under = json!({"prompt": "x".repeat((1 << 20) - 100), "max_tokens": 0}).to_string();
    assert!(under.len() <= 1 << 20);
    let r = shared().post_raw("/generate", under.as_bytes());
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn unknown_routes_are_404_and_wrong_methods_405() {
    let s = shared();
    let r = s.get("/nope");
    let e = assert_error(&r, 404, "not_found");
    assert!(e["message"].as_str().unwrap().contains("/nope"), "{e}");
    let r = s.get("/generate");
    assert_error(&r, 405, "method_not_allowed");
    assert_eq!(r.header("allow"), Some("POST"));
    for path in ["/health", "/ready", "/live", "/load-progress"] {
        let r = s.post_json(path, &json!({}));
        assert_error(&r, 405, "method_not_allowed");
        assert_eq!(r.header("allow"), Some("GET"), "{path}");
    }
    let r = s.request("DELETE", "/generate", &[], b"");
    assert_error(&r, 405, "method_not_allowed");
}

#[test]
fn generate_before_ready_is_503_with_retry_after_while_live_is_200() {
    let model = tiny_model();
    // ~0.5 MB/s: the 19.5 MB embeddings alone keep the server loading for tens of seconds.
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "0.5",
        ],
        &[],
    );
    let body = json!({"prompt": "hello", "max_tokens": 2});
    let r = s.post_json("/generate", &body);
    let e = assert_error(&r, 503, "loading");
    assert!(e.get("param").is_none(), "{e}");
    let retry: u64 = r
        .header("retry-after")
        .expect("503 without Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let sse = s.sse_post("/generate", &streamed, Duration::from_secs(10));
    assert_eq!(sse.status, 503);
    assert_eq!(sse.body_json()["error"]["type"], "loading");
    assert_eq!(s.get("/live").status, 200);
    let h = s.get("/health");
    assert_eq!(h.status, 503, "{}", h.text());
    assert_eq!(h.json()["status"], "loading");
    assert!(h.header("retry-after").is_some());
    assert_eq!(s.get("/ready").status, 503);
    let p: Value = s.get("/load-progress").json();
    assert_eq!(p["state"], "loading", "{p}");
    assert_eq!(p["ready"], false, "{p}");
}

#[test]
fn flags_can_come_from_the_environment() {
    let model = tiny_model();
    let s = Server::spawn(
        &["--model", model.to_str().unwrap()],
        &[("LAYERSTREAM_CTX_SIZE", "64")],
    );
    s.wait_ready(Duration::from_secs(30));
    let m = assert_invalid(&s, br#"{"prompt": "a", "max_tokens": 65}"#, "max_tokens");
    assert!(m.contains("64"), "LAYERSTREAM_CTX_SIZE=64 not applied: {m}");
}
