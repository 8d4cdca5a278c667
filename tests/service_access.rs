//! Access control on the real binary over HTTP on 127.0.0.1: the API key on the inference routes
//! (401 in each API's shape, health routes open, the key never logged, read from a file), CORS
//! (preflights, allowed and refused origins, nothing without the flag), the JSON content type
//! (415), the Host check (DNS rebinding, 403 on every route), and the access log (text and JSON).

#[path = "common/harness.rs"]
mod harness;

use std::time::Duration;

use harness::{assert_error, run_to_exit, tiny_model, HttpResponse, Server};
use serde_json::{json, Value};

const KEY: &str = "sk-layerstream-test-0d5f9a";

fn spawn(args: &[&str], envs: &[(&str, &str)]) -> Server {
    let model = tiny_model();
    let mut all = vec!["--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    let s = Server::spawn(&all, envs);
    s.wait_ready(Duration::from_secs(30));
    s
}

fn small_request() -> Vec<u8> {
    json!({"prompt": "Hello", "max_tokens": 3, "temperature": 0})
        .to_string()
        .into_bytes()
}

fn chat_request() -> Vec<u8> {
    json!({"messages": [{"role": "user", "content": "Hello"}], "max_tokens": 3})
        .to_string()
        .into_bytes()
}

/// A file under the test artifacts holding `contents`.
fn key_file(name: &str, contents: &str) -> std::path::PathBuf {
    let dir = harness::artifacts_dir().join("access");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, contents).unwrap();
    file
}

/// POST a JSON body with extra headers.
fn post(s: &Server, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpResponse {
    let mut all = vec![("Content-Type", "application/json")];
    all.extend_from_slice(headers);
    s.request("POST", path, &all, body)
}

/// A 401 in OpenAI's shape, as OpenAI sends it.
fn assert_openai_401(r: &HttpResponse) {
    assert_eq!(r.status, 401, "{}", r.text());
    let e = &r.json()["error"];
    assert_eq!(e["type"], "authentication_error", "{e}");
    assert_eq!(e["code"], "invalid_api_key", "{e}");
    assert_eq!(e["param"], Value::Null, "{e}");
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{e}");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
}

#[test]
fn the_api_key_guards_the_inference_routes_and_only_them() {
    let s = spawn(&["--api-key", KEY], &[]);
    let bearer = format!("Bearer {KEY}");
    let right = [("Authorization", bearer.as_str())];
    let wrong = [("Authorization", "Bearer sk-not-the-key")];

    let r = post(&s, "/generate", &[], &small_request());
    assert_error(&r, 401, "invalid_api_key");
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    assert_error(
        &post(&s, "/generate", &wrong, &small_request()),
        401,
        "invalid_api_key",
    );
    assert_openai_401(&post(&s, "/v1/chat/completions", &[], &chat_request()));
    assert_openai_401(&post(&s, "/v1/completions", &wrong, &small_request()));
    assert_openai_401(&s.request("GET", "/v1/models", &wrong, b""));

    let r = post(&s, "/generate", &right, &small_request());
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post(&s, "/v1/chat/completions", &right, &chat_request());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.request("GET", "/v1/models", &right, b"").status, 200);
    for path in ["/live", "/health", "/ready", "/load-progress", "/metrics"] {
        assert_eq!(s.get(path).status, 200, "{path} must stay open");
    }
    let log = s.log();
    assert!(!log.contains(KEY), "the key is in the log:\n{log}");
    assert!(log.contains("API key required"), "{log}");
}

#[test]
fn the_api_key_file_is_read_without_its_newline_and_never_logged() {
    let file = key_file("api-key", &format!("{KEY}\n"));
    let s = spawn(
        &["--api-key-file", file.to_str().unwrap()],
        &[("RUST_LOG", "debug")],
    );
    let bearer = format!("Bearer {KEY}");
    let r = s.request("GET", "/v1/models", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_openai_401(&s.get("/v1/models"));
    let log = s.log();
    assert!(!log.contains(KEY), "the key is in the log:\n{log}");
}

/// Arguments, environment, and the flag the refusal must name.
type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)], &'a str);

