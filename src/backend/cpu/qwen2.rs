//! The Qwen2 forward pass on the CPU, batched: the reference every other backend is checked
//! against, and the one copy of the layer math on this backend (prompts, decode steps and mixed
//! batches of many sequences all take it).
//!
//! Reads top to bottom like the paper: embed → per layer (RMSNorm, QKV (+ bias where the family
//! has them; per-head q/k RMSNorm where it has those), RoPE, GQA over each sequence's paged KV,
//! output projection, residual, RMSNorm, SwiGLU MLP, residual) → final norm → head. The family's
//! row of the architecture table adds what it has: embeddings scaled by sqrt(hidden), local layers
//! with a window and their own RoPE base, post norms before each residual add, GeGLU instead of
//! SwiGLU (Gemma 3). The projections are one matrix-matrix product over every row of the batch;
//! RoPE, the KV append and attention are per row over the row's own sequence. Every reduction is per
//! row, so a sequence's logits are bit-identical whatever else shares its batch.

use rayon::prelude::*;

use super::attention::{paged_attention, AttnShape, PagedKv, QueryRow};
use super::matrix::Matrix;
use super::ops;
use super::weights::{HeadWeights, LayerWeights};
use crate::backend::step::StepBatch;
use crate::backend::BackendError;
use crate::model::arch::Activation;
use crate::model::HParams;

/// Everything a step writes besides the KV pool, allocated once for `max_rows` rows.
pub struct Scratch {
    max_rows: usize,
    x: Vec<f32>,         // (rows, hidden) residual stream
    xn: Vec<f32>,        // (rows, hidden) normed
    qkv: Vec<f32>,       // (rows, q_dim + 2 kv_dim)
    q: Vec<f32>,         // (rows, q_dim)
    k: Vec<f32>,         // (rows, kv_dim)
    v: Vec<f32>,         // (rows, kv_dim)
    attn: Vec<f32>,      // (rows, q_dim)
    proj: Vec<f32>,      // (rows, hidden)
    gu: Vec<f32>,        // (rows, 2 ffn)
    act: Vec<f32>,       // (rows, ffn)
    cos: Vec<f32>,       // (rows, head_dim / 2) at rope_base
    sin: Vec<f32>,       // (rows, head_dim / 2)
    cos_local: Vec<f32>, // (rows, head_dim / 2) at the local layers' base, when they have one
    sin_local: Vec<f32>, // (rows, head_dim / 2)
    inv_freq: Vec<f32>,  // (head_dim / 2) the global layers' RoPE frequencies
    inv_local: Vec<f32>, // (head_dim / 2) the local layers', when they have their own
    pos: Vec<usize>,     // (rows) position of each row
    seq: Vec<usize>,     // (rows) sequence of each row
    head_x: Vec<f32>,    // (logit rows, hidden)
}

impl Scratch {
    pub fn new(hp: &HParams, max_rows: usize) -> Scratch {
        let b = max_rows.max(1);
        let qkv = hp.q_dim() + 2 * hp.kv_dim();
        let z = |n: usize| vec![0f32; b * n];
        Scratch {
            max_rows: b,
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
            cos_local: hp
                .local_rope_base()
                .map_or(Vec::new(), |_| z(hp.head_dim / 2)),
            sin_local: hp
                .local_rope_base()
                .map_or(Vec::new(), |_| z(hp.head_dim / 2)),
            inv_freq: hp.inv_freq(false),
            inv_local: hp
                .local_rope_base()
                .map_or(Vec::new(), |_| hp.inv_freq(true)),
            pos: vec![0; b],
            seq: vec![0; b],
            head_x: Vec::new(),
        }
    }

    pub fn max_rows(&self) -> usize {
        self.max_rows
    }
}

/// Read access to the weights of each unit; blocking until the unit is resident is the
/// implementor's business (the lazy loader gates here).
pub trait WeightView: Sync {
    fn embedding(&self) -> Result<&Matrix, BackendError>;
    fn layer(&self, i: usize) -> Result<&LayerWeights, BackendError>;
    fn head(&self) -> Result<&HeadWeights, BackendError>;
}

