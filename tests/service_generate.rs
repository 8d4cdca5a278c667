//! `POST /generate` over real HTTP on the tiny model: streaming and whole answers agree, seeds
//! matter, concurrent requests complete with their sequential results, stop strings end the
//! text, a client that disconnects cancels its request, and a full queue answers 429.

#[path = "common/harness.rs"]
mod harness;

use std::sync::{Arc, Barrier, OnceLock};
use std::time::{Duration, Instant};

use harness::{assert_error, assert_generation_stream, tiny_model, token_ids, Server};
use serde_json::{json, Value};

const STREAM_READ: Duration = Duration::from_secs(60);

/// One tiny-model server shared by the tests of this file that do not need a quiet engine.
fn shared() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let model = tiny_model();
        let s = Server::spawn(&["--model", model.to_str().unwrap()], &[]);
        s.wait_ready(Duration::from_secs(30));
        s
    })
}

fn spawn_tiny(extra: &[&str]) -> Server {
    spawn_tiny_with_env(extra, &[])
}

fn spawn_tiny_with_env(extra: &[&str], env: &[(&str, &str)]) -> Server {
    let model = tiny_model();
    let mut args = vec!["--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    let s = Server::spawn(&args, env);
    s.wait_ready(Duration::from_secs(30));
    s
}

fn generate_ok(s: &Server, body: &Value) -> Value {
    let r = s.post_json("/generate", body);
    assert_eq!(r.status, 200, "{body} → {}", r.text());
    r.json()
}

#[test]
fn streaming_and_whole_answers_give_the_same_tokens_for_the_same_seed() {
    let s = shared();
    let body =
        json!({"prompt": "Once upon a time", "max_tokens": 24, "temperature": 0.9, "seed": 42});
    let whole = generate_ok(s, &body);
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let mut sse = s.sse_post("/generate", &streamed, STREAM_READ);
    assert_eq!(sse.status, 200);
    assert!(sse.is_event_stream(), "{:?}", sse.headers);
    let events = sse.collect_all();
    let end = assert_generation_stream(&events);
    assert_eq!(token_ids(&end), token_ids(&whole));
    assert_eq!(token_ids(&whole).len(), 24);
    assert_eq!(end["text"], whole["text"]);
    assert_eq!(end["finish_reason"], whole["finish_reason"]);
    assert_eq!(whole["seed"], 42);
    assert_eq!(end["seed"], 42);
}

#[test]
fn different_seeds_give_different_tokens_and_a_repeated_seed_the_same() {
    let s = shared();
    let req = |seed: u64| json!({"prompt": "The weather today", "max_tokens": 24, "temperature": 0.9, "seed": seed});
    let a = token_ids(&generate_ok(s, &req(1)));
    let b = token_ids(&generate_ok(s, &req(2)));
    let a2 = token_ids(&generate_ok(s, &req(1)));
    assert_ne!(a, b, "seeds 1 and 2 sampled the same tokens");
    assert_eq!(a, a2, "the same seed sampled different tokens");
}

#[test]
fn whole_answer_reports_usage_finish_reason_and_timings() {
    let s = shared();
    let prompt = "Hello there, how are you";
    let n_prompt = harness::tokenize(&tiny_model(), prompt).len();
    let v = generate_ok(
        s,
        &json!({"prompt": prompt, "max_tokens": 5, "temperature": 0, "seed": 3}),
    );
    assert_eq!(v["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], n_prompt, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 5, "{v}");
    assert_eq!(token_ids(&v).len(), 5);
    assert!(v["text"].is_string(), "{v}");
    for key in [
        "queued_ms",
        "waited_for_load_ms",
        "ttft_ms",
        "decode_tok_per_s",
    ] {
        assert!(
            v["timings"][key].as_f64().is_some_and(|x| x >= 0.0),
            "timings.{key} missing or negative: {v}"
        );
    }
    assert_eq!(
        v["timings"]["waited_for_load_ms"], 0.0,
        "fully resident: {v}"
    );
    // A chat request goes through the chat template: its prompt is longer than the raw text.
    let chat = generate_ok(
        s,
        &json!({"messages": [{"role": "user", "content": prompt}], "max_tokens": 2, "temperature": 0}),
    );
    assert!(
        chat["usage"]["prompt_tokens"].as_u64().unwrap() > n_prompt as u64 + 5,
        "{chat}"
    );
}

#[test]
fn eight_concurrent_requests_complete_with_their_sequential_results() {
    let s = shared();
    let req = |k: u64| json!({"prompt": format!("Request number {k}"), "max_tokens": 16, "temperature": 0.9, "seed": 100 + k});
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8u64)
        .map(|k| {
            let barrier = barrier.clone();
            let body = req(k);
            std::thread::spawn(move || {
                barrier.wait();
                let r = shared().post_json("/generate", &body);
                (r.status, r.text())
            })
        })
        .collect();
    let concurrent: Vec<(u16, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    for (k, (status, text)) in concurrent.iter().enumerate() {
        assert_eq!(*status, 200, "request {k}: {text}");
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(token_ids(&v).len(), 16, "request {k}: {v}");
        let alone = generate_ok(s, &req(k as u64));
        assert_eq!(
            token_ids(&v),
            token_ids(&alone),
            "request {k} sampled differently under concurrency"
        );
    }
}

#[test]
fn a_stop_string_ends_the_text_before_it() {
    let s = shared();
    let body =
        json!({"prompt": "List some words:", "max_tokens": 40, "temperature": 0.9, "seed": 7});
    let free = generate_ok(s, &body);
    let text = free["text"].as_str().unwrap().to_string();
    // A stop string taken from the middle of the free-running text (at a char boundary).
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 12, "too little text to cut: {text:?}");
    let start = chars.len() / 2;
    let stop: String = chars[start..start + 3].iter().collect();
    let mut stopped = body.clone();
    stopped["stop"] = json!([stop]);
    let v = generate_ok(s, &stopped);
    let got = v["text"].as_str().unwrap();
    assert_eq!(v["finish_reason"], "stop", "{v}");
    assert!(!got.contains(&stop), "stop string {stop:?} in {got:?}");
    let expected_prefix = &text[..text.find(&stop).unwrap()];
    assert_eq!(
        got, expected_prefix,
        "text must end right before the stop string"
    );
    // Streamed, no token event leaks the stop string (or a held-back part of it).
    stopped["stream"] = json!(true);
    let events = s.sse_post("/generate", &stopped, STREAM_READ).collect_all();
    let end = assert_generation_stream(&events);
    assert_eq!(end["text"], got);
    assert_eq!(end["finish_reason"], "stop");
}

#[test]
fn client_disconnect_mid_stream_cancels_the_request() {
    // 2 ms a step: the 200 tokens outlast the disconnect however fast the device decodes.
    let s = spawn_tiny_with_env(&[], &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "2")]);
    let body = json!({"prompt": "Tell me a long story", "max_tokens": 200, "temperature": 0.9, "seed": 11, "stream": true});
    let mut sse = s.sse_post("/generate", &body, STREAM_READ);
    assert_eq!(sse.status, 200);
    let first = sse.next_event().unwrap();
    assert_eq!(first.event, "started", "{first:?}");
    for k in 0..2 {
        let e = sse.next_event().unwrap();
        assert_eq!(e.event, "token", "event {k}: {e:?}");
    }
    drop(sse);
    let t0 = Instant::now();
    let follow = generate_ok(
        &s,
        &json!({"prompt": "Short", "max_tokens": 4, "temperature": 0, "seed": 1}),
    );
    let follow_ms = t0.elapsed().as_secs_f64() * 1e3;
    let line = s.wait_for_log("request cancelled", Duration::from_secs(10));
    let done: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tokens="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tokens= in {line:?}"));
    assert!(done < 200, "the request ran to the end: {line}");
    // The follow-up did not queue behind the rest of the 200 tokens.
    let rate = follow["timings"]["decode_tok_per_s"].as_f64().unwrap();
    assert!(rate > 0.0, "{follow}");
    let rest_ms = (200 - done) as f64 / rate * 1e3;
    let queued = follow["timings"]["queued_ms"].as_f64().unwrap();
    assert!(
        queued < rest_ms / 2.0,
        "follow-up queued {queued:.0} ms (whole call {follow_ms:.0} ms); the rest of the \
         cancelled request would take {rest_ms:.0} ms"
    );
    assert_eq!(token_ids(&follow).len(), 4);
}