#[test]
fn unusable_keys_are_refused_at_startup_naming_the_flag() {
    let empty = key_file("empty-key", "\n");
    let two_lines = key_file("two-line-key", "sk-first-line\nsk-second-line\n");
    let blank = key_file("blank-key", "   \n");
    let model = tiny_model();
    let model = model.to_str().unwrap();
    let cases: [Case; 10] = [
        (&["--api-key", ""], &[], "--api-key"),
        (&[], &[("LAYERSTREAM_API_KEY", "")], "--api-key"),
        (&["--api-key", "   "], &[], "--api-key"),
        (&[], &[("LAYERSTREAM_API_KEY", " \t ")], "--api-key"),
        (&["--api-key", "sk-secret part"], &[], "--api-key"),
        (&["--api-key", "sk-secret\npart"], &[], "--api-key"),
        (
            &["--api-key-file", two_lines.to_str().unwrap()],
            &[],
            "--api-key-file",
        ),
        (
            &["--api-key-file", blank.to_str().unwrap()],
            &[],
            "--api-key-file",
        ),
        (
            &["--api-key-file", "/nonexistent/key"],
            &[],
            "--api-key-file",
        ),
        (
            &["--api-key-file", empty.to_str().unwrap()],
            &[],
            "--api-key-file",
        ),
    ];
    for (args, envs, flag) in cases {
        let mut all = vec!["serve", "--model", model, "--device", "cpu", "--port", "0"];
        all.extend_from_slice(args);
        let exit = run_to_exit(&all, envs, Duration::from_secs(30));
        assert_eq!(exit.status.code(), Some(2), "{args:?}: {}", exit.stderr);
        assert!(exit.stderr.contains(flag), "{args:?}: {}", exit.stderr);
        // The refusal never shows the key.
        for secret in ["secret", "first-line", "second-line"] {
            assert!(!exit.stderr.contains(secret), "{args:?}: {}", exit.stderr);
        }
    }
}

#[test]
fn cors_answers_preflights_and_labels_responses_for_allowed_origins_only() {
    let s = spawn(
        &[
            "--cors-allow-origin",
            "http://app.example:3000,https://other.example",
        ],
        &[],
    );
    let preflight = [
        ("Origin", "http://app.example:3000"),
        ("Access-Control-Request-Method", "POST"),
        (
            "Access-Control-Request-Headers",
            "authorization, content-type",
        ),
    ];
    let r = s.request("OPTIONS", "/v1/chat/completions", &preflight, b"");
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://app.example:3000")
    );
    let methods = r.header("access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("POST") && methods.contains("GET"),
        "{methods}"
    );
    let allowed = r.header("access-control-allow-headers").unwrap_or_default();
    assert!(allowed.contains("Authorization") && allowed.contains("Content-Type"));

    let origin = [("Origin", "https://other.example")];
    let r = post(&s, "/v1/chat/completions", &origin, &chat_request());
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://other.example")
    );

    let evil = [("Origin", "http://evil.example")];
    let r = s.request("OPTIONS", "/generate", &[evil[0], preflight[1]], b"");
    assert_error(&r, 403, "origin_not_allowed");
    let r = post(&s, "/v1/completions", &evil, &small_request());
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.json()["error"]["type"], "permission_error");
    assert_eq!(r.json()["error"]["code"], "origin_not_allowed");
    assert_eq!(r.header("access-control-allow-origin"), None);
    let e = assert_error(
        &post(&s, "/generate", &evil, &small_request()),
        403,
        "origin_not_allowed",
    );
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("http://evil.example"),
        "{e}"
    );
    // The health routes stay readable, but not by the page.
    let r = s.request("GET", "/health", &evil, b"");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("access-control-allow-origin"), None);
}

#[test]
fn without_the_cors_flag_there_are_no_cors_headers_and_pages_are_refused() {
    let s = spawn(&[], &[]);
    let r = post(&s, "/generate", &[], &small_request());
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.headers
            .iter()
            .all(|(k, _)| !k.starts_with("access-control-")),
        "{:?}",
        r.headers
    );
    let page = [("Origin", "http://localhost:3000")];
    assert_error(
        &post(&s, "/generate", &page, &small_request()),
        403,
        "origin_not_allowed",
    );
    let preflight = [page[0], ("Access-Control-Request-Method", "POST")];
    let r = s.request("OPTIONS", "/v1/chat/completions", &preflight, b"");
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.headers
            .iter()
            .all(|(k, _)| !k.starts_with("access-control-")),
        "{:?}",
        r.headers
    );
}

#[test]
fn json_routes_refuse_bodies_not_labelled_json() {
    let s = spawn(&[], &[]);
    let plain = [("Content-Type", "text/plain")];
    let e = assert_error(
        &s.request("POST", "/generate", &plain, &small_request()),
        415,
        "unsupported_media_type",
    );
    assert_eq!(e["param"], "Content-Type", "{e}");
    assert!(e["message"].as_str().unwrap().contains("text/plain"), "{e}");
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let r = s.request("POST", "/v1/chat/completions", &form, &chat_request());
    assert_eq!(r.status, 415, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "unsupported_media_type");
    assert_eq!(r.json()["error"]["param"], "Content-Type");
    let r = s.request("POST", "/v1/completions", &[], &small_request());
    assert_eq!(r.status, 415, "no Content-Type: {}", r.text());
    let utf8 = [("Content-Type", "application/json; charset=utf-8")];
    let r = s.request("POST", "/generate", &utf8, &small_request());
    assert_eq!(r.status, 200, "{}", r.text());
}

