//! The engine thread's loop: take a job, run it through the generation loop on the CPU backend,
//! stream its events.

use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::Receiver;

use super::{Drain, EngineEvent, EngineHandle, Finished, Job};
use crate::backend::cpu::{CpuModel, CpuSession, DEFAULT_MAX_BATCH};
use crate::backend::BackendError;
use crate::generation::{self, Evaluator, FinishReason, GenerationError};
use crate::tokenizer::Tokenizer;

/// What the engine thread needs.
pub struct EngineConfig {
    pub model: Arc<CpuModel>,
    pub tokenizer: Arc<Tokenizer>,
    pub ctx_size: usize,
    pub max_queue: usize,
}

/// Start the engine thread; returns the handle handlers submit to.
pub fn spawn(cfg: EngineConfig) -> std::io::Result<(EngineHandle, std::thread::JoinHandle<()>)> {
    let (tx, rx) = crossbeam_channel::bounded(cfg.max_queue.max(1));
    let drain = Arc::new(Drain::default());
    let handle = EngineHandle {
        tx,
        drain: drain.clone(),
    };
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || run(cfg, rx, drain))?;
    Ok((handle, thread))
}

struct Eval<'a> {
    model: &'a CpuModel,
    session: &'a mut CpuSession,
}

impl Evaluator for Eval<'_> {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        self.session.eval(&self.model.hp, self.model, tokens)
    }
}

fn run(cfg: EngineConfig, rx: Receiver<Job>, drain: Arc<Drain>) {
    let mut session = CpuSession::new(&cfg.model.hp, cfg.ctx_size, DEFAULT_MAX_BATCH);
    while let Ok(job) = rx.recv() {
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
        run_job(&cfg, &mut session, &drain, job);
    }
}

fn run_job(cfg: &EngineConfig, session: &mut CpuSession, drain: &Drain, job: Job) {
    let queued_ms = job.enqueued.elapsed().as_secs_f64() * 1e3;
    let _ = job.events.send(EngineEvent::Started { queued_ms });
    session.reset();
    cfg.model.take_waited();
    let t0 = Instant::now();
    let mut shutdown = false;
    let mut eval = Eval {
        model: &cfg.model,
        session,
    };
    let result = generation::generate(&mut eval, &cfg.tokenizer, &job.prompt, &job.request, |ev| {
        if drain.past_deadline() {
            shutdown = true;
            return false;
        }
        job.events.send(EngineEvent::Token(ev.clone())).is_ok()
    });
    let waited_for_load_ms = cfg.model.take_waited().as_secs_f64() * 1e3;
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
            message: "the server shut down while the request waited for the model to load".into(),
        },
        Err(e) => EngineEvent::Error {
            code: "internal",
            message: e.to_string(),
        },
    };
    let _ = job.events.send(event);
}
