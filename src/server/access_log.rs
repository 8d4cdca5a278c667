//! The access log: one INFO event per request on target `layerstream::access` — request id,
//! method, path, status, duration and, for a generation, its token counts — written when the
//! response body ends (a stream's tokens are known only then). Never the prompt or a header.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use hyper::Method;

use crate::generation::Usage;

/// A request's token counts, set by its handler once the generation is done.
#[derive(Debug, Default)]
pub struct TokenCount(OnceLock<(usize, usize)>);

impl TokenCount {
    pub fn record(&self, usage: &Usage) {
        let _ = self.0.set((usage.prompt_tokens, usage.completion_tokens));
    }
}

/// A request being answered.
pub struct Exchange {
    /// Also the engine job's id and the `X-Request-Id` header.
    pub id: String,
    pub tokens: Arc<TokenCount>,
    /// Set once its jobs are with the engine, which counts how they end from then on.
    submitted: AtomicBool,
    method: Method,
    path: String,
    started: Instant,
}

/// Paths are logged up to this many bytes (an unknown path can be long).
const MAX_PATH: usize = 200;

impl Exchange {
    pub fn begin(id: String, method: &Method, path: &str) -> Exchange {
        let mut cut = path.len().min(MAX_PATH);
        while !path.is_char_boundary(cut) {
            cut -= 1;
        }
        Exchange {
            id,
            tokens: Arc::default(),
            submitted: AtomicBool::new(false),
            method: method.clone(),
            path: path[..cut].to_string(),
            started: Instant::now(),
        }
    }

    /// Its jobs were handed to the engine.
    pub fn submitted(&self) {
        self.submitted.store(true, Ordering::Relaxed);
    }

    /// Whether an error answered now was refused before the engine had the request (and so
    /// is counted by the HTTP side, not by the engine).
    pub fn refused_before_engine(&self) -> bool {
        !self.submitted.load(Ordering::Relaxed)
    }

    /// The response's status is known: the line is written when the returned value drops.
    pub fn answered(self, status: u16) -> Pending {
        // A HEAD response has no body to end.
        let ended = AtomicBool::new(self.method == Method::HEAD);
        Pending {
            exchange: self,
            status,
            ended,
        }
    }
}

/// A response whose body has not finished yet; logs the request when dropped.
pub struct Pending {
    exchange: Exchange,
    status: u16,
    ended: AtomicBool,
}

impl Pending {
    /// The body was sent to its end (dropped without it: the client left first).
    pub fn body_ended(&self) {
        self.ended.store(true, Ordering::Relaxed);
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let e = &self.exchange;
        let ms = (e.started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let tokens = e.tokens.0.get();
        let client_gone = (!self.ended.load(Ordering::Relaxed)).then_some(true);
        tracing::info!(
            target: "layerstream::access",
            request_id = %e.id,
            method = %e.method,
            path = %e.path,
            status = self.status,
            duration_ms = ms,
            prompt_tokens = tokens.map(|t| t.0),
            completion_tokens = tokens.map(|t| t.1),
            client_gone,
            "request"
        );
    }
}
