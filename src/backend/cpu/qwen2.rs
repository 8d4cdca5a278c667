//! The Qwen2 forward pass on the CPU: the reference every other backend is checked against.
//!
//! Reads top to bottom like the paper: embed → per layer (RMSNorm, QKV with bias, RoPE, GQA over
//! the KV cache, output projection, residual, RMSNorm, SwiGLU MLP, residual) → final norm → head.
//! Prompts are processed in chunks of at most `max_batch` tokens with matrix-matrix products;
//! decode is the same path with one token. All buffers live in `Scratch`, sized once.

use rayon::prelude::*;

use super::attention::{attention, AttnShape, KvCache};
use super::matrix::Matrix;
use super::ops;
use super::weights::{HeadWeights, LayerWeights};
use crate::model::HParams;

/// Everything a forward pass writes besides the KV cache, allocated once.
pub struct Scratch {
    max_batch: usize,
    x: Vec<f32>,    // (batch, hidden) residual stream
    xn: Vec<f32>,   // (batch, hidden) normed
    qkv: Vec<f32>,  // (batch, q_dim + 2 kv_dim)
    q: Vec<f32>,    // (batch, q_dim)
    k: Vec<f32>,    // (batch, kv_dim)
    v: Vec<f32>,    // (batch, kv_dim)
    attn: Vec<f32>, // (batch, q_dim)
    proj: Vec<f32>, // (batch, hidden)
    gu: Vec<f32>,   // (batch, 2 ffn)
    act: Vec<f32>,  // (batch, ffn)
    cos: Vec<f32>,  // (batch, head_dim / 2)
    sin: Vec<f32>,  // (batch, head_dim / 2)
}

impl Scratch {
    pub fn new(hp: &HParams, max_batch: usize) -> Scratch {
        let b = max_batch.max(1);
        let qkv = hp.q_dim() + 2 * hp.kv_dim();
        let z = |n: usize| vec![0f32; b * n];
        Scratch {
            max_batch: b,
            x: z(hp.hidden),
            xn: z(hp.hidden),
            qkv: z(qkv),
            q: z(hp.q_dim()),
            k: z(hp.kv_dim()),
            v: z(hp.kv_dim()),
            attn: z(hp.q_dim()),
            proj: z(hp.hidden),
            gu: z(2 * hp.ffn),
            act: z(hp.ffn),
            cos: z(hp.head_dim / 2),
            sin: z(hp.head_dim / 2),
        }
    }

    pub fn max_batch(&self) -> usize {
        self.max_batch
    }
}

/// Read access to the weights of each unit; blocking until the unit is resident is the
/// implementor's business (the lazy loader gates here).
pub trait WeightView: Sync {
    fn embedding(&self) -> Result<&Matrix, crate::backend::BackendError>;
    fn layer(&self, i: usize) -> Result<&LayerWeights, crate::backend::BackendError>;
    fn head(&self) -> Result<&HeadWeights, crate::backend::BackendError>;
}

/// Run `tokens` (at positions `start..`) through the model, appending to `cache`, and write the
/// last token's logits (`vocab` floats) into `logits`.
pub fn forward(
    hp: &HParams,
    w: &impl WeightView,
    cache: &mut KvCache,
    tokens: &[u32],
    start: usize,
    s: &mut Scratch,
    logits: &mut [f32],
) -> Result<(), crate::backend::BackendError> {
    if tokens.is_empty() {
        return Err(crate::backend::BackendError::EmptyInput);
    }
    let mut pos = start;
    for chunk in tokens.chunks(s.max_batch) {
        forward_chunk(hp, w, cache, chunk, pos, s)?;
        pos += chunk.len();
    }
    let last = (tokens.len() - 1) % s.max_batch;
    head(
        hp,
        w,
        &s.x[last * hp.hidden..(last + 1) * hp.hidden],
        &mut s.xn[..hp.hidden],
        logits,
    )
}

