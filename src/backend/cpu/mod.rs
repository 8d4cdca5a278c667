//! The CPU backend: SIMD F16/F32 products (AVX2+FMA+F16C, scalar fallback), multithreaded with
//! rayon, F32 activations and KV cache. It is the reference the other backends are tested against.

pub mod attention;
pub mod gemm;
pub mod matrix;
pub mod ops;
pub mod qwen2;
pub mod simd;
pub mod weights;

use attention::KvCache;
use matrix::Matrix;
use qwen2::{Scratch, WeightView};
use weights::{HeadWeights, LayerWeights};

use super::BackendError;
use crate::gguf::GgufFile;
use crate::model::{HParams, ModelError, ModelSpec};

/// Prompt tokens processed per matrix-matrix pass.
pub const DEFAULT_MAX_BATCH: usize = 256;

/// A model whose every unit is resident in CPU memory.
pub struct CpuModel {
    pub hp: HParams,
    embed: Matrix,
    layers: Vec<LayerWeights>,
    head: HeadWeights,
}

impl CpuModel {
    /// Read every unit from `file` (already validated into `spec`).
    pub fn load(file: &GgufFile, spec: &ModelSpec) -> Result<CpuModel, ModelError> {
        let embed = weights::load_embedding(file)?;
        let layers = (0..spec.hp.n_layer)
            .map(|i| weights::load_layer(file, i))
            .collect::<Result<_, _>>()?;
        let head = weights::load_head(file, spec)?;
        Ok(CpuModel {
            hp: spec.hp.clone(),
            embed,
            layers,
            head,
        })
    }
}

impl WeightView for CpuModel {
    fn embedding(&self) -> Result<&Matrix, BackendError> {
        Ok(&self.embed)
    }
    fn layer(&self, i: usize) -> Result<&LayerWeights, BackendError> {
        self.layers.get(i).ok_or(BackendError::LoadFailed(format!(
            "layer {i} does not exist"
        )))
    }
    fn head(&self) -> Result<&HeadWeights, BackendError> {
        Ok(&self.head)
    }
}

/// One sequence's state: KV cache, scratch buffers, logits, and how many positions are filled.
pub struct CpuSession {
    cache: KvCache,
    scratch: Scratch,
    logits: Vec<f32>,
    len: usize,
}

impl CpuSession {
    pub fn new(hp: &HParams, capacity: usize, max_batch: usize) -> CpuSession {
        CpuSession {
            cache: KvCache::new(hp.n_layer, capacity, hp.kv_dim()),
            scratch: Scratch::new(hp, max_batch),
            logits: vec![0.0; hp.vocab],
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

    pub fn capacity(&self) -> usize {
        self.cache.capacity
    }

    /// Forget the sequence (the cache is reused).
    pub fn reset(&mut self) {
        self.len = 0;
    }

    /// Append `tokens` and return the logits after the last one.
    pub fn eval(
        &mut self,
        hp: &HParams,
        w: &impl WeightView,
        tokens: &[u32],
    ) -> Result<&[f32], BackendError> {
        let needed = self.len + tokens.len();
        if needed > self.cache.capacity {
            return Err(BackendError::ContextFull {
                needed,
                capacity: self.cache.capacity,
            });
        }
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= hp.vocab) {
            return Err(BackendError::TokenOutOfRange {
                id,
                vocab: hp.vocab,
            });
        }
        qwen2::forward(
            hp,
            w,
            &mut self.cache,
            tokens,
            self.len,
            &mut self.scratch,
            &mut self.logits,
        )?;
        self.len = needed;
        Ok(&self.logits)
    }
}
