//! Graceful shutdown on SIGTERM: the listener closes at once (new connections are refused), the
//! running request finishes — or ends with an `error` event once the 10 s drain is over — queued
//! requests are refused, and the process exits 0.

#[path = "common/harness.rs"]
mod harness;

use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::{assert_error, gen_model, tiny_model, Server, SseEvent};
use serde_json::json;

/// The drain window `serve` grants running requests after SIGTERM.
const DRAIN: Duration = Duration::from_secs(10);

/// One sequence at a time (so a second request queues behind the first), each step held back
/// 2 ms by the engine's test hook (so a 600-token stream lasts over a second on any device).
fn spawn_tiny() -> Arc<Server> {
    let model = tiny_model();
    let s = Server::spawn(
        &["--model", model.to_str().unwrap(), "--max-num-seqs", "1"],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "2")],
    );
    s.wait_ready(Duration::from_secs(30));
    Arc::new(s)
}

/// Start a streamed generation of `max_tokens`; returns once its first token arrived, with a
/// thread that reads the rest.
fn start_stream(s: &Server, max_tokens: usize) -> std::thread::JoinHandle<Vec<SseEvent>> {
    let body = json!({"prompt": "Write on and on", "max_tokens": max_tokens, "temperature": 0.9, "seed": 5, "stream": true});
    let mut sse = s.sse_post("/generate", &body, Duration::from_secs(60));
    assert_eq!(sse.status, 200);
    let mut head = vec![sse.next_event().unwrap(), sse.next_event().unwrap()];
    assert_eq!(head[0].event, "started");
    assert_eq!(head[1].event, "token");
    std::thread::spawn(move || {
        head.extend(sse.collect_all());
        head
    })
}

