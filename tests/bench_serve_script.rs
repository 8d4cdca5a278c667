//! `scripts/bench-serve` end to end: the script starts the real binary on a tiny random model (CPU),
//! runs 2 clients × 2 streamed requests through `/generate` from 2 load processes with
//! `ignore_eos`, stops the server, and its `--json` report must say 4 requests ok, 0 failed,
//! exactly 4 × 8 tokens and finite TTFT percentiles. `scripts/compare-concurrency` must find
//! greedy requests identical alone and at once (the CPU's rows never depend on each other).

mod common;
#[path = "common/harness.rs"]
mod harness;

use std::ffi::OsString;
use std::path::Path;

use common::{describe, run_script, TempDir};

/// The number after the first `"key":` in `json`; panics when it is absent or not a number
/// (the script writes `null` for a percentile of no samples).
fn json_number(json: &str, key: &str) -> f64 {
    let pattern = format!("\"{key}\":");
    let start = json
        .find(&pattern)
        .unwrap_or_else(|| panic!("no {key} in {json}"))
        + pattern.len();
    let rest = json[start..].trim_start();
    let end = rest
        .find(|c: char| !(c.is_ascii_digit() || "+-.eE".contains(c)))
        .unwrap_or(rest.len());
    rest[..end]
        .parse()
        .unwrap_or_else(|_| panic!("{key} is not a number in {json}"))
}

/// A script's arguments: the real binary, the tiny model, a JSON report at `report`, then `extra`.
fn script_args(report: &Path, extra: &[&str]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![
        "--layerstream-bin".into(),
        harness::binary().into(),
        "--model".into(),
        harness::tiny_model().into(),
        "--json".into(),
        report.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    args
}

#[test]
fn bench_serve_starts_the_server_and_reports_every_request() {
    let tmp = TempDir::new("bench-serve");
    let report = tmp.0.join("out.json");
    let args = script_args(
        &report,
        &[
            "--device",
            "cpu",
            "--clients",
            "2",
            "--requests",
            "2",
            "--max-tokens",
            "8",
            "--procs",
            "2",
            "--ignore-eos",
            "--ready-timeout",
            "60",
            "--timeout",
            "120",
        ],
    );
    let o = run_script("bench-serve", &args);
    assert!(o.status.success(), "bench-serve failed: {}", describe(&o));

    let json = std::fs::read_to_string(&report).expect("the --json report");
    assert_eq!(
        json.matches("\"requests_ok\":").count(),
        1,
        "one run: {json}"
    );
    // `settings` comes first and has its own `clients` (the list); read the run's row.
    let run = &json[json.find("\"runs\":").expect("a runs list")..];
    assert_eq!(json_number(run, "clients"), 2.0, "{json}");
    assert_eq!(json_number(run, "requests_ok"), 4.0, "{json}");
    assert_eq!(json_number(run, "requests_failed"), 0.0, "{json}");
    assert_eq!(json_number(run, "warmup_failed"), 0.0, "{json}");
    assert_eq!(json_number(run, "completion_tokens"), 32.0, "{json}");
    assert!(json_number(run, "tok_per_s") > 0.0, "{json}");
    let p50 = json_number(run, "ttft_ms_p50");
    let p99 = json_number(run, "ttft_ms_p99");
    assert!(p50.is_finite() && p50 > 0.0, "{json}");
    assert!(p99.is_finite() && p99 >= p50, "{json}");
}

#[test]
fn compare_concurrency_finds_the_cpus_greedy_requests_identical() {
    let tmp = TempDir::new("compare-concurrency");
    let report = tmp.0.join("out.json");
    let args = script_args(
        &report,
        &[
            "--device",
            "cpu",
            "--requests",
            "8",
            "--max-tokens",
            "8",
            "--require-identical",
        ],
    );
    let o = run_script("compare-concurrency", &args);
    assert!(
        o.status.success(),
        "compare-concurrency failed: {}",
        describe(&o)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("8 of 8 greedy requests identical"),
        "{}",
        describe(&o)
    );
    let json = std::fs::read_to_string(&report).expect("the --json report");
    assert_eq!(
        json.matches("\"first_difference\": null").count(),
        8,
        "{json}"
    );
}