/// Run one batched step: every row through every layer (each layer waited for as it is reached),
/// K/V appended to each row's sequence, then the head for each sequence that wants logits.
/// `logits` is resized to `logit_rows × vocab`. The batch must already be validated.
pub fn step(
    hp: &HParams,
    w: &impl WeightView,
    kv: &mut PagedKv,
    batch: &StepBatch<'_>,
    s: &mut Scratch,
    logits: &mut Vec<f32>,
) -> Result<(), BackendError> {
    let n = batch.tokens.len();
    if n > s.max_rows {
        return Err(BackendError::Device(format!(
            "a step of {n} rows exceeds the {} it was sized for",
            s.max_rows
        )));
    }
    embed_rows(hp, w, batch, s)?;
    let rows: Vec<QueryRow<'_>> = (0..n)
        .map(|r| QueryRow {
            blocks: batch.seqs[s.seq[r]].blocks,
            pos: s.pos[r],
        })
        .collect();
    for layer in 0..hp.n_layer {
        let lw = w.layer(layer)?;
        attention_block(hp, lw, kv, layer, &rows, s);
        mlp_block(hp, lw, n, s);
    }
    head(hp, w, batch, s, logits)
}

/// Embedding rows, each row's position and sequence, and its rotary table.
fn embed_rows(
    hp: &HParams,
    w: &impl WeightView,
    batch: &StepBatch<'_>,
    s: &mut Scratch,
) -> Result<(), BackendError> {
    let (h, half) = (hp.hidden, hp.head_dim / 2);
    let embd = w.embedding()?;
    for (i, seq) in batch.seqs.iter().enumerate() {
        for (t, r) in seq.rows.clone().enumerate() {
            s.pos[r] = seq.pos + t;
            s.seq[r] = i;
        }
    }
    // Gemma scales the embeddings by sqrt(hidden) (rounded to F32, as transformers does).
    let scale = hp.family.info().embed_scale.then(|| (h as f32).sqrt());
    for (r, &id) in batch.tokens.iter().enumerate() {
        let x = &mut s.x[r * h..(r + 1) * h];
        embd.row_into(id as usize, x);
        if let Some(k) = scale {
            x.iter_mut().for_each(|v| *v *= k);
        }
        let rows = r * half..(r + 1) * half;
        let (c, sn) = (&mut s.cos[rows.clone()], &mut s.sin[rows.clone()]);
        ops::rope_table(s.pos[r], &s.inv_freq, hp.rope_mscale(false), c, sn);
        if !s.inv_local.is_empty() {
            let (c, sn) = (&mut s.cos_local[rows.clone()], &mut s.sin_local[rows]);
            ops::rope_table(s.pos[r], &s.inv_local, hp.rope_mscale(true), c, sn);
        }
    }
    Ok(())
}

fn norm_rows(x: &[f32], w: &[f32], eps: f32, width: usize, out: &mut [f32]) {
    for (xr, o) in x.chunks(width).zip(out.chunks_mut(width)) {
        ops::rms_norm(xr, w, eps, o);
    }
}

