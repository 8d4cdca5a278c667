//! Continuous batching over HTTP, the real binary on 127.0.0.1: a request's tokens do not depend
//! on how many others share its steps (greedy and seeded, at concurrency 1, 4 and 16), a shared
//! prefix is served from the cache with the same tokens, a pool far smaller than the demand
//! preempts and still completes every request, a storm of mixed and abandoned requests leaves
//! every KV block free, requests sent together with one prompt compute it once, and requests
//! batched at READY return what they return after the load.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{assert_error, token_ids, Server};
use serde_json::{json, Value};

fn spawn_tiny(args: &[&str]) -> Arc<Server> {
    let model = harness::tiny_model();
    let mut all = vec!["--model", model.to_str().unwrap(), "--device", "cpu"];
    all.extend_from_slice(args);
    let s = Server::spawn(&all, &[]);
    s.wait_ready(Duration::from_secs(30));
    Arc::new(s)
}

/// Sixteen different requests: even ones greedy, odd ones sampled with a fixed seed; prompts of
/// different lengths so prefill chunks and decode steps mix.
fn requests() -> Vec<Value> {
    (0..16)
        .map(|k| {
            let prompt = format!("Request {k}: {}", "tell me more about batching ".repeat(k % 5 + 1));
            if k % 2 == 0 {
                json!({"prompt": prompt, "max_tokens": 24, "temperature": 0})
            } else {
                json!({"prompt": prompt, "max_tokens": 24, "temperature": 0.9, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "seed": 1000 + k})
            }
        })
        .collect()
}

/// Send every request, `concurrency` at a time; returns each one's JSON answer in order.
fn run_all(s: &Arc<Server>, reqs: &[Value], concurrency: usize) -> Vec<Value> {
    let mut out = vec![Value::Null; reqs.len()];
    for (c, wave) in reqs.chunks(concurrency).enumerate() {
        let handles: Vec<_> = wave
            .iter()
            .cloned()
            .map(|body| {
                let s = s.clone();
                std::thread::spawn(move || s.post_json("/generate", &body))
            })
            .collect();
        for (i, h) in handles.into_iter().enumerate() {
            let r = h.join().unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            out[c * concurrency + i] = r.json();
        }
    }
    out
}

fn engine(s: &Server) -> Value {
    s.get("/health").json()["engine"].clone()
}

/// Wait until nothing runs or waits, then return the engine's counters.
fn wait_idle(s: &Server) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let e = engine(s);
        if e["running"] == 0 && e["waiting"] == 0 && e["queued"] == 0 {
            return e;
        }
        assert!(Instant::now() < deadline, "engine never idle: {e}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn outputs_are_identical_at_concurrency_1_4_and_16() {
    let s = spawn_tiny(&["--max-num-seqs", "16"]);
    let reqs = requests();
    let one = run_all(&s, &reqs, 1);
    for c in [4, 16] {
        let many = run_all(&s, &reqs, c);
        for (k, (a, b)) in one.iter().zip(&many).enumerate() {
            assert_eq!(
                token_ids(a),
                token_ids(b),
                "request {k} differs at concurrency {c}: {} vs {}",
                a["text"],
                b["text"]
            );
        }
    }
    assert!(token_ids(&one[1]).len() == 24, "{}", one[1]);
}

#[test]
fn a_cached_prefix_gives_the_same_tokens_and_reports_cached_tokens() {
    let with = spawn_tiny(&[]);
    let without = spawn_tiny(&["--no-prefix-cache"]);
    let system = "You are a careful assistant. ".repeat(12);
    let body = |q: &str| json!({"prompt": format!("{system}{q}"), "max_tokens": 12, "temperature": 0.8, "seed": 7});
    let first = with.post_json("/generate", &body("First question?")).json();
    assert_eq!(
        first["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
        "{first}"
    );
    for q in ["First question?", "A different question!"] {
        let hit = with.post_json("/generate", &body(q)).json();
        let cold = without.post_json("/generate", &body(q)).json();
        let cached = hit["usage"]["prompt_tokens_details"]["cached_tokens"]
            .as_u64()
            .unwrap();
        assert!(cached >= 48, "{q}: only {cached} cached tokens: {hit}");
        assert_eq!(
            cold["usage"]["prompt_tokens_details"]["cached_tokens"], 0,
            "{cold}"
        );
        assert_eq!(token_ids(&hit), token_ids(&cold), "{q}");
    }
    assert!(engine(&with)["kv_blocks_cached"].as_u64().unwrap() > 0);
}

#[test]
fn requests_sent_together_with_one_prompt_compute_it_once() {
    // Each step held back 30 ms while another request keeps the engine stepping, so the three
    // reach the queue together, before any of their prompt is computed.
    let model = harness::tiny_model();
    let args = ["--model", model.to_str().unwrap(), "--device", "cpu"];
    let s = Arc::new(Server::spawn(
        &args,
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "30")],
    ));
    s.wait_ready(Duration::from_secs(30));
    let busy = {
        let s = s.clone();
        let body = json!({"prompt": "Keep the engine busy", "max_tokens": 60, "temperature": 0});
        std::thread::spawn(move || s.post_json("/generate", &body))
    };
    std::thread::sleep(Duration::from_millis(300));
    let prompt = "A shared system prompt that is long enough. ".repeat(10);
    let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0});
    let out = run_all(&s, &[body.clone(), body.clone(), body], 3);
    assert_eq!(busy.join().unwrap().status, 200);
    let mut cached: Vec<u64> = out
        .iter()
        .map(|r| {
            r["usage"]["prompt_tokens_details"]["cached_tokens"]
                .as_u64()
                .unwrap()
        })
        .collect();
    cached.sort_unstable();
    let prompt_tokens = out[0]["usage"]["prompt_tokens"].as_u64().unwrap();
    // Every full block of the prompt but the one holding its last token.
    let all_but_last = (prompt_tokens - 1) / 16 * 16;
    assert_eq!(cached[0], 0, "one of them computes the prompt: {cached:?}");
    assert!(
        cached[1] == all_but_last && cached[2] == all_but_last,
        "the other two take all its blocks ({prompt_tokens} prompt tokens): {cached:?}"
    );
    assert_eq!(token_ids(&out[0]), token_ids(&out[1]));
    assert_eq!(token_ids(&out[1]), token_ids(&out[2]));
}

