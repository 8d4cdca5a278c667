//! The engine: one thread that owns the model's sequences and runs requests, fed by a bounded
//! crossbeam queue; each request streams its events back over its own tokio channel.
//!
//! Requests run one at a time (batching comes later). A request whose event channel is closed
//! (the client left) is cancelled at its next token. On shutdown, queued requests are refused and
//! the running one may finish until the drain deadline, then ends with an error.

mod worker;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::generation::{Generation, TokenEvent};
use crate::request::ValidRequest;

pub use worker::{spawn, EngineConfig};

/// One request handed to the engine.
pub struct Job {
    pub id: String,
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
    Error { code: &'static str, message: String },
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

/// The handlers' side of the engine.
#[derive(Clone)]
pub struct EngineHandle {
    tx: Sender<Job>,
    pub drain: Arc<Drain>,
    exit: Arc<EngineExit>,
}

/// How the engine thread is told to end and waited for at shutdown.
struct EngineExit {
    close: Sender<()>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl EngineHandle {
    /// Whether a submit would be refused now (checked before tokenizing, so a flood of requests
    /// gets cheap 429s instead of taking CPU from the engine).
    pub fn is_full(&self) -> bool {
        self.tx.is_full()
    }

    /// End the engine thread once its current request is over, and wait up to `wait` for it: its
    /// sequence (device memory, streams) is released on that thread before the process exits.
    /// False when it did not end in time.
    pub fn close(&self, wait: std::time::Duration) -> bool {
        let _ = self.exit.close.try_send(());
        let Some(thread) = self.exit.thread.lock().take() else {
            return true;
        };
        let deadline = Instant::now() + wait;
        while !thread.is_finished() {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let _ = thread.join();
        true
    }

    pub fn submit(&self, job: Job) -> Result<(), SubmitError> {
        if self.drain.is_draining() {
            return Err(SubmitError::ShuttingDown);
        }
        self.tx.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => SubmitError::QueueFull,
            TrySendError::Disconnected(_) => SubmitError::ShuttingDown,
        })
    }
}
