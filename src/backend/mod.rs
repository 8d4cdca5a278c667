//! Compute backends. `cpu` is the reference implementation; every other backend is checked
//! against it. [`Backend`] is what the engine and the CLI hold: a model whose units become
//! resident over time, and the sequences ([`Session`]) evaluated on it.

pub mod cpu;
#[cfg_attr(feature = "cuda", path = "cuda/mod.rs")]
#[cfg_attr(not(feature = "cuda"), path = "cuda_stub.rs")]
pub mod cuda;
mod session_runner;
pub mod step;

use std::sync::Arc;
use std::time::Duration;

use crate::load::residency::{Residency, WaitError};
use crate::model::{HParams, ModelError};
pub use session_runner::SessionRunner;
use step::{BatchLimits, BatchRequest, KvGeometry, StepRunner};

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
    #[error("device error: {0}")]
    Device(String),
}

impl From<WaitError> for BackendError {
    fn from(e: WaitError) -> BackendError {
        match e {
            WaitError::Failed(m) => BackendError::LoadFailed(m),
            WaitError::Interrupted => BackendError::Interrupted,
        }
    }
}

/// Where `--device` puts the model on this machine.
pub enum DeviceChoice {
    /// CUDA device `ordinal`, with its name.
    Cuda(String),
    /// The CPU; for `auto`, why CUDA was not used.
    Cpu(Option<String>),
}

/// Resolve `--device`: `cuda` insists (an error names the reason), `auto` falls back to the CPU.
pub fn choose_device(
    device: crate::config::Device,
    ordinal: usize,
) -> Result<DeviceChoice, String> {
    use crate::config::Device;
    match device {
        Device::Cpu => Ok(DeviceChoice::Cpu(None)),
        Device::Cuda => cuda::probe(ordinal)
            .map(DeviceChoice::Cuda)
            .map_err(|e| format!("--device cuda: {e}")),
        Device::Auto => Ok(match cuda::probe(ordinal) {
            Ok(name) => DeviceChoice::Cuda(name),
            Err(e) => DeviceChoice::Cpu(Some(e)),
        }),
    }
}

/// A model on some device, its units landing one by one.
pub trait Backend: Send + Sync {
    fn hp(&self) -> &HParams;
    /// Which units are resident; waiters are woken as they land, fail, or are interrupted.
    fn residency(&self) -> &Residency;
    /// Time evaluations spent waiting for units since the last call.
    fn take_waited(&self) -> Duration;
    /// A new lone sequence of up to `ctx` positions (the CLI and the checks).
    fn new_session(self: Arc<Self>, ctx: usize) -> Result<Box<dyn Session>, BackendError>;
    /// What batching this backend grants for `want`. The default: one sequence at a time in a
    /// session's own cache (no paged attention, so no blocks shared between sequences).
    fn batch_limits(&self, want: &BatchRequest) -> BatchLimits {
        let block_size = want.block_size.max(1);
        BatchLimits {
            max_seqs: 1,
            max_batch_tokens: want.max_batch_tokens.max(1),
            kv: KvGeometry {
                block_size,
                num_blocks: want.ctx.max(1).div_ceil(block_size),
            },
            shared_blocks: false,
            ctx: want.ctx,
            batch_invariant: true,
        }
    }
    /// The runner the engine drives, its KV pool reserved now (before READY).
    fn new_runner(
        self: Arc<Self>,
        limits: &BatchLimits,
    ) -> Result<Box<dyn StepRunner>, BackendError> {
        let session = self.new_session(limits.ctx)?;
        Ok(Box::new(SessionRunner::new(session)))
    }
    /// Shutting down: every wait for a unit ends now (with `BackendError::Interrupted`) while
    /// the units keep loading.
    fn interrupt(&self) {
        self.residency().interrupt();
    }
    /// The process is about to exit: stop loading and return once no thread of the backend is
    /// inside the device driver (a driver torn down at exit under a running loader can hang).
    fn shutdown(&self) {}
    /// Device memory reserved for weights and caches (0 on the CPU).
    fn device_bytes(&self) -> u64 {
        0
    }
    /// "cpu" or "cuda".
    fn name(&self) -> &'static str;
}

/// One sequence: its KV cache and the logits after its last token.
pub trait Session: Send {
    /// Append `tokens`; return the logits after the last one.
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError>;
    /// Forget the sequence (buffers are reused).
    fn reset(&mut self);
    /// Positions filled so far.
    fn len(&self) -> usize;
    /// Make the device-side objects a first request would otherwise create (stream, library
    /// handles), so the first request pays none of it. Runs no layer.
    fn prepare(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