#[test]
fn a_tiny_kv_pool_preempts_and_still_completes_every_request_with_the_same_tokens() {
    let s = spawn_tiny(&[
        "--ctx-size",
        "128",
        "--kv-cache-tokens",
        "128",
        "--max-num-seqs",
        "8",
    ]);
    let reqs: Vec<Value> = (0..8)
        .map(|k| json!({"prompt": format!("Story {k} begins here and"), "max_tokens": 60, "temperature": 0.7, "seed": k}))
        .collect();
    let alone = run_all(&s, &reqs, 1);
    let together = run_all(&s, &reqs, 8);
    for (k, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(token_ids(a), token_ids(b), "request {k}");
    }
    let e = wait_idle(&s);
    assert!(
        e["preemptions"].as_u64().unwrap() > 0,
        "8 × ~70 positions in a 128-position pool never preempted: {e}"
    );
    assert_eq!(e["kv_blocks_used"], 0, "{e}");
}

/// One client's share of the storm: normal, streamed, abandoned mid-stream, oversized and
/// invalid requests in turn.
fn storm_client(s: &Server, client: usize, n: usize) {
    for i in 0..n {
        let seed = (client * 1000 + i) as u64;
        match i % 5 {
            0 => {
                let r = s.post_json(
                    "/generate",
                    &json!({"prompt": "storm", "max_tokens": 6, "seed": seed}),
                );
                assert_eq!(r.status, 200, "{}", r.text());
            }
            1 => {
                let mut sse = s.sse_post(
                    "/generate",
                    &json!({"prompt": "stream", "max_tokens": 6, "seed": seed, "stream": true}),
                    Duration::from_secs(60),
                );
                assert_eq!(sse.status, 200);
                while let Some(ev) = sse.next_event() {
                    if ev.event == "end" || ev.event == "error" {
                        assert_eq!(ev.event, "end", "{:?}", ev.data);
                        break;
                    }
                }
            }
            2 => {
                let mut sse = s.sse_post("/generate", &json!({"prompt": "leave early", "max_tokens": 500, "seed": seed, "stream": true}), Duration::from_secs(60));
                assert_eq!(sse.status, 200);
                let _ = sse.next_event();
                let _ = sse.next_event();
                drop(sse);
            }
            3 => {
                let r = s.post_json("/generate", &json!({"prompt": "x", "max_tokens": 100000}));
                assert_error(&r, 400, "invalid_request");
            }
            _ => {
                let r = s.post_raw("/generate", b"{\"prompt\": ");
                assert_error(&r, 400, "invalid_request");
            }
        }
    }
}

#[test]
fn a_thousand_mixed_requests_leave_every_kv_block_free() {
    let s = spawn_tiny(&["--max-queue", "256"]);
    let clients = 8;
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let s = s.clone();
            std::thread::spawn(move || storm_client(&s, c, 1000 / clients))
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let e = wait_idle(&s);
    assert_eq!(e["kv_blocks_used"], 0, "blocks still held: {e}");
    assert!(e["finished"].as_u64().unwrap() >= 400, "{e}");
    assert!(e["cancelled"].as_u64().unwrap() > 0, "{e}");
    assert_eq!(e["failed"], 0, "{e}");
}

#[test]
fn requests_batched_at_ready_match_the_answers_after_the_load() {
    let model = common::real_model_f16();
    let s = Arc::new(Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "250",
            "--device",
            "cpu",
        ],
        &[],
    ));
    s.wait_ready(Duration::from_secs(15));
    assert_eq!(s.get("/load-progress").json()["state"], "ready");
    let reqs: Vec<Value> = ["Write a haiku about GPU computing.", "Name three prime numbers.", "What is Rust?", "Say hello."]
        .iter()
        .enumerate()
        .map(|(k, q)| json!({"messages": [{"role": "user", "content": q}], "max_tokens": 8, "temperature": if k % 2 == 0 { 0.0 } else { 0.8 }, "seed": k}))
        .collect();
    let early = run_all(&s, &reqs, reqs.len());
    // Requests that arrive while a gated step runs join the batch at the next step, which may
    // come after the last layer landed: at least the first one waited on the gate.
    assert!(
        early
            .iter()
            .any(|e| e["timings"]["waited_for_load_ms"].as_f64().unwrap() > 0.0),
        "no early request waited for a layer: {early:?}"
    );
    s.wait_load_state("resident", Duration::from_secs(60));
    let late = run_all(&s, &reqs, reqs.len());
    for (k, (a, b)) in early.iter().zip(&late).enumerate() {
        assert_eq!(
            token_ids(a),
            token_ids(b),
            "request {k}: {} vs {}",
            a["text"],
            b["text"]
        );
        assert_eq!(token_ids(a).len(), 8, "{a}");
    }
}