#[test]
fn a_client_that_leaves_a_whole_request_cancels_it() {
    // 1 ms a token: 1000 tokens take over a second however fast the device decodes the tiny model.
    let s = spawn_tiny_with_env(&[], &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "1")]);
    let body =
        json!({"prompt": "Go on and on", "max_tokens": 1000, "temperature": 0.9, "seed": 12});
    let err = harness::request(
        &s.addr,
        "POST",
        "/generate",
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
        Duration::from_millis(300),
    )
    .expect_err("1000 tokens answered within 300 ms");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "{err}"
    );
    // The read timed out and the connection is gone: the engine must stop at its next token.
    let line = s.wait_for_log("request cancelled", Duration::from_secs(10));
    assert!(
        !s.log().contains("request done"),
        "the request ran to the end"
    );
    let done: usize = line
        .split_whitespace()
        .find_map(|w| w.strip_prefix("tokens="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tokens= in {line:?}"));
    assert!(done < 1000, "{line}");
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    // One sequence runs, one waits; 300 tokens held back 2 ms each keep them overlapping on any
    // device.
    let s = Arc::new(spawn_tiny_with_env(
        &["--max-queue", "1", "--max-num-seqs", "1"],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "2")],
    ));
    let n = 5;
    let barrier = Arc::new(Barrier::new(n));
    let handles: Vec<_> = (0..n)
        .map(|k| {
            let (s, barrier) = (s.clone(), barrier.clone());
            std::thread::spawn(move || {
                let body = json!({"prompt": "Keep going", "max_tokens": 300, "temperature": 0.9, "seed": k});
                barrier.wait();
                s.post_json("/generate", &body)
            })
        })
        .collect();
    let answers: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ok = answers.iter().filter(|r| r.status == 200).count();
    let full: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert!(ok >= 1, "no request completed: {:?}", statuses(&answers));
    assert!(
        !full.is_empty(),
        "no 429 with --max-queue 1: {:?}",
        statuses(&answers)
    );
    assert_eq!(ok + full.len(), n, "{:?}", statuses(&answers));
    for r in full {
        assert_error(r, 429, "queue_full");
        let retry: u64 = r
            .header("retry-after")
            .expect("429 without Retry-After")
            .parse()
            .unwrap();
        assert!(retry >= 1);
    }
    for r in answers.iter().filter(|r| r.status == 200) {
        assert_eq!(token_ids(&r.json()).len(), 300);
    }
    // The queue drains: the server takes work again.
    generate_ok(&s, &json!({"prompt": "again", "max_tokens": 2}));
}

