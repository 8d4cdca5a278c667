//! The one seam between the engine and a backend: a batched step. The engine hands over the
//! flattened tokens of many sequences, each sequence's position and KV block table, and which
//! sequences want logits; the backend runs every layer over all rows (gated per layer on the
//! loader, as a single request was) and returns one row of logits per sequence that asked.

use std::ops::Range;

use super::BackendError;

/// One sequence's part of a step.
#[derive(Clone, Debug)]
pub struct SeqStep<'a> {
    /// The rows of [`StepBatch::tokens`] this sequence owns (consecutive).
    pub rows: Range<usize>,
    /// Position of the first row; positions before it are already in the sequence's blocks.
    pub pos: usize,
    /// The sequence's KV blocks in order: block `b` holds positions `b * block_size ..`; enough
    /// blocks for `pos + rows.len()` positions.
    pub blocks: &'a [u32],
    /// Whether the logits after the sequence's last row are wanted.
    pub logits: bool,
}

/// The pool row holding position `pos` of a sequence whose blocks are `blocks` (`block_size`
/// positions each).
#[inline]
pub fn pool_row(blocks: &[u32], pos: usize, block_size: usize) -> usize {
    blocks[pos / block_size] as usize * block_size + pos % block_size
}

/// What one step evaluates.
#[derive(Clone, Debug)]
pub struct StepBatch<'a> {
    pub tokens: &'a [u32],
    pub seqs: &'a [SeqStep<'a>],
}

impl StepBatch<'_> {
    /// Sequences whose logits the step returns, in order.
    pub fn logit_rows(&self) -> usize {
        self.seqs.iter().filter(|s| s.logits).count()
    }

    /// Check the batch against the runner's geometry before anything runs.
    pub fn validate(&self, kv: &KvGeometry, vocab: usize) -> Result<(), BackendError> {
        if self.tokens.is_empty() || self.seqs.is_empty() {
            return Err(BackendError::EmptyInput);
        }
        if let Some(&id) = self.tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(BackendError::TokenOutOfRange { id, vocab });
        }
        let mut next = 0;
        for s in self.seqs {
            let fits = s.rows.start == next && s.rows.end > s.rows.start;
            let needed = s.pos + s.rows.len();
            if !fits || s.rows.end > self.tokens.len() {
                return Err(BackendError::Device(format!(
                    "malformed batch: rows {:?} after row {next} of {}",
                    s.rows,
                    self.tokens.len()
                )));
            }
            if needed > s.blocks.len() * kv.block_size {
                return Err(BackendError::ContextFull {
                    needed,
                    capacity: s.blocks.len() * kv.block_size,
                });
            }
            if let Some(&b) = s.blocks.iter().find(|&&b| b as usize >= kv.num_blocks) {
                return Err(BackendError::Device(format!(
                    "KV block {b} outside the pool of {}",
                    kv.num_blocks
                )));
            }
            next = s.rows.end;
        }
        if next != self.tokens.len() {
            return Err(BackendError::Device(format!(
                "malformed batch: {} of {} rows owned by a sequence",
                next,
                self.tokens.len()
            )));
        }
        Ok(())
    }
}

/// The KV pool's shape: `num_blocks` blocks of `block_size` positions each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvGeometry {
    pub block_size: usize,
    pub num_blocks: usize,
}

impl KvGeometry {
    pub fn tokens(&self) -> usize {
        self.block_size * self.num_blocks
    }
}

/// What the engine asks of a backend's batching.
#[derive(Clone, Copy, Debug)]
pub struct BatchRequest {
    pub max_seqs: usize,
    pub max_batch_tokens: usize,
    /// KV pool capacity in positions.
    pub kv_tokens: usize,
    pub block_size: usize,
    /// Positions one sequence may hold (the context size).
    pub ctx: usize,
    /// Whether requests may share cached prefix blocks.
    pub prefix_cache: bool,
    /// Whether a sequence's results must not depend on the other rows of its steps (the CPU's
    /// always are; a GPU backend then runs every product at one fixed shape).
    pub batch_invariant: bool,
    /// When set, a GPU backend sizes its pool to fill this fraction of the device's memory
    /// (counting what is already in use) instead of `kv_tokens` (the CPU ignores it).
    pub gpu_memory_fraction: Option<f32>,
}

/// What a backend grants: at most the request, possibly less (a backend without paged attention
/// runs one sequence in its own cache and cannot share blocks between sequences).
#[derive(Clone, Copy, Debug)]
pub struct BatchLimits {
    pub max_seqs: usize,
    pub max_batch_tokens: usize,
    pub kv: KvGeometry,
    /// Whether full blocks may be shared between sequences (prefix caching).
    pub shared_blocks: bool,
    /// Positions one sequence may hold.
    pub ctx: usize,
    /// Whether a sequence's results are independent of the rest of its steps.
    pub batch_invariant: bool,
}

pub use crate::sampler::{LogitHead, RowWant};

/// What came back for a row.
#[derive(Clone, Debug)]
pub enum RowResult {
    /// Chosen on the device (the argmax or the draw).
    Token(u32),
    /// A NaN or +inf logit, or nothing finite.
    NonFinite,
    Head(LogitHead),
    /// The whole row: read it with [`StepRunner::full_row`].
    Full,
}

/// A step's answer: every row whole, or one result per row.
pub enum StepOut<'a> {
    Logits(&'a mut [f32]),
    Rows(Vec<RowResult>),
}

/// Runs batched steps over one KV pool; made once by the engine and kept.
pub trait StepRunner: Send {
    /// Evaluate the batch, appending each row's K/V to its sequence's blocks; returns
    /// `logit_rows × vocab` logits, one row per sequence with `logits` set, in batch order.
    fn step(&mut self, batch: &StepBatch<'_>) -> Result<&mut [f32], BackendError>;
    /// Evaluate the batch and answer each logit row as `wants` says (one per sequence with
    /// `logits`, in order; ids at or past `n_text` are never chosen), calling `meanwhile` once
    /// while the step runs (host work that needs nothing from it: a device issues the step,
    /// calls it, then waits). The default calls it first and answers every row whole.
    fn step_rows(
        &mut self,
        batch: &StepBatch<'_>,
        wants: &[RowWant],
        n_text: usize,
        meanwhile: &mut dyn FnMut(),
    ) -> Result<StepOut<'_>, BackendError> {
        let _ = (wants, n_text);
        meanwhile();
        self.step(batch).map(StepOut::Logits)
    }
    /// Logit row `i` of the last `step_rows`, whole (for a row answered [`RowResult::Full`]).
    fn full_row(&mut self, i: usize) -> Result<&mut [f32], BackendError> {
        Err(BackendError::Device(format!(
            "logit row {i} was not kept by this backend"
        )))
    }
    /// Work to do while no sequence is running (one short piece a call: a device captures one
    /// step graph, its answers over ids below `n_text`); true while there is more, now or once
    /// the load is done. Touches no sequence.
    fn idle_work(&mut self, n_text: usize) -> Result<bool, BackendError> {
        let _ = n_text;
        Ok(false)
    }
    /// Make the device-side objects a first step would otherwise create; runs no layer.
    fn prepare(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
    /// Forget every sequence's cached state (after a failed step).
    fn reset(&mut self) {}
}