fn forward_chunk(
    hp: &HParams,
    w: &impl WeightView,
    cache: &mut KvCache,
    tokens: &[u32],
    start: usize,
    s: &mut Scratch,
) -> Result<(), crate::backend::BackendError> {
    let (n, h) = (tokens.len(), hp.hidden);
    let embd = w.embedding()?;
    for (t, &id) in tokens.iter().enumerate() {
        embd.row_into(id as usize, &mut s.x[t * h..(t + 1) * h]);
    }
    let half = hp.head_dim / 2;
    for t in 0..n {
        ops::rope_table(
            start + t,
            hp.head_dim,
            hp.rope_base,
            &mut s.cos[t * half..(t + 1) * half],
            &mut s.sin[t * half..(t + 1) * half],
        );
    }
    for layer in 0..hp.n_layer {
        let lw = w.layer(layer)?;
        attention_block(hp, lw, cache, layer, n, start, s);
        mlp_block(hp, lw, n, s);
    }
    Ok(())
}

fn attention_block(
    hp: &HParams,
    lw: &LayerWeights,
    cache: &mut KvCache,
    layer: usize,
    n: usize,
    start: usize,
    s: &mut Scratch,
) {
    let (h, qd, kvd, half) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.head_dim / 2);
    let qkv_w = qd + 2 * kvd;
    for t in 0..n {
        ops::rms_norm(
            &s.x[t * h..(t + 1) * h],
            &lw.attn_norm,
            hp.rms_eps,
            &mut s.xn[t * h..(t + 1) * h],
        );
    }
    lw.wqkv.matmul(&s.xn[..n * h], n, &mut s.qkv[..n * qkv_w]);
    ops::add_bias(&mut s.qkv[..n * qkv_w], &lw.bqkv);
    for t in 0..n {
        let row = &s.qkv[t * qkv_w..(t + 1) * qkv_w];
        let (q, k, v) = (
            &mut s.q[t * qd..(t + 1) * qd],
            &mut s.k[t * kvd..(t + 1) * kvd],
            &mut s.v[t * kvd..(t + 1) * kvd],
        );
        q.copy_from_slice(&row[..qd]);
        k.copy_from_slice(&row[qd..qd + kvd]);
        v.copy_from_slice(&row[qd + kvd..]);
        let (c, sn) = (
            &s.cos[t * half..(t + 1) * half],
            &s.sin[t * half..(t + 1) * half],
        );
        ops::rope_apply(q, hp.head_dim, c, sn);
        ops::rope_apply(k, hp.head_dim, c, sn);
    }
    cache.store(layer, start, &s.k[..n * kvd], &s.v[..n * kvd]);
    let (kc, vc) = cache.layer(layer, start + n);
    let shape = AttnShape {
        n_head: hp.n_head,
        n_kv_head: hp.n_kv_head,
        head_dim: hp.head_dim,
    };
    attention(&s.q[..n * qd], kc, vc, start, shape, &mut s.attn[..n * qd]);
    lw.wo.matmul(&s.attn[..n * qd], n, &mut s.proj[..n * h]);
    ops::add_in_place(&mut s.x[..n * h], &s.proj[..n * h]);
}

fn mlp_block(hp: &HParams, lw: &LayerWeights, n: usize, s: &mut Scratch) {
    let (h, f) = (hp.hidden, hp.ffn);
    for t in 0..n {
        ops::rms_norm(
            &s.x[t * h..(t + 1) * h],
            &lw.ffn_norm,
            hp.rms_eps,
            &mut s.xn[t * h..(t + 1) * h],
        );
    }
    lw.w_gate_up
        .matmul(&s.xn[..n * h], n, &mut s.gu[..n * 2 * f]);
    // One token per task: a prompt's SwiGLU is n × ffn exponentials.
    s.act[..n * f]
        .par_chunks_mut(f)
        .zip(s.gu[..n * 2 * f].par_chunks(2 * f))
        .for_each(|(act, row)| ops::silu_mul(&row[..f], &row[f..], act));
    lw.w_down.matmul(&s.act[..n * f], n, &mut s.proj[..n * h]);
    ops::add_in_place(&mut s.x[..n * h], &s.proj[..n * h]);
}

fn head(
    hp: &HParams,
    w: &impl WeightView,
    x: &[f32],
    xn: &mut [f32],
    logits: &mut [f32],
) -> Result<(), crate::backend::BackendError> {
    let hw = w.head()?;
    ops::rms_norm(x, &hw.norm, hp.rms_eps, xn);
    match &hw.output {
        Some(out) => out.matvec(xn, &mut logits[..hp.vocab]),
        None => w.embedding()?.matvec(xn, &mut logits[..hp.vocab]),
    }
    Ok(())
}
