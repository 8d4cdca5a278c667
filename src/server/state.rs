//! What every handler shares: load progress, and — once the tokenizer is built — the runtime that
//! takes requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use crate::chat_template::ChatTemplate;
use crate::engine::EngineHandle;
use crate::load::progress::Progress;
use crate::request::Limits;
use crate::tokenizer::Tokenizer;

/// Built after the listener is bound, before READY.
pub struct Runtime {
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    pub engine: EngineHandle,
    pub limits: Limits,
}

pub struct AppState {
    pub progress: Arc<Progress>,
    /// Set once the server is stopping; long-lived streams end on it.
    pub stopping: watch::Receiver<bool>,
    pub runtime: OnceLock<Runtime>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(progress: Arc<Progress>, stopping: watch::Receiver<bool>) -> AppState {
        AppState {
            progress,
            stopping,
            runtime: OnceLock::new(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn request_id(&self) -> String {
        format!("req-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}
