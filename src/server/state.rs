//! What every handler shares: load progress, and — once the tokenizer is built — the runtime that
//! takes requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::watch;

use super::access::AccessPolicy;
use super::answer_size::AnswerCap;
use crate::chat_template::ChatTemplate;
use crate::engine::{EngineHandle, Outcomes};
use crate::load::progress::Progress;
use crate::request::Limits;
use crate::tokenizer::Tokenizer;

/// Built after the listener is bound, before READY.
pub struct Runtime {
    pub tokenizer: Arc<Tokenizer>,
    pub template: Arc<ChatTemplate>,
    pub engine: EngineHandle,
    pub limits: Limits,
    /// The limit on a whole answer's size, and the vocabulary's per-token bounds.
    pub answer_cap: AnswerCap,
}

/// What `/v1/models` says about the model served.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    /// `--model-name`, or the file name without `.gguf`.
    pub id: String,
    /// Seconds since the Unix epoch when the service started.
    pub created: u64,
    /// Positions one sequence may hold.
    pub ctx: usize,
}

pub struct AppState {
    pub model: ModelInfo,
    pub progress: Arc<Progress>,
    /// Set once the server is stopping; long-lived streams end on it.
    pub stopping: watch::Receiver<bool>,
    pub runtime: OnceLock<Runtime>,
    /// The Prometheus recorder's handle (`GET /metrics`), once installed.
    pub metrics: OnceLock<metrics_exporter_prometheus::PrometheusHandle>,
    /// How long a request body may take to arrive.
    pub body_timeout: std::time::Duration,
    /// API key, allowed hosts and origins.
    pub access: AccessPolicy,
    /// How requests ended: refusals counted here, the rest by the engine (which shares it).
    pub outcomes: Arc<Outcomes>,
    next_id: AtomicU64,
}

impl AppState {
    pub fn new(
        progress: Arc<Progress>,
        stopping: watch::Receiver<bool>,
        body_timeout: std::time::Duration,
        model: ModelInfo,
        access: AccessPolicy,
    ) -> AppState {
        AppState {
            model,
            progress,
            stopping,
            runtime: OnceLock::new(),
            metrics: OnceLock::new(),
            body_timeout,
            access,
            outcomes: Arc::default(),
            next_id: AtomicU64::new(1),
        }
    }

    pub fn request_id(&self) -> String {
        format!("req-{}", self.next_id.fetch_add(1, Ordering::Relaxed))
    }
}
