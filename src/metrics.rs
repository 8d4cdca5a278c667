//! Prometheus metrics (`GET /metrics`), named `layerstream:` and modelled on vLLM's where the
//! meaning is the same. Counters and histograms are recorded where things happen (the engine's
//! emit step) through the `metrics` facade; gauges of state (the batch, the KV pool, the load
//! timeline) are set from snapshots when the page is rendered. Without an installed recorder
//! (tests of the library, the CLI) every record is a no-op.

use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::engine::{OutcomeCounts, StatsSnapshot};
use crate::load::progress::ProgressSnapshot;

pub const TTFT: &str = "layerstream:time_to_first_token_seconds";
pub const ITL: &str = "layerstream:inter_token_latency_seconds";
pub const E2E: &str = "layerstream:e2e_request_latency_seconds";
pub const QUEUE: &str = "layerstream:request_queue_time_seconds";
pub const PROMPT_TOKENS: &str = "layerstream:prompt_tokens_total";
pub const GENERATION_TOKENS: &str = "layerstream:generation_tokens_total";
pub const SUCCESS: &str = "layerstream:request_success_total";
pub const FAILURE: &str = "layerstream:request_failure_total";
pub const PREFIX_QUERIES: &str = "layerstream:prefix_cache_queries_total";
pub const PREFIX_HITS: &str = "layerstream:prefix_cache_hits_total";

/// Latency buckets (seconds) for the request histograms.
const REQUEST_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for the gap between two tokens of a sequence.
const TOKEN_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5,
];

/// Install the process-wide recorder; returns the handle `/metrics` renders from.
pub fn install() -> Result<PrometheusHandle, String> {
    let b = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(ITL.into()), &TOKEN_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Prefix("layerstream:".into()), &REQUEST_BUCKETS)
        })
        .map_err(|e| format!("metrics buckets: {e}"))?;
    let handle = b
        .install_recorder()
        .map_err(|e| format!("cannot install the metrics recorder: {e}"))?;
    gauge!("layerstream:build_info", "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("LAYERSTREAM_COMMIT")).set(1.0);
    Ok(handle)
}

/// A request's first token, `since_arrival` after it arrived.
pub fn first_token(since_arrival: Duration) {
    histogram!(TTFT).record(since_arrival.as_secs_f64());
}

/// The gap between two tokens of a sequence.
pub fn token_gap(gap: Duration) {
    histogram!(ITL).record(gap.as_secs_f64());
}

/// A prompt admitted for the first time: its tokens, and how many came from the prefix cache.
pub fn admitted(prompt_tokens: usize, cached_tokens: usize, queued: Duration) {
    counter!(PROMPT_TOKENS).increment(prompt_tokens as u64);
    counter!(PREFIX_QUERIES).increment(prompt_tokens as u64);
    counter!(PREFIX_HITS).increment(cached_tokens as u64);
    histogram!(QUEUE).record(queued.as_secs_f64());
}

/// A request that ended with a result (counted by reason in `engine::Outcomes`).
pub fn finished(generated: usize, e2e: Duration) {
    counter!(GENERATION_TOKENS).increment(generated as u64);
    histogram!(E2E).record(e2e.as_secs_f64());
}

/// The success and failure counters, set from the one count `/health` reads too.
fn outcomes(o: &OutcomeCounts) {
    for (&reason, &n) in &o.finished {
        counter!(SUCCESS, "finished_reason" => reason).absolute(n);
    }
    for (kind, n) in o.failures() {
        counter!(FAILURE, "type" => kind).absolute(n);
    }
}

/// Set the state gauges and the outcome counters, then render the page.
pub fn render(
    handle: &PrometheusHandle,
    engine: Option<&StatsSnapshot>,
    counts: &OutcomeCounts,
    load: &ProgressSnapshot,
) -> String {
    outcomes(counts);
    if let Some(e) = engine {
        gauge!("layerstream:num_requests_running").set(e.running as f64);
        gauge!("layerstream:num_requests_waiting").set(e.waiting as f64);
        let usage = e.kv_blocks_used as f64 / e.kv_blocks_total.max(1) as f64;
        gauge!("layerstream:kv_cache_usage_perc").set(usage);
        gauge!("layerstream:kv_cache_blocks_total").set(e.kv_blocks_total as f64);
        gauge!("layerstream:num_preemptions").set(e.preemptions as f64);
    }
    gauge!("layerstream:load_ready_seconds").set(load.ready_ms.map_or(f64::NAN, |m| m / 1e3));
    gauge!("layerstream:load_resident_seconds").set(load.resident_ms.map_or(f64::NAN, |m| m / 1e3));
    gauge!("layerstream:units_resident").set(load.units_resident as f64);
    gauge!("layerstream:units_total").set(load.units_total as f64);
    gauge!("layerstream:bytes_resident").set(load.bytes_resident as f64);
    gauge!("layerstream:bytes_total").set(load.bytes_total as f64);
    handle.render()
}
