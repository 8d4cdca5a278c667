//! What one request may take, on the real binary over HTTP on 127.0.0.1: a whole answer is
//! bounded before it is generated (400 naming `n`, `max_tokens`, `top_logprobs`) and its memory
//! comes back after it is sent; a request with many choices leaves sequence slots for another
//! client; echoed strings are bounded and responses carry the served model's id; `logit_bias`
//! takes only canonical token ids.

#[path = "common/harness.rs"]
mod harness;

use std::time::{Duration, Instant};

use harness::{assert_error, tiny_model, Server};
use serde_json::{json, Value};

fn spawn(args: &[&str], env: &[(&str, &str)]) -> Server {
    let model = tiny_model();
    let mut all = vec!["--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    let s = Server::spawn(&all, env);
    s.wait_ready(Duration::from_secs(30));
    s
}

/// `VmRSS` and `VmHWM` (peak) of the process, in bytes.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kb * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_whole_answer_that_could_exceed_the_cap_is_refused_naming_its_parameters() {
    let s = spawn(&[], &[]);
    // The audit's 165-byte request: 16 choices of 4,000 tokens with 20 alternatives each.
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "n": 16,
        "logprobs": true, "top_logprobs": 20, "max_tokens": 4000});
    let t0 = Instant::now();
    let r = s.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 400, "{}", r.text());
    let e = r.json()["error"].clone();
    assert_eq!(e["param"], "top_logprobs", "{e}");
    let msg = e["message"].as_str().unwrap();
    for part in [
        "n (16)",
        "max_tokens (4000)",
        "top_logprobs (20)",
        "67108864",
        "stream",
    ] {
        assert!(msg.contains(part), "{msg}");
    }
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // The same request streamed is sent chunk by chunk and is not bounded; a completion without
    // log-probabilities names `max_tokens`.
    let r = s.post_json(
        "/v1/completions",
        &json!({"prompt": "hi", "n": 16, "max_tokens": 100000}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["param"], "max_tokens", "{}", r.text());
    // The cap is a setting.
    let small = spawn(&["--max-answer-bytes", "100000"], &[]);
    let r = small.post_json(
        "/v1/chat/completions",
        &json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 200,
            "logprobs": true, "top_logprobs": 5}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.text().contains("100000"), "{}", r.text());
}

#[test]
fn a_large_whole_answer_peaks_near_its_size_and_gives_its_memory_back() {
    // Eight choices of 1,000 tokens with 20 alternatives: a 14 MB answer (its bound, 122 MB, is
    // over the default cap, so the cap is raised).
    let s = spawn(&["--max-answer-bytes", "268435456"], &[]);
    let body = json!({"messages": [{"role": "user", "content": "hi"}], "n": 8,
        "logprobs": true, "top_logprobs": 20, "max_tokens": 1000, "ignore_eos": true});
    // One small answer first, so that the baseline holds what any answer needs.
    let warm = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4,
        "logprobs": true, "top_logprobs": 20});
    assert_eq!(s.post_json("/v1/chat/completions", &warm).status, 200);
    let (base, _) = memory(s.pid);
    let r = s.post_json("/v1/chat/completions", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let size = r.body.len() as u64;
    let v = r.json();
    assert_eq!(v["choices"].as_array().unwrap().len(), 8);
    let content = &v["choices"][7]["logprobs"]["content"];
    assert_eq!(content.as_array().unwrap().len(), 1000);
    assert_eq!(content[999]["top_logprobs"].as_array().unwrap().len(), 20);
    std::thread::sleep(Duration::from_millis(300));
    let (after, peak) = memory(s.pid);
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "answer {:.1} MB: RSS {:.1} MB before, peak {:.1} MB, {:.1} MB after",
        mb(size),
        mb(base),
        mb(peak),
        mb(after)
    );
    // Compact records and one serialisation pass: the peak stays within a few times the answer
    // (the old JSON tree took 28 times), and what it took is given back.
    assert!(
        peak < base + 4 * size + (32 << 20),
        "peak {:.1} MB for a {:.1} MB answer over {:.1} MB",
        mb(peak),
        mb(size),
        mb(base)
    );
    assert!(
        after < base + size / 2 + (16 << 20),
        "{:.1} MB stayed after a {:.1} MB answer (base {:.1} MB)",
        mb(after - base),
        mb(size),
        mb(base)
    );
}

