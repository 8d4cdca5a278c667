//! The engine: one thread that owns the batch, the KV pool's bookkeeping and the backend's step
//! runner, fed by a queue; each request streams its events back over its own tokio channel.
//!
//! Reads as scheduler → batch → step → emit: every step `scheduler` picks the decode token of
//! each running sequence, chunks of prompts and newly admitted requests; `batch` flattens them;
//! the backend runs the step (each layer gated on the loader); `emit` samples, streams and
//! retires. `kv_pool` holds block ids and the prefix cache, `sequence` one request's state.
//! A closed event channel (the client left) drops the sequence at the next step, queued or
//! running. On shutdown queued requests are refused and running ones may finish until the drain
//! deadline, then end with an error.

mod batch;
mod emit;
pub mod kv_pool;
mod outbox;
pub mod outcomes;
mod scheduler;
mod sequence;
mod stats;
mod timing;
mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::backend::step::{BatchLimits, BatchRequest};
use crate::backend::Backend;
use crate::generation::{Generation, TokenEvent};
use crate::request::ValidRequest;
use crate::tokenizer::Tokenizer;

pub use outcomes::{OutcomeCounts, Outcomes};
pub use stats::{EngineStats, StatsSnapshot};
pub use worker::STEP_DELAY_ENV;

/// Positions per KV block.
pub const BLOCK_SIZE: usize = 16;

/// One request handed to the engine.
pub struct Job {
    pub id: String,
    /// The request it belongs to (its `n` choices share it); set by `submit_all`.
    pub group: u64,
    pub request: ValidRequest,
    pub prompt: Vec<u32>,
    pub enqueued: Instant,
    pub events: mpsc::UnboundedSender<EngineEvent>,
}

/// What the engine reports about a job, in order: `Started`, any `Token`s, then exactly one of
/// `Done` or `Error`.
#[derive(Debug)]
pub enum EngineEvent {
    Started { queued_ms: f64 },
    Token(TokenEvent),
    Done(Box<Finished>),
    Error(EngineError),
}

/// Why the engine could not finish a request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("model loading failed: {0}")]
    LoadFailed(String),
    #[error("the server shut down before the request finished")]
    ShuttingDown,
    #[error("the model produced non-finite logits (NaN or infinity); its weights may be corrupt")]
    NonFinite,
    #[error("the request needs {needed} KV positions but the pool holds {capacity}")]
    TooLarge { needed: usize, capacity: usize },
    #[error("{0}")]
    Internal(String),
}

impl EngineError {
    /// Stable type, as the HTTP API names it.
    pub fn kind(&self) -> &'static str {
        match self {
            EngineError::LoadFailed(_) => "model_load_failed",
            EngineError::ShuttingDown => "shutting_down",
            EngineError::NonFinite => "non_finite_logits",
            EngineError::TooLarge { .. } => "invalid_request",
            EngineError::Internal(_) => "internal",
        }
    }
}

/// A completed generation and the time it spent queued and waiting for the loader.
#[derive(Debug)]
pub struct Finished {
    pub generation: Generation,
    pub queued_ms: f64,
    pub waited_for_load_ms: f64,
}

/// Why a job was not accepted.
#[derive(Debug, PartialEq, Eq)]
pub enum SubmitError {
    QueueFull,
    ShuttingDown,
}

/// Shared drain state: set once on shutdown.
#[derive(Debug, Default)]
pub struct Drain {
    draining: AtomicBool,
    deadline: Mutex<Option<Instant>>,
}