fn statuses(rs: &[harness::HttpResponse]) -> Vec<u16> {
    rs.iter().map(|r| r.status).collect()
}

#[test]
fn json_logs_are_one_object_per_line_with_the_request_fields() {
    let s = spawn_tiny(&["--log-format", "json"]);
    generate_ok(
        &s,
        &json!({"prompt": "hi", "max_tokens": 2, "temperature": 0}),
    );
    let line = s.wait_for_log("request done", Duration::from_secs(10));
    let done: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(done["fields"]["completion_tokens"], 2, "{done}");
    assert!(done["fields"]["id"].is_string(), "{done}");
    for line in s.log().lines().filter(|l| !l.trim().is_empty()) {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            v["level"].is_string() && v["fields"]["message"].is_string(),
            "{v}"
        );
    }
}

#[test]
fn logit_bias_bans_and_forces_tokens_and_out_of_range_fields_are_named() {
    let s = shared();
    let req = |extra: Value| {
        let mut b = json!({"prompt": "Once upon a time", "max_tokens": 6, "temperature": 0});
        b.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        b
    };
    let greedy = token_ids(&generate_ok(s, &req(json!({}))));
    assert!(greedy.len() >= 2, "{greedy:?}");
    let (first, forced) = (greedy[0], greedy[1]);
    let banned = token_ids(&generate_ok(
        s,
        &req(json!({"logit_bias": {first.to_string(): -100}})),
    ));
    assert_ne!(
        banned.first(),
        Some(&first),
        "a -100 bias left the greedy token first"
    );
    let all = token_ids(&generate_ok(
        s,
        &req(
            json!({"logit_bias": {forced.to_string(): 100}, "frequency_penalty": 2, "presence_penalty": 2}),
        ),
    ));
    assert_eq!(
        all,
        vec![forced; 6],
        "a +100 bias outweighs penalties of 2 + 2 per token"
    );
    for (extra, field) in [
        (json!({"logit_bias": {"100000000": 1}}), "logit_bias"),
        (json!({"logit_bias": {"1": 100.5}}), "logit_bias"),
        (json!({"presence_penalty": -2.5}), "presence_penalty"),
        (json!({"frequency_penalty": "1"}), "frequency_penalty"),
    ] {
        let r = s.post_json("/generate", &req(extra.clone()));
        let e = assert_error(&r, 400, "invalid_request");
        assert_eq!(e["param"], field, "{extra}");
    }
}