#[test]
fn one_request_with_many_choices_leaves_room_for_another_client() {
    // Four slots and a request for four long choices; steps slowed so the wait is measurable.
    let s = spawn(
        &["--max-num-seqs", "4"],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "5")],
    );
    let hog = s.sse_post(
        "/v1/completions",
        &json!({"prompt": "hog", "n": 4, "max_tokens": 2000, "ignore_eos": true,
            "stream": true}),
        Duration::from_secs(120),
    );
    assert_eq!(hog.status, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while s.get("/health").json()["engine"]["running"] == 0 {
        assert!(Instant::now() < deadline, "the n = 4 request never ran");
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(200));
    let running = s.get("/health").json()["engine"]["running"].clone();
    assert_eq!(running, 2, "one request holds at most half the slots");
    let t0 = Instant::now();
    let r = s.post_json("/generate", &json!({"prompt": "hi", "max_tokens": 4}));
    let waited = t0.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let queued_ms = r.json()["timings"]["queued_ms"].as_f64().unwrap();
    println!("the second client queued {queued_ms:.1} ms, answered in {waited:?}");
    // 2,000 steps of >= 5 ms would be 10 s; a few steps are tens of milliseconds.
    assert!(
        queued_ms < 500.0,
        "queued {queued_ms} ms behind the n = 4 request"
    );
    drop(hog);
}

#[test]
fn responses_carry_the_served_model_id_and_long_echoed_strings_are_refused() {
    let s = spawn(&["--model-name", "served-id"], &[]);
    let long = "m".repeat(300);
    for (k, v) in [("model", &long), ("user", &long)] {
        let mut body = json!({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2});
        body[k] = json!(v);
        let r = s.post_json("/v1/chat/completions", &body);
        assert_eq!(r.status, 400, "{}", r.text());
        let e = r.json()["error"].clone();
        assert_eq!(e["param"], k, "{e}");
        assert_eq!(e["code"], "invalid_request", "{e}");
        assert!(e["message"].as_str().unwrap().contains("256"), "{e}");
    }
    let body = json!({"model": "whatever-the-client-says", "messages": [{"role": "user",
        "content": "hi"}], "max_tokens": 3, "stream": true, "user": "u-1"});
    let mut sse = s.sse_post("/v1/chat/completions", &body, Duration::from_secs(60));
    assert_eq!(sse.status, 200);
    // Every chunk is JSON up to the closing `data: [DONE]` (which is not).
    let mut chunks: Vec<Value> = Vec::new();
    while let Ok(Some(e)) = sse.try_next_event() {
        chunks.push(e.data);
    }
    assert!(chunks.len() >= 2, "{chunks:?}");
    for c in &chunks {
        assert_eq!(c["model"], "served-id", "{c}");
    }
    let whole = s.post_json(
        "/v1/completions",
        &json!({"model": "x", "prompt": "hi", "max_tokens": 2}),
    );
    assert_eq!(whole.json()["model"], "served-id", "{}", whole.text());
}

#[test]
fn logit_bias_takes_only_canonical_token_ids() {
    let s = spawn(&[], &[]);
    for key in ["+5", "05", " 5", "5.0", "-0"] {
        let body = json!({"prompt": "hi", "max_tokens": 1, "logit_bias": {key: 1}});
        let r = s.post_json("/generate", &body);
        let e = assert_error(&r, 400, "invalid_request");
        assert_eq!(e["param"], "logit_bias", "{key}: {e}");
    }
    for key in ["5", "0"] {
        let body = json!({"prompt": "hi", "max_tokens": 1, "logit_bias": {key: 1}});
        assert_eq!(s.post_json("/generate", &body).status, 200, "{key}");
    }
}