impl Drain {
    pub fn start(&self, deadline: Instant) {
        *self.deadline.lock() = Some(deadline);
        self.draining.store(true, Ordering::Release);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    pub fn past_deadline(&self) -> bool {
        self.is_draining() && self.deadline.lock().is_some_and(|d| Instant::now() >= d)
    }
}

/// What the engine thread needs.
pub struct EngineConfig {
    pub model: Arc<dyn Backend>,
    pub tokenizer: Arc<Tokenizer>,
    pub max_queue: usize,
    pub batch: BatchRequest,
    /// A request still running this long after it arrived ends with `time_limit`.
    pub request_timeout: Option<Duration>,
    /// Where how requests end is counted (shared with the HTTP side).
    pub outcomes: Arc<Outcomes>,
}

/// The handlers' side of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Job>,
    pub drain: Arc<Drain>,
    pub stats: Arc<EngineStats>,
    pub limits: BatchLimits,
    max_queue: usize,
    exit: Arc<EngineExit>,
    /// The next request's group id.
    next_group: Arc<std::sync::atomic::AtomicU64>,
}

/// How the engine thread is told to end and waited for at shutdown.
struct EngineExit {
    close: Sender<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// Reserve the KV pool and start the engine thread; returns the handle handlers submit to.
pub fn spawn(cfg: EngineConfig) -> Result<EngineHandle, String> {
    let limits = cfg.model.batch_limits(&cfg.batch);
    let runner = cfg
        .model
        .clone()
        .new_runner(&limits)
        .map_err(|e| format!("cannot reserve the KV pool: {e}"))?;
    tracing::info!(
        max_seqs = limits.max_seqs,
        max_batch_tokens = limits.max_batch_tokens,
        prefix_cache = limits.shared_blocks,
        "KV pool: {} tokens ({} blocks of {})",
        limits.kv.tokens(),
        limits.kv.num_blocks,
        limits.kv.block_size
    );
    let (tx, rx) = crossbeam_channel::unbounded();
    let (close_tx, close_rx) = crossbeam_channel::bounded(1);
    let drain = Arc::new(Drain::default());
    let stats = Arc::new(EngineStats::new(cfg.outcomes.clone()));
    let mut w = worker::Worker::new(
        cfg.model,
        cfg.tokenizer,
        runner,
        &limits,
        (drain.clone(), stats.clone()),
        (rx, close_rx),
    );
    w.request_timeout = cfg.request_timeout;
    let thread = std::thread::Builder::new()
        .name("engine".into())
        .spawn(move || w.run())
        .map_err(|e| format!("cannot start the engine thread: {e}"))?;
    Ok(EngineHandle {
        tx,
        drain,
        stats,
        limits,
        max_queue: cfg.max_queue.max(1),
        exit: Arc::new(EngineExit {
            close: close_tx,
            thread: Mutex::new(Some(thread)),
        }),
        next_group: Arc::default(),
    })
}

impl EngineHandle {
    /// Whether a submit would be refused now (checked before tokenizing, so a flood of requests
    /// gets cheap 429s instead of taking CPU from the engine).
    pub fn is_full(&self) -> bool {
        self.stats.is_full(self.max_queue)
    }

    /// End the engine thread (its sequences end with an error) and wait up to `wait` for it: its
    /// runner (device memory, streams) is released on that thread before the process exits.
    /// False when it did not end in time.
    pub fn close(&self, wait: Duration) -> bool {
        let _ = self.exit.close.try_send(());
        let Some(thread) = self.exit.thread.lock().take() else {
            return true;
        };
        let deadline = Instant::now() + wait;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = thread.join();
        true
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        self.submit_all(vec![job])
    }

    /// Submit the jobs of one request together: all of them, or none when the queue has no room
    /// for all (so a refused request leaves nothing behind to cancel or count).
    pub fn submit_all(&self, jobs: Vec<Job>) -> Result<(), SubmitError> {
        if self.drain.is_draining() {
            return Err(SubmitError::ShuttingDown);
        }
        if !self.stats.try_enqueue(self.max_queue, jobs.len()) {
            return Err(SubmitError::QueueFull);
        }
        let group = self.next_group.fetch_add(1, Ordering::Relaxed);
        let mut left = jobs.len();
        for mut job in jobs {
            job.group = group;
            if self.tx.send(job).is_err() {
                (0..left).for_each(|_| self.stats.dequeued());
                return Err(SubmitError::ShuttingDown);
            }
            left -= 1;
        }
        Ok(())
    }
}
