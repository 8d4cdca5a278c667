//! `scripts/soak` for 60 s against the real binary on a tiny random model (CPU): 8 clients mix
//! normal, streamed, cancelled (mid-stream and before the answer), oversized, invalid and
//! over-context requests with `/health` and `/load-progress`. The script's `--json` summary must
//! say: every kind was sent, 0 unexpected 5xx, 0 requests without a response, 0 other unexpected
//! answers, RSS growth after the warm-up within the bound, the engine drained with every KV block
//! free, and the server exited 0 on SIGTERM.

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::ffi::OsString;

use common::{describe, run_script, TempDir};
use serde_json::Value;

/// The request kinds the script must exercise.
const KINDS: [&str; 9] = [
    "normal",
    "stream",
    "cancel_stream",
    "cancel_request",
    "oversized",
    "invalid",
    "over_context",
    "health",
    "load_progress",
];
const SECONDS: u32 = 60;
const RSS_GROWTH_MB: f64 = 64.0;

fn num(v: &Value, path: &str) -> f64 {
    v.pointer(path)
        .and_then(Value::as_f64)
        .unwrap_or_else(|| panic!("no number at {path} in the soak summary"))
}

#[test]
fn soak_mixed_clients_for_a_minute_without_errors_leaks_or_stuck_requests() {
    let tmp = TempDir::new("soak");
    let report = tmp.0.join("soak.json");
    let log = tmp.0.join("server.log");
    let args: Vec<OsString> = vec![
        "--layerstream-bin".into(),
        harness::binary().into(),
        "--model".into(),
        harness::tiny_model().into(),
        "--device".into(),
        "cpu".into(),
        "--clients".into(),
        "8".into(),
        "--seconds".into(),
        SECONDS.to_string().into(),
        "--rss-growth-mb".into(),
        RSS_GROWTH_MB.to_string().into(),
        "--server-log".into(),
        log.into(),
        "--json".into(),
        report.clone().into(),
    ];
    let o = run_script("soak", &args);
    let out = describe(&o);
    assert!(o.status.success(), "soak failed: {out}");
    eprintln!("{}", String::from_utf8_lossy(&o.stdout));

    let text = std::fs::read_to_string(&report).expect("the --json summary");
    let s: Value = serde_json::from_str(&text).expect("the summary is JSON");
    assert_eq!(s["verdict"], "pass", "{text}");
    assert_eq!(s["failures"].as_array().map(Vec::len), Some(0), "{text}");
    assert_eq!(num(&s, "/unexpected_5xx"), 0.0, "unexpected 5xx: {text}");
    assert_eq!(
        num(&s, "/no_response"),
        0.0,
        "requests without a response: {text}"
    );
    assert_eq!(num(&s, "/unexpected"), 0.0, "unexpected answers: {text}");
    assert_eq!(num(&s, "/stuck_clients"), 0.0, "{text}");
    assert!(num(&s, "/run_s") >= f64::from(SECONDS), "{text}");
    assert!(
        num(&s, "/requests") >= 100.0,
        "too few requests for a soak: {text}"
    );
    assert!(num(&s, "/completion_tokens") > 0.0, "{text}");

    // Every kind was sent, and answered the way it should be at least once.
    for kind in KINDS {
        let total = s["kinds"][kind]["total"].as_f64().unwrap_or(0.0);
        let ok = s["kinds"][kind]["ok"].as_f64().unwrap_or(0.0);
        assert!(
            total >= 1.0 && ok >= 1.0,
            "kind {kind} not exercised: {text}"
        );
    }
    let kinds = &s["kinds"];
    assert!(
        kinds["oversized"]["status_413"].as_f64().unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        kinds["invalid"]["status_400"].as_f64().unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        kinds["over_context"]["status_400"].as_f64().unwrap_or(0.0) >= 1.0,
        "{text}"
    );
    assert!(
        kinds["stream"]["status_200"].as_f64().unwrap_or(0.0) >= 1.0,
        "{text}"
    );

    // Memory: sampled throughout, and flat after the warm-up.
    assert_eq!(s["rss"]["checked"], true, "RSS not checked: {text}");
    assert!(
        num(&s, "/rss/samples") >= f64::from(SECONDS) / 2.0,
        "{text}"
    );
    let growth = num(&s, "/rss/growth_mb");
    assert!(
        growth <= RSS_GROWTH_MB,
        "RSS grew {growth} MB after the warm-up: {text}"
    );

    // Nothing left behind: the engine drained and every KV block is free again.
    assert_eq!(s["drained"], true, "{text}");
    assert_eq!(num(&s, "/kv_blocks_used"), 0.0, "{text}");
    for counter in ["queued", "running", "waiting", "kv_blocks_used", "failed"] {
        assert_eq!(
            num(&s, &format!("/engine_final/{counter}")),
            0.0,
            "engine {counter}: {text}"
        );
    }
    assert!(num(&s, "/engine_final/finished") > 0.0, "{text}");

    // SIGTERM → exit 0 within the script's 15 s.
    assert_eq!(num(&s, "/server_exit/status"), 0.0, "{text}");
}