#[test]
fn a_loopback_server_answers_loopback_hosts_only() {
    let s = spawn(&[], &[]);
    let port = s.port.to_string();
    for host in ["localhost", "127.0.0.1", "[::1]"] {
        let h = format!("{host}:{port}");
        let r = s.request("GET", "/health", &[("Host", &h)], b"");
        assert_eq!(r.status, 200, "{h}: {}", r.text());
    }
    let rebound = [("Host", "attacker.example")];
    for path in ["/health", "/metrics", "/load-progress", "/live"] {
        let e = assert_error(
            &s.request("GET", path, &rebound, b""),
            403,
            "host_not_allowed",
        );
        assert!(
            e["message"].as_str().unwrap().contains("attacker.example"),
            "{e}"
        );
    }
    let r = s.request(
        "POST",
        "/generate",
        &[rebound[0], ("Content-Type", "application/json")],
        &small_request(),
    );
    assert_error(&r, 403, "host_not_allowed");
    let r = s.request(
        "GET",
        "/v1/models",
        &[("Host", "attacker.example:8080")],
        b"",
    );
    assert_eq!(
        r.json()["error"]["code"],
        "host_not_allowed",
        "{}",
        r.text()
    );
}

#[test]
fn allowed_hosts_lists_the_names_answered_or_allows_all() {
    let all = spawn(&["--allowed-hosts", "*"], &[]);
    let r = all.request("GET", "/health", &[("Host", "attacker.example")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let listed = spawn(&["--allowed-hosts", "api.example,127.0.0.1"], &[]);
    let r = listed.request("GET", "/health", &[("Host", "api.example:443")], b"");
    assert_eq!(r.status, 200, "{}", r.text());
    let r = listed.request("GET", "/health", &[("Host", "localhost")], b"");
    assert_error(&r, 403, "host_not_allowed");
}

/// The access-log line of request `id` in a text log.
fn text_access_line(log: &str, id: &str) -> String {
    let needle = format!("request_id={id} ");
    log.lines()
        .find(|l| l.contains("layerstream::access") && l.contains(&needle))
        .unwrap_or_else(|| panic!("no access line for {id}:\n{log}"))
        .to_string()
}

#[test]
fn every_request_is_logged_with_its_status_and_tokens() {
    let s = spawn(&[], &[]);
    let body = json!({"prompt": "A secret prompt text", "max_tokens": 4, "temperature": 0});
    let r = s.post_json("/generate", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").expect("X-Request-Id").to_string();
    let usage = r.json()["usage"].clone();
    let streamed = json!({"prompt": "A secret prompt text", "max_tokens": 3, "stream": true});
    let sse = s.post_json("/v1/completions", &streamed);
    assert!(sse.text().ends_with("data: [DONE]\n\n"), "{}", sse.text());
    let stream_id = sse
        .header("x-request-id")
        .expect("X-Request-Id")
        .to_string();
    let missing = s.get("/nope");
    let missing_id = missing.header("x-request-id").unwrap().to_string();

    s.wait_for_log(&format!("request_id={id} "), Duration::from_secs(5));
    let line = text_access_line(&s.log(), &id);
    assert!(line.contains(" INFO "), "{line}");
    assert!(
        line.contains("method=POST path=/generate status=200"),
        "{line}"
    );
    assert!(
        line.contains(&format!("prompt_tokens={}", usage["prompt_tokens"])),
        "{line}"
    );
    assert!(
        line.contains(&format!("completion_tokens={}", usage["completion_tokens"])),
        "{line}"
    );
    assert!(line.contains("duration_ms="), "{line}");
    s.wait_for_log(&format!("request_id={stream_id} "), Duration::from_secs(5));
    let line = text_access_line(&s.log(), &stream_id);
    assert!(line.contains("path=/v1/completions status=200"), "{line}");
    assert!(line.contains("completion_tokens=3"), "{line}");
    assert!(!line.contains("client_gone"), "{line}");
    let line = text_access_line(&s.log(), &missing_id);
    assert!(
        line.contains("status=404") && !line.contains("tokens"),
        "{line}"
    );
    assert!(
        !s.log().contains("secret prompt"),
        "the prompt is in the log"
    );
}

#[test]
fn access_log_lines_are_json_with_log_format_json() {
    let s = spawn(&["--log-format", "json"], &[]);
    let r = s.post_json(
        "/generate",
        &json!({"prompt": "Hi", "max_tokens": 2, "temperature": 0}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").unwrap().to_string();
    s.wait_for_log(&format!("\"request_id\":\"{id}\""), Duration::from_secs(5));
    let line: Value = s
        .log()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["target"] == "layerstream::access" && v["fields"]["request_id"] == id)
        .expect("a JSON access line");
    let f = &line["fields"];
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(f["method"], "POST", "{line}");
    assert_eq!(f["path"], "/generate", "{line}");
    assert_eq!(f["status"], 200, "{line}");
    assert_eq!(f["completion_tokens"], 2, "{line}");
    assert_eq!(
        f["prompt_tokens"],
        r.json()["usage"]["prompt_tokens"],
        "{line}"
    );
    assert!(f["duration_ms"].as_f64().is_some(), "{line}");
}
