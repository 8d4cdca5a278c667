//! Compute backends. `cpu` is the reference implementation; every other backend is checked
//! against it.

pub mod cpu;

use crate::model::ModelError;

/// Why a forward pass could not run.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error("no tokens to evaluate")]
    EmptyInput,
    #[error("token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("context is full: {needed} positions needed, capacity {capacity}")]
    ContextFull { needed: usize, capacity: usize },
    #[error("model loading failed: {0}")]
    LoadFailed(String),
    #[error("interrupted while waiting for the model to load (shutting down)")]
    Interrupted,
}
