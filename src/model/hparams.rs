//! Qwen2 hyper-parameters, parsed once from GGUF metadata and checked for sane ranges.

use crate::gguf::Metadata;

use super::ModelError;

/// Upper bounds that keep a hostile file from sizing huge allocations.
const MAX_LAYERS: usize = 1024;
const MAX_HIDDEN: usize = 65_536;
const MAX_FFN: usize = 262_144;
const MAX_VOCAB: usize = 1 << 20;
const MAX_HEAD_DIM: usize = 512;

/// Everything the forward pass needs to know about a model's shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HParams {
    pub n_layer: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    pub rms_eps: f32,
}

impl HParams {
    /// Parse `qwen2.*` keys. `vocab` is taken from the embedding tensor's dims by the caller.
    pub fn from_metadata(meta: &Metadata, vocab: usize) -> Result<HParams, ModelError> {
        let arch = meta.str("general.architecture")?;
        if arch != "qwen2" {
            return Err(ModelError::Architecture(arch.to_string()));
        }
        let key = |k: &str| format!("qwen2.{k}");
        let n_layer = range(
            &key("block_count"),
            meta.u64(&key("block_count"))?,
            1,
            MAX_LAYERS,
        )?;
        let hidden = range(
            &key("embedding_length"),
            meta.u64(&key("embedding_length"))?,
            1,
            MAX_HIDDEN,
        )?;
        let ffn = range(
            &key("feed_forward_length"),
            meta.u64(&key("feed_forward_length"))?,
            1,
            MAX_FFN,
        )?;
        let n_head = range(
            &key("attention.head_count"),
            meta.u64(&key("attention.head_count"))?,
            1,
            hidden,
        )?;
        let n_kv_head = match meta.opt_u64(&key("attention.head_count_kv"))? {
            Some(v) => range(&key("attention.head_count_kv"), v, 1, n_head)?,
            None => n_head,
        };
        let context = match meta.opt_u64(&key("context_length"))? {
            Some(v) => range(&key("context_length"), v, 1, 1 << 24)?,
            None => 4096,
        };
        let rope_base = meta.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rms_eps = meta
            .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6);
        if hidden % n_head != 0 {
            return Err(ModelError::Shape(format!(
                "qwen2.attention.head_count {n_head} does not divide qwen2.embedding_length {hidden}"
            )));
        }
        if n_head % n_kv_head != 0 {
            return Err(ModelError::Shape(format!(
                "qwen2.attention.head_count_kv {n_kv_head} does not divide head_count {n_head}"
            )));
        }
        let head_dim = hidden / n_head;
        if head_dim % 2 != 0 || head_dim > MAX_HEAD_DIM {
            return Err(ModelError::Shape(format!(
                "head dimension {head_dim} must be even and at most {MAX_HEAD_DIM}"
            )));
        }
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(ModelError::Shape(format!(
                "qwen2.rope.freq_base {rope_base} must be > 0"
            )));
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(ModelError::Shape(format!(
                "qwen2.attention.layer_norm_rms_epsilon {rms_eps} must be in (0, 1)"
            )));
        }
        let vocab = range("vocabulary size", vocab as u64, 1, MAX_VOCAB)?;
        Ok(HParams {
            n_layer,
            hidden,
            ffn,
            n_head,
            n_kv_head,
            head_dim,
            vocab,
            context,
            rope_base,
            rms_eps,
        })
    }

    /// Width of the K and V projections.
    pub fn kv_dim(&self) -> usize {
        self.n_kv_head * self.head_dim
    }

    /// Width of the Q projection and the attention output.
    pub fn q_dim(&self) -> usize {
        self.n_head * self.head_dim
    }
}

fn range(key: &str, v: u64, lo: usize, hi: usize) -> Result<usize, ModelError> {
    match usize::try_from(v) {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => Err(ModelError::Range {
            key: key.to_string(),
            value: v,
            lo,
            hi,
        }),
    }
}
