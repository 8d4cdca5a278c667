//! The one table of GGUF tensor names, and the shape each tensor must have (which of them a
//! family's files carry is its row of the architecture table).
//!
//! Every other module asks this table for names; nothing else formats `blk.{i}.…` strings.

use super::hparams::HParams;

/// Token embeddings: ggml dims `[hidden, vocab]`.
pub const TOKEN_EMBD: &str = "token_embd.weight";
/// Final RMSNorm weight: `[hidden]`.
pub const OUTPUT_NORM: &str = "output_norm.weight";
/// LM head: `[hidden, vocab]`; absent when tied to `token_embd`.
pub const OUTPUT: &str = "output.weight";
/// Llama 3.1's RoPE frequency factors (`[head_dim / 2]`).
pub const ROPE_FREQS: &str = "rope_freqs.weight";

/// The tensors of one decoder layer (`blk.{i}.<suffix>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    AttnNorm,
    AttnQ,
    AttnQBias,
    AttnK,
    AttnKBias,
    AttnV,
    AttnVBias,
    /// Per-head RMSNorm of the queries and keys (Qwen3): `[head_dim]`.
    AttnQNorm,
    AttnKNorm,
    AttnOut,
    /// RMSNorm of the attention output before the residual add (Gemma): `[hidden]`.
    AttnPostNorm,
    FfnNorm,
    FfnGate,
    FfnUp,
    FfnDown,
    /// RMSNorm of the MLP output before the residual add (Gemma): `[hidden]`.
    FfnPostNorm,
}

impl LayerTensor {
    pub const ALL: [LayerTensor; 16] = [
        LayerTensor::AttnNorm,
        LayerTensor::AttnQ,
        LayerTensor::AttnQBias,
        LayerTensor::AttnK,
        LayerTensor::AttnKBias,
        LayerTensor::AttnV,
        LayerTensor::AttnVBias,
        LayerTensor::AttnQNorm,
        LayerTensor::AttnKNorm,
        LayerTensor::AttnOut,
        LayerTensor::AttnPostNorm,
        LayerTensor::FfnNorm,
        LayerTensor::FfnGate,
        LayerTensor::FfnUp,
        LayerTensor::FfnDown,
        LayerTensor::FfnPostNorm,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            LayerTensor::AttnNorm => "attn_norm.weight",
            LayerTensor::AttnQ => "attn_q.weight",
            LayerTensor::AttnQBias => "attn_q.bias",
            LayerTensor::AttnK => "attn_k.weight",
            LayerTensor::AttnKBias => "attn_k.bias",
            LayerTensor::AttnV => "attn_v.weight",
            LayerTensor::AttnVBias => "attn_v.bias",
            LayerTensor::AttnQNorm => "attn_q_norm.weight",
            LayerTensor::AttnKNorm => "attn_k_norm.weight",
            LayerTensor::AttnOut => "attn_output.weight",
            LayerTensor::AttnPostNorm => "post_attention_norm.weight",
            LayerTensor::FfnPostNorm => "post_ffw_norm.weight",
            LayerTensor::FfnNorm => "ffn_norm.weight",
            LayerTensor::FfnGate => "ffn_gate.weight",
            LayerTensor::FfnUp => "ffn_up.weight",
            LayerTensor::FfnDown => "ffn_down.weight",
        }
    }

    /// The full GGUF name in layer `layer`.
    pub fn name(self, layer: usize) -> String {
        format!("blk.{layer}.{}", self.suffix())
    }

    /// The Q, K and V biases (present or not by family).
    pub fn is_qkv_bias(self) -> bool {
        matches!(
            self,
            LayerTensor::AttnQBias | LayerTensor::AttnKBias | LayerTensor::AttnVBias
        )
    }

    /// The norms of the attention and MLP outputs (Gemma).
    pub fn is_post_norm(self) -> bool {
        matches!(self, LayerTensor::AttnPostNorm | LayerTensor::FfnPostNorm)
    }

    /// The per-head query and key norms.
    pub fn is_qk_norm(self) -> bool {
        matches!(self, LayerTensor::AttnQNorm | LayerTensor::AttnKNorm)
    }

    /// True for norms and biases, which stay F32 in every file we write and every backend.
    pub fn is_vector(self) -> bool {
        matches!(
            self,
            LayerTensor::AttnNorm
                | LayerTensor::FfnNorm
                | LayerTensor::AttnPostNorm
                | LayerTensor::FfnPostNorm
                | LayerTensor::AttnQNorm
                | LayerTensor::AttnKNorm
                | LayerTensor::AttnQBias
                | LayerTensor::AttnKBias
                | LayerTensor::AttnVBias
        )
    }

    /// Expected ggml dims (`dims[0]` is the row length).
    pub fn dims_in(self, hp: &HParams) -> Vec<u64> {
        let h = hp.hidden as u64;
        let q = (hp.n_head * hp.head_dim) as u64;
        let kv = (hp.n_kv_head * hp.head_dim) as u64;
        let f = hp.ffn as u64;
        match self {
            LayerTensor::AttnNorm
            | LayerTensor::FfnNorm
            | LayerTensor::AttnPostNorm
            | LayerTensor::FfnPostNorm => vec![h],
            LayerTensor::AttnQ => vec![h, q],
            LayerTensor::AttnQBias => vec![q],
            LayerTensor::AttnK | LayerTensor::AttnV => vec![h, kv],
            LayerTensor::AttnKBias | LayerTensor::AttnVBias => vec![kv],
            LayerTensor::AttnQNorm | LayerTensor::AttnKNorm => vec![hp.head_dim as u64],
            LayerTensor::AttnOut => vec![q, h],
            LayerTensor::FfnGate | LayerTensor::FfnUp => vec![h, f],
            LayerTensor::FfnDown => vec![f, h],
        }
    }
}

/// Expected dims of the non-layer tensors.
pub fn global_dims(name: &str, hp: &HParams) -> Option<Vec<u64>> {
    let (h, v) = (hp.hidden as u64, hp.vocab as u64);
    match name {
        TOKEN_EMBD | OUTPUT => Some(vec![h, v]),
        OUTPUT_NORM => Some(vec![h]),
        _ => None,
    }
}
