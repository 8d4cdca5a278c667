//! The CPU's batched step over a paged KV pool ([`CpuRunner`], what the engine drives), and one
//! sequence on a private block table of its own ([`CpuSession`], what the CLI and the checks use),
//! both through the one forward pass in `qwen2`.

use std::sync::Arc;

use super::attention::PagedKv;
use super::qwen2::{self, Scratch, WeightView};
use super::{pool, CpuModel};
use crate::backend::step::{BatchLimits, KvGeometry, SeqStep, StepBatch, StepRunner};
use crate::backend::{BackendError, Session};
use crate::model::HParams;

/// The engine's view of the CPU backend: the KV pool, the step's buffers and the logits.
pub struct CpuRunner {
    model: Arc<CpuModel>,
    kv: PagedKv,
    scratch: Scratch,
    logits: Vec<f32>,
}

impl CpuRunner {
    pub fn new(model: Arc<CpuModel>, limits: &BatchLimits) -> CpuRunner {
        let hp = &model.hp;
        CpuRunner {
            kv: PagedKv::new(hp.n_layer, limits.kv, hp.kv_dim()),
            scratch: Scratch::new(hp, limits.max_batch_tokens),
            logits: Vec::with_capacity(limits.max_seqs * hp.vocab),
            model,
        }
    }
}

/// Validate and run one step on the compute pool.
fn run_step<'l>(
    hp: &HParams,
    w: &impl WeightView,
    kv: &mut PagedKv,
    batch: &StepBatch<'_>,
    scratch: &mut Scratch,
    logits: &'l mut Vec<f32>,
) -> Result<&'l mut [f32], BackendError> {
    batch.validate(&kv.geometry, hp.vocab)?;
    pool::pool().install(|| qwen2::step(hp, w, kv, batch, scratch, logits))?;
    Ok(logits.as_mut_slice())
}

impl StepRunner for CpuRunner {
    fn step(&mut self, batch: &StepBatch<'_>) -> Result<&mut [f32], BackendError> {
        let model = &*self.model;
        run_step(
            &model.hp,
            model,
            &mut self.kv,
            batch,
            &mut self.scratch,
            &mut self.logits,
        )
    }
}

/// Positions per block of a lone sequence's table.
const SESSION_BLOCK: usize = 16;

/// One sequence: a pool just its size, its blocks in order, and how many positions are filled.
pub struct CpuSession {
    kv: PagedKv,
    blocks: Vec<u32>,
    scratch: Scratch,
    logits: Vec<f32>,
    capacity: usize,
    len: usize,
}

impl CpuSession {
    pub fn new(hp: &HParams, capacity: usize, max_batch: usize) -> CpuSession {
        let geometry = KvGeometry {
            block_size: SESSION_BLOCK,
            num_blocks: capacity.max(1).div_ceil(SESSION_BLOCK),
        };
        CpuSession {
            kv: PagedKv::new(hp.n_layer, geometry, hp.kv_dim()),
            blocks: (0..geometry.num_blocks as u32).collect(),
            scratch: Scratch::new(hp, max_batch),
            logits: Vec::with_capacity(hp.vocab),
            capacity,
            len: 0,
        }
    }

    /// Positions filled so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget the sequence (the pool is reused).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Append `tokens` (in steps of at most `max_batch`) and return the logits after the last one.
    pub fn eval(
        &mut self,
        hp: &HParams,
        w: &impl WeightView,
        tokens: &[u32],
    ) -> Result<&[f32], BackendError> {
        if tokens.is_empty() {
            return Err(BackendError::EmptyInput);
        }
        let capacity = self.capacity;
        let needed = self.len + tokens.len();
        if needed > capacity {
            return Err(BackendError::ContextFull { needed, capacity });
        }
        let chunks = tokens.chunks(self.scratch.max_rows());
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.enumerate() {
            let seq = [SeqStep {
                rows: 0..chunk.len(),
                pos: self.len,
                blocks: &self.blocks,
                logits: i == last,
            }];
            let batch = StepBatch {
                tokens: chunk,
                seqs: &seq,
            };
            run_step(
                hp,
                w,
                &mut self.kv,
                &batch,
                &mut self.scratch,
                &mut self.logits,
            )?;
            self.len += chunk.len();
        }
        Ok(&self.logits)
    }
}

/// A sequence on a shared CPU model.
pub struct CpuModelSession {
    model: Arc<CpuModel>,
    session: CpuSession,
}

impl CpuModelSession {
    pub fn new(model: Arc<CpuModel>, session: CpuSession) -> CpuModelSession {
        CpuModelSession { model, session }
    }
}

impl Session for CpuModelSession {
    fn eval(&mut self, tokens: &[u32]) -> Result<&[f32], BackendError> {
        self.session.eval(&self.model.hp, &*self.model, tokens)
    }
    fn reset(&mut self) {
        self.session.reset();
    }
    fn len(&self) -> usize {
        self.session.len()
    }
}