/// Poll until a new connection is refused; returns when that was seen. A connect that races the
/// listener's close is reset rather than refused: both mean it was not accepted.
fn wait_refused(s: &Server, timeout: Duration) -> Instant {
    use std::io::ErrorKind::{ConnectionRefused, ConnectionReset};
    let deadline = Instant::now() + timeout;
    loop {
        if let Err(e) = TcpStream::connect(&s.addr) {
            assert!(
                matches!(e.kind(), ConnectionRefused | ConnectionReset),
                "{e}"
            );
            return Instant::now();
        }
        assert!(
            Instant::now() < deadline,
            "new connections still accepted {timeout:?} after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sigterm_lets_the_running_stream_finish_refuses_new_work_and_exits_0() {
    let s = spawn_tiny();
    let reader = start_stream(&s, 600);
    // A second request waits in the queue behind the stream.
    let queued = {
        let s = s.clone();
        std::thread::spawn(move || {
            s.post_json("/generate", &json!({"prompt": "queued", "max_tokens": 4}))
        })
    };
    std::thread::sleep(Duration::from_millis(100));
    let term_at = Instant::now();
    s.terminate();
    let refused_at = wait_refused(&s, Duration::from_secs(3));
    let events = reader.join().unwrap();
    let last = events.last().unwrap();
    assert!(
        last.at > refused_at,
        "the stream ended before the listener closed; nothing was drained"
    );
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    match last.event.as_str() {
        "end" => {
            let end = harness::assert_generation_stream(&events);
            assert_eq!(harness::token_ids(&end).len(), 600, "{names:?}");
        }
        "error" => {
            // Allowed only when the request outlived the drain window.
            assert!(
                last.at - term_at >= DRAIN,
                "error before the drain ended: {:?}",
                last.data
            );
            assert_eq!(last.data["code"], "shutting_down", "{:?}", last.data);
        }
        other => panic!("stream ended with {other}: {names:?}"),
    }
    let r = queued.join().unwrap();
    assert_error(&r, 503, "shutting_down");
    let status = s
        .wait_exit(DRAIN + Duration::from_secs(5))
        .expect("still running");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_stream_longer_than_the_drain_window_ends_with_an_error_event_then_exit_0() {
    // 4000 tokens held back 5 ms each (the engine's test hook) take 20 s on any device, so the
    // stream is still running when the 10 s window closes.
    let wide = gen_model(
        "wide-head",
        &[
            "--layers",
            "2",
            "--hidden",
            "256",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--ffn",
            "256",
        ],
    );
    let s = Arc::new(Server::spawn(
        &["--model", wide.to_str().unwrap()],
        &[("LAYERSTREAM_TEST_STEP_DELAY_MS", "5")],
    ));
    s.wait_ready(Duration::from_secs(30));
    let reader = start_stream(&s, 4000);
    let term_at = Instant::now();
    s.terminate();
    wait_refused(&s, Duration::from_secs(3));
    let events = reader.join().unwrap();
    let last = events.last().unwrap();
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert_eq!(last.event, "error", "{names:?}");
    assert_eq!(last.data["code"], "shutting_down", "{:?}", last.data);
    assert_eq!(names.iter().filter(|n| **n == "end").count(), 0);
    let after = last.at - term_at;
    assert!(
        after >= DRAIN - Duration::from_millis(500) && after < DRAIN + Duration::from_secs(5),
        "error event {after:?} after SIGTERM; the drain window is {DRAIN:?}"
    );
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("still running after the drain");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn sigterm_on_an_idle_server_exits_0_promptly() {
    let s = spawn_tiny();
    s.terminate();
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(TcpStream::connect(&s.addr).is_err());
    s.wait_for_log("shut down", Duration::from_secs(1));
}

#[test]
fn sigterm_while_loading_exits_0_promptly() {
    let model = tiny_model();
    // ~0.5 MB/s: the embeddings alone take tens of seconds.
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "0.5",
        ],
        &[],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while s
        .try_request("GET", "/live", &[], b"")
        .map(|r| r.status)
        .ok()
        != Some(200)
    {
        assert!(Instant::now() < deadline, "/live never answered 200");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(s.get("/health").status, 503);
    s.terminate();
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

/// Eight layers of ~6.3 MB (FFN 32768) behind ~9.7 MB of embeddings (hidden 32): at 4 MB/s READY
/// comes after ~4 s and the head only ~13 s later.
fn slow_tail_model() -> std::path::PathBuf {
    gen_model(
        "slow-tail",
        &[
            "--layers",
            "8",
            "--hidden",
            "32",
            "--heads",
            "4",
            "--kv-heads",
            "2",
            "--ffn",
            "32768",
        ],
    )
}

#[test]
fn a_stream_gated_on_a_slow_load_at_sigterm_ends_with_an_error_event_after_the_drain() {
    let model = slow_tail_model();
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "4",
        ],
        &[],
    );
    s.wait_ready(Duration::from_secs(30));
    let body = json!({"prompt": "hi", "max_tokens": 5, "stream": true});
    let mut sse = s.sse_post("/generate", &body, Duration::from_secs(30));
    assert_eq!(sse.status, 200);
    assert_eq!(sse.next_event().unwrap().event, "started");
    let term_at = Instant::now();
    s.terminate();
    // The request waits for layers that land after the drain window: it must still end with a
    // terminal event, not a cut connection.
    let mut events = Vec::new();
    let outcome = loop {
        match sse.try_next_event() {
            Ok(Some(e)) => events.push(e),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    let names: Vec<&str> = events.iter().map(|e| e.event.as_str()).collect();
    assert!(
        outcome.is_ok(),
        "the stream was cut {:?} after SIGTERM without a terminal event ({names:?}): {:?}",
        term_at.elapsed(),
        outcome
    );
    let last = events.last().expect("no event after started");
    assert_eq!(last.event, "error", "{names:?}");
    assert_eq!(last.data["code"], "shutting_down", "{:?}", last.data);
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("still running after the drain");
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[test]
fn a_load_progress_watcher_does_not_hold_up_shutdown() {
    let model = tiny_model();
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "0.5",
        ],
        &[],
    );
    let mut sse = s.sse_get("/load-progress", Duration::from_secs(30));
    assert_eq!(sse.status, 200);
    let first = sse.next_event().expect("no progress event");
    assert_eq!(first.data["state"], "loading", "{:?}", first.data);
    s.terminate();
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("an open /load-progress stream kept the process alive 5 s after SIGTERM");
    assert_eq!(status.code(), Some(0), "{status:?}");
    // The stream was ended properly, not cut inside its body.
    let rest: Result<Vec<SseEvent>, _> =
        std::iter::from_fn(|| sse.try_next_event().transpose()).collect();
    assert!(rest.is_ok(), "the progress stream was cut: {rest:?}");
}

#[test]
fn sigterm_right_after_listening_exits_0() {
    let model = tiny_model();
    // Slow load: the service is still starting (tokenizer, embeddings) when the signal comes.
    let s = Server::spawn(
        &[
            "--model",
            model.to_str().unwrap(),
            "--load-bandwidth-limit",
            "0.5",
        ],
        &[],
    );
    s.terminate();
    let status = s
        .wait_exit(Duration::from_secs(5))
        .expect("still running 5 s after SIGTERM");
    assert_eq!(
        status.code(),
        Some(0),
        "SIGTERM during startup killed the process instead of shutting it down: {status:?}"
    );
}
