//! The engine thread's loop: take a job, run it through the generation loop on the backend's
//! one session, stream its events.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use parking_lot::Mutex;

use super::{Drain, EngineEvent, EngineExit, EngineHandle, Finished, Job};
use crate::backend::{Backend, BackendError, Session};
use crate::generation::{self, Evaluator, FinishReason, GenerationError};
use crate::panic_message::panic_message;
use crate::tokenizer::Tokenizer;

/// What the engine thread needs.
pub struct EngineConfig {
    pub model: Arc<dyn Backend>,
    pub tokenizer: Arc<Tokenizer>,
    pub ctx_size: usize,
    pub max_queue: usize,
}

/// Start the engine thread; returns the handle handlers submit to (and shutdown closes).
pub fn spawn(cfg: EngineConfig) -> std::io::Result<EngineHandle> {
    let (tx, rx) = crossbeam_channel::bounded(cfg.max_queue.max(1));
    let (close_tx, close_rx) = crossbeam_channel::bounded(1);
    let drain = Arc::new(Drain::default());
    let thread = {
        let drain = drain.clone();
        std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || run(cfg, rx, close_rx, drain))?
    };
    Ok(EngineHandle {
        tx,
        drain,
        exit: Arc::new(EngineExit {
            close: close_tx,
            thread: Mutex::new(Some(thread)),
        }),
    })
}

/// Prompt tokens evaluated between checks for a departed client or the drain deadline.
const PROMPT_CHUNK: usize = 64;

/// Test-only: with `LAYERSTREAM_TEST_STEP_DELAY_MS=N` every generated token is held back N ms,
/// so that tests of long-running streams (shutdown drains) do not depend on how fast the device is.
pub const STEP_DELAY_ENV: &str = "LAYERSTREAM_TEST_STEP_DELAY_MS";

fn step_delay() -> Option<std::time::Duration> {
    let ms: u64 = std::env::var(STEP_DELAY_ENV).ok()?.parse().ok()?;
    (ms > 0).then(|| std::time::Duration::from_millis(ms))
}

struct Eval<'a> {
    session: &'a mut dyn Session,
    /// True when the job should stop (client gone, or shutdown deadline passed).
    stop: &'a dyn Fn() -> bool,
}

impl Evaluator for Eval<'_> {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        // A long prompt is fed in chunks so that a departed client or the shutdown deadline is
        // noticed within one chunk, not after the whole prompt.
        let (head, last) = tokens.split_at(
            tokens
                .len()
                .saturating_sub(PROMPT_CHUNK)
                .next_multiple_of(PROMPT_CHUNK)
                .min(tokens.len()),
        );
        // Decode steps (one token) are checked by the token callback instead.
        for chunk in head.chunks(PROMPT_CHUNK) {
            if (self.stop)() {
                return Err(BackendError::Interrupted);
            }
            self.session.eval(chunk)?;
        }
        if !head.is_empty() && (self.stop)() {
            return Err(BackendError::Interrupted);
        }
        self.session.eval(last)
    }
}

/// The next job, or None once the engine is closed (or every handle is gone).
fn next_job(rx: &Receiver<Job>, close: &Receiver<()>) -> Option<Job> {
    crossbeam_channel::select! {
        recv(rx) -> job => job.ok(),
        recv(close) -> _ => None,
    }
}

fn run(cfg: EngineConfig, rx: Receiver<Job>, close: Receiver<()>, drain: Arc<Drain>) {
    let mut session = match cfg.model.clone().new_session(cfg.ctx_size) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("the engine cannot open a sequence: {e}");
            while let Some(job) = next_job(&rx, &close) {
                let _ = job.events.send(EngineEvent::Error {
                    code: "internal",
                    message: format!("the engine cannot open a sequence: {e}"),
                });
            }
            return;
        }
    };
    // Off the request path: device objects are made while the weights are still landing.
    let t0 = std::time::Instant::now();
    match session.prepare() {
        Ok(()) => tracing::info!(
            "engine prepared in {:.0} ms",
            t0.elapsed().as_secs_f64() * 1e3
        ),
        Err(e) => tracing::warn!("engine preparation failed (the first request will retry): {e}"),
    }
    while let Some(job) = next_job(&rx, &close) {
        if job.events.is_closed() {
            continue;
        }
        if drain.is_draining() {
            let _ = job.events.send(EngineEvent::Error {
                code: "shutting_down",
                message: "the server is shutting down".into(),
            });
            continue;
        }
        // A panic in one request must not take the engine down for every later request.
        let events = job.events.clone();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_job(&cfg, session.as_mut(), &drain, job)
        }));
        if let Err(panic) = outcome {
            let cause = panic_message(&*panic);
            tracing::error!("request failed with an internal error: {cause}");
            let _ = events.send(EngineEvent::Error {
                code: "internal",
                message: format!("internal error: {cause}"),
            });
            session.reset();
        }
    }
}

fn run_job(cfg: &EngineConfig, session: &mut dyn Session, drain: &Drain, job: Job) {
    let queued_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
    let _ = job.events.send(EngineEvent::Started { queued_ms });
    session.reset();
    cfg.model.take_waited();
    let t0 = Instant::now();
    let mut shutdown = false;
    let stop = || job.events.is_closed() || drain.past_deadline();
    let mut eval = Eval {
        session,
        stop: &stop,
    };
    let delay = step_delay();
    let result = generation::generate(&mut eval, &cfg.tokenizer, &job.prompt, &job.request, |ev| {
        if let Some(d) = delay {
            std::thread::sleep(d);
        }
        if drain.past_deadline() {
            shutdown = true;
            return false;
        }
        job.events.send(EngineEvent::Token(ev.clone())).is_ok()
    });
    let waited_for_load_ms = cfg.model.take_waited().as_secs_f64() * 1e3;
    let interrupted = matches!(
        result,
        Err(GenerationError::Backend(BackendError::Interrupted))
    );
    if interrupted && job.events.is_closed() {
        tracing::info!(id = %job.id, "request cancelled during the prompt: client disconnected");
        return;
    }
    let event = match result {
        Ok(_) if shutdown => EngineEvent::Error {
            code: "shutting_down",
            message: "the server shut down before the request finished".into(),
        },
        Ok(g) if g.finish_reason == FinishReason::Cancelled => {
            tracing::info!(id = %job.id, tokens = g.token_ids.len(), "request cancelled: client disconnected");
            return;
        }
        Ok(generation) => {
            tracing::info!(
                id = %job.id,
                prompt_tokens = generation.usage.prompt_tokens,
                completion_tokens = generation.usage.completion_tokens,
                ms = t0.elapsed().as_millis() as u64,
                "request done"
            );
            EngineEvent::Done(Box::new(Finished {
                generation,
                queued_ms,
                waited_for_load_ms,
            }))
        }
        Err(GenerationError::Backend(BackendError::LoadFailed(m))) => EngineEvent::Error {
            code: "model_load_failed",
            message: m,
        },
        Err(GenerationError::Backend(BackendError::Interrupted)) => EngineEvent::Error {
            code: "shutting_down",
            message: "the server shut down before the request finished".into(),
        },
        Err(e) => EngineEvent::Error {
            code: "internal",
            message: e.to_string(),
        },
    };
    let _ = job.events.send(event);
}
