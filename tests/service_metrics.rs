//! `GET /metrics` on the real binary: Prometheus text whose counters, histograms and gauges agree
//! with the requests the test made (tokens, successes, failures by type, time to first token,
//! prefix-cache hits), the batch and KV-pool state, and the load timeline.

#[path = "common/harness.rs"]
mod harness;

use std::collections::HashMap;
use std::time::Duration;

use harness::{tiny_model, token_ids, Server};
use serde_json::json;

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
