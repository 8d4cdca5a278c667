//! The CPU backend: SIMD F16/F32 products (AVX2+FMA+F16C, scalar fallback), multithreaded with
//! rayon, F32 activations and KV cache. It is the reference the other backends are tested against.

pub mod attention;
pub mod buffer;
pub mod gemm;
pub mod matrix;
pub mod ops;
pub mod pool;
pub mod qdot;
pub mod qmat;
pub mod qwen2;
mod runner;
pub mod simd;
pub mod weights;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use matrix::Matrix;
use qwen2::WeightView;
use weights::{HeadWeights, LayerWeights, NoHook, UnitWeights};

use super::step::{BatchLimits, BatchRequest, KvGeometry, StepRunner};
use super::BackendError;
use crate::gguf::GgufFile;
use crate::load::plan::{LoadPlan, UnitKind};
use crate::load::residency::{Residency, WaitError};
use crate::model::{HParams, ModelError, ModelSpec};

pub use runner::{CpuRunner, CpuSession};

/// Prompt tokens processed per matrix-matrix pass by a lone sequence ([`CpuSession`]).
pub const DEFAULT_MAX_BATCH: usize = 256;

/// A model's weights in CPU memory, unit by unit. Units are installed as they land (by the
/// loader thread, or all at once by `load`); the forward pass waits on a unit that is not there.
pub struct CpuModel {
    pub hp: HParams,
    embed: OnceLock<Matrix>,
    layers: Vec<OnceLock<Box<LayerWeights>>>,
    head: OnceLock<HeadWeights>,
    residency: Residency,
    waited_ns: AtomicU64,
}

impl CpuModel {
    /// An empty model whose units will be installed later.
    pub fn empty(spec: &ModelSpec) -> CpuModel {
        let n = spec.hp.n_layer;
        CpuModel {
            hp: spec.hp.clone(),
            embed: OnceLock::new(),
            layers: (0..n).map(|_| OnceLock::new()).collect(),
            head: OnceLock::new(),
            residency: Residency::new(n + 2),
            waited_ns: AtomicU64::new(0),
        }
    }

    /// Read every unit from `file` (already validated into `spec`) on this thread.
    pub fn load(file: &GgufFile, spec: &ModelSpec) -> Result<CpuModel, ModelError> {
        let model = CpuModel::empty(spec);
        for unit in LoadPlan::new(file, spec).units {
            let w = weights::load_unit(file, spec, unit.kind, &mut NoHook)?;
            model.install(unit.kind, w);
        }
        Ok(model)
    }

    /// Make a unit available to the forward pass and wake anyone waiting for it.
    pub fn install(&self, kind: UnitKind, w: UnitWeights) {
        let _ = match w {
            UnitWeights::Embed(m) => self.embed.set(m).is_ok(),
            UnitWeights::Layer(l) => self
                .layers
                .get(layer_index(kind))
                .is_some_and(|slot| slot.set(l).is_ok()),
            UnitWeights::Head(h) => self.head.set(h).is_ok(),
        };
        self.residency
            .mark_resident(LoadPlan::slot(kind, self.hp.n_layer));
    }

    pub fn residency(&self) -> &Residency {
        &self.residency
    }

    /// Time spent waiting for units since the last call.
    pub fn take_waited(&self) -> Duration {
        Duration::from_nanos(self.waited_ns.swap(0, Ordering::Relaxed))
    }

    fn gate<'a, T>(&self, cell: &'a OnceLock<T>, kind: UnitKind) -> Result<&'a T, BackendError> {
        if let Some(v) = cell.get() {
            return Ok(v);
        }
        let waited = self
            .residency
            .wait(LoadPlan::slot(kind, self.hp.n_layer))
            .map_err(|e| match e {
                WaitError::Failed(m) => BackendError::LoadFailed(m),
                WaitError::Interrupted => BackendError::Interrupted,
            })?;
        self.waited_ns
            .fetch_add(waited.as_nanos() as u64, Ordering::Relaxed);
        cell.get().ok_or_else(|| {
            BackendError::LoadFailed(format!("unit {kind:?} marked resident without weights"))
        })
    }
}

fn layer_index(kind: UnitKind) -> usize {
    match kind {
        UnitKind::Layer(i) => i,
        _ => usize::MAX,
    }
}

impl WeightView for CpuModel {
    fn embedding(&self) -> Result<&Matrix, BackendError> {
        self.gate(&self.embed, UnitKind::Embed)
    }
    fn layer(&self, i: usize) -> Result<&LayerWeights, BackendError> {
        let cell = self
            .layers
            .get(i)
            .ok_or_else(|| BackendError::LoadFailed(format!("layer {i} does not exist")))?;
        self.gate(cell, UnitKind::Layer(i)).map(|b| &**b)
    }
    fn head(&self) -> Result<&HeadWeights, BackendError> {
        self.gate(&self.head, UnitKind::Head)
    }
}

impl super::Backend for CpuModel {
    fn hp(&self) -> &HParams {
        &self.hp
    }
    fn residency(&self) -> &Residency {
        &self.residency
    }
    fn take_waited(&self) -> Duration {
        CpuModel::take_waited(self)
    }
    fn new_session(
        self: std::sync::Arc<Self>,
        ctx: usize,
    ) -> Result<Box<dyn super::Session>, BackendError> {
        let session = CpuSession::new(&self.hp, ctx, DEFAULT_MAX_BATCH);
        Ok(Box::new(runner::CpuModelSession::new(self, session)))
    }
    fn batch_limits(&self, want: &BatchRequest) -> BatchLimits {
        BatchLimits {
            max_seqs: want.max_seqs.max(1),
            max_batch_tokens: want.max_batch_tokens.max(1),
            kv: KvGeometry {
                block_size: want.block_size.max(1),
                num_blocks: want.kv_tokens.div_ceil(want.block_size.max(1)).max(1),
            },
            shared_blocks: want.prefix_cache,
            ctx: want.ctx,
            // Every reduction is per row (see matrix.rs).
            batch_invariant: true,
        }
    }
    fn new_runner(
        self: std::sync::Arc<Self>,
        limits: &BatchLimits,
    ) -> Result<Box<dyn StepRunner>, BackendError> {
        Ok(Box::new(CpuRunner::new(self, limits)))
    }
    fn name(&self) -> &'static str {
        "cpu"
    }
}
