//! `GET /metrics` on the real binary: Prometheus text whose counters, histograms and gauges agree
//! with the requests the test made (tokens, successes, failures by type, time to first token,
//! prefix-cache hits), the batch and KV-pool state, and the load timeline; and `/health`'s
//! counts of how requests ended agree with them under a mixed load (one count behind both).

#[path = "common/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{tiny_model, token_ids, Server};
use serde_json::{json, Value};

/// Every sample line `name{labels} value`, keyed by `name{labels}`; checks the text format.
fn scrape(s: &Server) -> HashMap<String, f64> {
    let r = s.get("/metrics");
    assert_eq!(r.status, 200);
    let ct = r.header("content-type").unwrap_or_default();
    assert!(ct.starts_with("text/plain"), "{ct}");
    let mut out = HashMap::new();
    for line in r
        .text()
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (key, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = key.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
                && name.starts_with("layerstream:"),
            "bad metric name in {line:?}"
        );
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(key.to_string(), v);
    }
    out
}

#[test]
fn metrics_count_what_the_requests_did() {
    let model = tiny_model();
    let s = Server::spawn(
        &["--model", model.to_str().unwrap(), "--device", "cpu"],
        &[],
    );
    s.wait_ready(Duration::from_secs(30));
    let prompt = "A shared system prompt that fills more than one block of tokens. ".repeat(3);
    let (mut prompt_tokens, mut generated) = (0.0, 0.0);
    for seed in 0..3 {
        let r = s.post_json(
            "/generate",
            &json!({"prompt": prompt, "max_tokens": 4, "seed": seed}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        prompt_tokens += v["usage"]["prompt_tokens"].as_f64().unwrap();
        generated += token_ids(&v).len() as f64;
    }
    let bad = s.post_json("/generate", &json!({"prompt": "x", "max_tokens": 0}));
    assert_eq!(bad.status, 400);
    s.wait_load_state("resident", Duration::from_secs(10));
    let m = scrape(&s);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:?}"));
    assert_eq!(get("layerstream:prompt_tokens_total"), prompt_tokens);
    assert_eq!(get("layerstream:generation_tokens_total"), generated);
    assert_eq!(
        get("layerstream:request_success_total{finished_reason=\"length\"}"),
        3.0
    );
    assert_eq!(
        get("layerstream:request_failure_total{type=\"invalid_request\"}"),
        1.0
    );
    assert_eq!(get("layerstream:time_to_first_token_seconds_count"), 3.0);
    assert_eq!(get("layerstream:e2e_request_latency_seconds_count"), 3.0);
    assert_eq!(get("layerstream:request_queue_time_seconds_count"), 3.0);
    assert_eq!(
        get("layerstream:inter_token_latency_seconds_count"),
        generated - 3.0
    );
    assert_eq!(get("layerstream:prefix_cache_queries_total"), prompt_tokens);
    assert!(get("layerstream:prefix_cache_hits_total") >= 32.0, "{m:?}");
    assert_eq!(get("layerstream:num_requests_running"), 0.0);
    assert_eq!(get("layerstream:num_requests_waiting"), 0.0);
    assert_eq!(get("layerstream:kv_cache_usage_perc"), 0.0);
    assert_eq!(
        get("layerstream:units_resident"),
        get("layerstream:units_total")
    );
    assert_eq!(
        get("layerstream:bytes_resident"),
        get("layerstream:bytes_total")
    );
    assert!(get("layerstream:load_ready_seconds") > 0.0);
    assert!(get("layerstream:load_resident_seconds") >= get("layerstream:load_ready_seconds"));
    assert!(
        m.keys().any(|k| k.starts_with("layerstream:build_info{")),
        "{m:?}"
    );
}

/// How long the mixed-load test waits for the engine to reach a state.
const WAIT: Duration = Duration::from_secs(20);

/// The success and failure counters of `/metrics` as (finish reason or type) -> count.
fn outcome_counters(m: &HashMap<String, f64>, name: &str, label: &str) -> Value {
    let prefix = format!("layerstream:{name}{{{label}=\"");
    let mut out = serde_json::Map::new();
    for (k, v) in m {
        if let Some(rest) = k.strip_prefix(&prefix) {
            let key = rest.trim_end_matches("\"}");
            out.insert(key.to_string(), json!(*v as u64));
        }
    }
    Value::Object(out)
}

#[test]
fn health_and_metrics_count_every_outcome_alike_under_a_mixed_load() {
    let model = tiny_model();
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--device",
            "cpu",
            "--max-num-seqs",
            "2",
            "--max-queue",
            "4",
            "--max-batch-tokens",
            "16",
        ],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "5")],
    );
    s.wait_ready(Duration::from_secs(30));
    let stream = |mut body: Value| {
        body["stream"] = json!(true);
        s.sse_post("/generate", &body, Duration::from_secs(60))
    };
    // Three that finish, one refused as invalid.
    for seed in 0..3 {
        let r = s.post_json(
            "/generate",
            &json!({"prompt": "hi", "max_tokens": 3, "seed": seed}),
        );
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(
        s.post_json("/generate", &json!({"prompt": "x", "max_tokens": 0}))
            .status,
        400
    );
    // A client that leaves while its prompt (chunks of 16 tokens, 5 ms a step) is computed.
    let mut prompt = stream(json!({"prompt": "word ".repeat(300), "max_tokens": 4}));
    assert_eq!(prompt.next_event().unwrap().event, "started");
    drop(prompt);
    s.wait_engine(
        "the prompt was not cancelled",
        |e| e["cancelled"] == 1 && e["running"] == 0,
        WAIT,
    );
    // Two that decode for a while, one queued behind them that leaves, and an n = 8 request
    // refused because the queue has no room for all of its choices.
    let long = |seed: u64| stream(json!({"prompt": "go", "max_tokens": 200, "seed": seed}));
    let (mut a, b) = (long(1), long(2));
    s.wait_engine("the two never ran", |e| e["running"] == 2, WAIT);
    let queued = stream(json!({"prompt": "wait", "max_tokens": 4}));
    s.wait_engine("never queued", |e| e["queued"] == 1, WAIT);
    let many = s.post_json(
        "/v1/completions",
        &json!({"prompt": "many", "n": 8, "max_tokens": 2}),
    );
    assert_eq!(many.status, 429, "{}", many.text());
    drop(queued);
    s.wait_engine(
        "the queued client was not dropped",
        |e| e["queued"] == 0,
        WAIT,
    );
    // Both leave while decoding (200 tokens take a second): four clients left in all, one
    // during its prompt, one queued, two decoding.
    assert_eq!(a.next_event().unwrap().event, "started");
    a.next_event().unwrap();
    drop(a);
    drop(b);
    let e = s.wait_engine(
        "never went idle",
        |e| e["running"] == 0 && e["queued"] == 0 && e["cancelled"] == 4,
        WAIT,
    );
    let m = scrape(&s);
    let finished = outcome_counters(&m, "request_success_total", "finished_reason");
    let failed = outcome_counters(&m, "request_failure_total", "type");
    // The metric's failures are the engine's failures and the refusals before it, by type.
    let mut both = e["outcomes"]["failed"].as_object().unwrap().clone();
    for (k, v) in e["outcomes"]["refused"].as_object().unwrap() {
        let n = both.get(k).and_then(Value::as_u64).unwrap_or(0) + v.as_u64().unwrap();
        both.insert(k.clone(), json!(n));
    }
    assert_eq!(e["outcomes"]["finished"], finished, "{e}");
    assert_eq!(Value::Object(both), failed, "{e}");
    assert_eq!(failed["queue_full"], 1, "{failed}");
    assert_eq!(failed["invalid_request"], 1, "{failed}");
    assert_eq!(failed["cancelled"], e["cancelled"], "{failed}");
    assert_eq!(e["refused"], 2, "{e}");
    assert_eq!(e["failed"], 0, "{e}");
    assert_eq!(e["finished"], 3, "{e}");
}