fn attention_block(
    hp: &HParams,
    lw: &LayerWeights,
    kv: &mut PagedKv,
    layer: usize,
    rows: &[QueryRow<'_>],
    s: &mut Scratch,
) {
    let n = rows.len();
    let (h, qd, kvd, half) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.head_dim / 2);
    let qkv_w = qd + 2 * kvd;
    let window = hp.window(layer);
    let (cos, sin) = match hp.local_rope(layer) {
        true => (&s.cos_local, &s.sin_local),
        false => (&s.cos, &s.sin),
    };
    norm_rows(
        &s.x[..n * h],
        &lw.attn_norm,
        hp.rms_eps,
        h,
        &mut s.xn[..n * h],
    );
    lw.wqkv.matmul(&s.xn[..n * h], n, &mut s.qkv[..n * qkv_w]);
    if !lw.bqkv.is_empty() {
        ops::add_bias(&mut s.qkv[..n * qkv_w], &lw.bqkv);
    }
    for (r, at) in rows.iter().enumerate() {
        let row = &s.qkv[r * qkv_w..(r + 1) * qkv_w];
        let (q, k, v) = (
            &mut s.q[r * qd..(r + 1) * qd],
            &mut s.k[r * kvd..(r + 1) * kvd],
            &mut s.v[r * kvd..(r + 1) * kvd],
        );
        q.copy_from_slice(&row[..qd]);
        k.copy_from_slice(&row[qd..qd + kvd]);
        v.copy_from_slice(&row[qd + kvd..]);
        if !lw.q_norm.is_empty() {
            ops::rms_norm_heads(q, &lw.q_norm, hp.rms_eps);
            ops::rms_norm_heads(k, &lw.k_norm, hp.rms_eps);
        }
        let (c, sn) = (
            &cos[r * half..(r + 1) * half],
            &sin[r * half..(r + 1) * half],
        );
        ops::rope_apply(q, hp.head_dim, c, sn);
        ops::rope_apply(k, hp.head_dim, c, sn);
        kv.store(layer, at.blocks, at.pos, k, v);
    }
    let shape = AttnShape {
        n_head: hp.n_head,
        n_kv_head: hp.n_kv_head,
        head_dim: hp.head_dim,
        scale: hp.attn_scale(),
        window,
    };
    paged_attention(
        &s.q[..n * qd],
        kv,
        layer,
        rows,
        shape,
        &mut s.attn[..n * qd],
    );
    lw.wo.matmul(&s.attn[..n * qd], n, &mut s.proj[..n * h]);
    residual(hp, &lw.attn_post_norm, n, s);
}

/// `x += proj`, through the family's post norm when it has one (Gemma: `x += norm(proj)`).
fn residual(hp: &HParams, post_norm: &[f32], n: usize, s: &mut Scratch) {
    let h = hp.hidden;
    if post_norm.is_empty() {
        ops::add_in_place(&mut s.x[..n * h], &s.proj[..n * h]);
        return;
    }
    norm_rows(
        &s.proj[..n * h],
        post_norm,
        hp.rms_eps,
        h,
        &mut s.xn[..n * h],
    );
    ops::add_in_place(&mut s.x[..n * h], &s.xn[..n * h]);
}

fn mlp_block(hp: &HParams, lw: &LayerWeights, n: usize, s: &mut Scratch) {
    let (h, f) = (hp.hidden, hp.ffn);
    norm_rows(
        &s.x[..n * h],
        &lw.ffn_norm,
        hp.rms_eps,
        h,
        &mut s.xn[..n * h],
    );
    lw.w_gate_up
        .matmul(&s.xn[..n * h], n, &mut s.gu[..n * 2 * f]);
    // One row per task: a prompt's gated activation is rows × ffn exponentials.
    let act = match hp.family.info().activation {
        Activation::SiluGated => ops::silu_mul,
        Activation::GeluTanhGated => ops::gelu_tanh_mul,
    };
    s.act[..n * f]
        .par_chunks_mut(f)
        .zip(s.gu[..n * 2 * f].par_chunks(2 * f))
        .for_each(|(out, row)| act(&row[..f], &row[f..], out));
    lw.w_down.matmul(&s.act[..n * f], n, &mut s.proj[..n * h]);
    residual(hp, &lw.ffn_post_norm, n, s);
}

/// Final norm and LM head over the last row of each sequence that wants logits.
fn head(
    hp: &HParams,
    w: &impl WeightView,
    batch: &StepBatch<'_>,
    s: &mut Scratch,
    logits: &mut Vec<f32>,
) -> Result<(), BackendError> {
    let h = hp.hidden;
    let wanted: Vec<usize> = batch
        .seqs
        .iter()
        .filter(|q| q.logits)
        .map(|q| q.rows.end - 1)
        .collect();
    let m = wanted.len();
    logits.resize(m * hp.vocab, 0.0);
    if m == 0 {
        return Ok(());
    }
    let hw = w.head()?;
    s.head_x.resize(m * h, 0.0);
    for (i, &r) in wanted.iter().enumerate() {
        ops::rms_norm(
            &s.x[r * h..(r + 1) * h],
            &hw.norm,
            hp.rms_eps,
            &mut s.head_x[i * h..(i + 1) * h],
        );
    }
    let out = match &hw.output {
        Some(out) => out,
        None => w.embedding()?,
    };
    out.matmul(&s.head_x, m, logits);
    Ok(())
}
