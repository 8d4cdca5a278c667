//! Where everything lives in the one device arena reserved before the first copy: every unit's
//! weights (F16 matrices with Q/K/V and gate/up stacked, F32 norms and biases, each optional
//! tensor only where the model has it), the RoPE tables, the KV cache for the context size, and one
//! sequence's scratch buffers. Offsets are 256-byte aligned.

use crate::model::names::{LayerTensor, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use crate::model::{HParams, ModelSpec};

/// Prompt tokens per prefill pass (longer prompts are split).
pub const MAX_BATCH: usize = 512;
/// Keys per split of the decode attention; the number of splits is bounded by `max_splits`.
const MIN_SPLIT_KEYS: usize = 32;
const MAX_SPLITS: usize = 64;

const ALIGN: usize = 256;

/// An F16 matrix `[rows, cols]`, row-major.
#[derive(Clone, Copy, Debug)]
pub struct Mat {
    pub off: usize,
    pub cols: usize,
}

/// An F32 vector.
#[derive(Clone, Copy, Debug)]
pub struct Vector {
    pub off: usize,
}

#[derive(Clone, Copy, Debug)]
pub struct LayerLoc {
    pub attn_norm: Vector,
    /// Q rows, then K rows, then V rows.
    pub wqkv: Mat,
    /// Q, K and V biases (families that have them).
    pub bqkv: Option<Vector>,
    /// Per-head RMSNorm weights of Q and K (`head_dim` each; Qwen3, Gemma 3).
    pub q_norm: Option<Vector>,
    pub k_norm: Option<Vector>,
    pub wo: Mat,
    /// RMSNorm of the attention output before its residual add (Gemma 3).
    pub attn_post_norm: Option<Vector>,
    pub ffn_norm: Vector,
    /// RMSNorm of the MLP output before its residual add (Gemma 3).
    pub ffn_post_norm: Option<Vector>,
    /// Gate rows, then up rows.
    pub wgu: Mat,
    pub wdown: Mat,
    /// KV cache rows `[ctx, kv_dim]`, F16.
    pub k_cache: usize,
    pub v_cache: usize,
}

/// The working buffers of one pass (a lone sequence's, or a batched step's up to `MAX_BATCH` rows).
#[derive(Clone, Copy, Debug)]
pub struct ScratchLoc {
    /// u32 token ids `[MAX_BATCH]`.
    pub ids: usize,
    /// The decode token's [position, K/V row, token id] (i32, read by kernels inside the
    /// captured graph; copied from the host at the start of each step).
    pub dec: usize,
    /// The decode sequence's block table (i32 `[ctx]`, enough for any block size), when paged.
    pub table: usize,
    pub x: usize,
    pub xn: usize,
    pub qkv: usize,
    pub q: usize,
    pub att16: usize,
    pub att32: usize,
    pub gu: usize,
    pub act: usize,
    /// A projection's F32 rows before their post norm (`[MAX_BATCH, hidden]`; empty for families
    /// without post norms).
    pub proj: usize,
    pub logits: usize,
    pub part_acc: usize,
    pub part_ml: usize,
    /// Per head, how many of the decode attention's split blocks have finished (`n_head` ints,
    /// zeroed with the arena; each launch leaves them zero).
    pub merge_count: usize,
}

/// Where a tensor of the file goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dest {
    /// Rows of an F16 matrix starting at this byte offset.
    F16 { off: usize },
    /// Elements of an F32 vector starting at this byte offset.
    F32 { off: usize },
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub embed: Mat,
    pub layers: Vec<LayerLoc>,
    pub out_norm: Vector,
    /// The LM head (the embedding matrix when tied).
    pub out: Mat,
    /// RoPE inverse frequencies (`head_dim / 2` F32, `HParams::inv_freq`): the global layers', and
    /// the local layers' where they have their own; written once when the arena is made.
    pub rope_global: Vector,
    pub rope_local: Option<Vector>,
    pub weights_bytes: usize,
    pub kv_bytes: usize,
    pub scratch: ScratchLoc,
    /// Device word the load stream advances to `slot + 1` as each unit lands.
    pub load_counter: usize,
    pub ctx: usize,
    pub split_keys: usize,
    pub max_splits: usize,
    pub total: usize,
}

struct Bump(usize);

impl Bump {
    fn take(&mut self, bytes: usize) -> usize {
        let at = self.0;
        self.0 = (self.0 + bytes).next_multiple_of(ALIGN);
        at
    }
    fn mat(&mut self, rows: usize, cols: usize) -> Mat {
        Mat {
            off: self.take(rows * cols * 2),
            cols,
        }
    }
    fn vector(&mut self, len: usize) -> Vector {
        Vector {
            off: self.take(len * 4),
        }
    }
}

impl Layout {
    pub fn new(spec: &ModelSpec, ctx: usize) -> Layout {
        let hp = &spec.hp;
        let (h, q, kv, f) = (hp.hidden, hp.q_dim(), hp.kv_dim(), hp.ffn);
        let mut b = Bump(0);
        let embed = b.mat(hp.vocab, h);
        let mut layers = Vec::with_capacity(hp.n_layer);
        let info = hp.family.info();
        let (qk_norm, post) = (info.qk_norm, info.post_norms);
        for _ in 0..hp.n_layer {
            layers.push(LayerLoc {
                attn_norm: b.vector(h),
                wqkv: b.mat(q + 2 * kv, h),
                bqkv: spec.qkv_bias.then(|| b.vector(q + 2 * kv)),
                q_norm: qk_norm.then(|| b.vector(hp.head_dim)),
                k_norm: qk_norm.then(|| b.vector(hp.head_dim)),
                wo: b.mat(h, q),
                attn_post_norm: post.then(|| b.vector(h)),
                ffn_norm: b.vector(h),
                ffn_post_norm: post.then(|| b.vector(h)),
                wgu: b.mat(2 * f, h),
                wdown: b.mat(h, f),
                k_cache: 0,
                v_cache: 0,
            });
        }
        let out_norm = b.vector(h);
        let out = if spec.tied { embed } else { b.mat(hp.vocab, h) };
        let rope_global = b.vector(hp.head_dim / 2);
        let rope_local = hp.local_rope_base().map(|_| b.vector(hp.head_dim / 2));
        let weights_bytes = b.0;
        for l in &mut layers {
            l.k_cache = b.take(ctx * kv * 2);
            l.v_cache = b.take(ctx * kv * 2);
        }
        let kv_bytes = b.0 - weights_bytes;
        let split_keys = ctx.div_ceil(MAX_SPLITS).max(MIN_SPLIT_KEYS);
        let max_splits = ctx.div_ceil(split_keys).max(1);
        let m = MAX_BATCH;
        let scratch = ScratchLoc {
            ids: b.take(m * 4),
            dec: b.take(3 * 4),
            table: b.take(ctx.max(1) * 4),
            x: b.take(m * h * 4),
            xn: b.take(m * h * 2),
            qkv: b.take(m * (q + 2 * kv) * 4),
            q: b.take(m * q * 4),
            att16: b.take(m * q * 2),
            att32: b.take(q * 4),
            gu: b.take(m * 2 * f * 4),
            act: b.take(m * f * 2),
            proj: b.take(if post { m * h * 4 } else { 0 }),
            logits: b.take(hp.vocab * 4),
            part_acc: b.take(hp.n_head * max_splits * hp.head_dim * 4),
            part_ml: b.take(hp.n_head * max_splits * 2 * 4),
            merge_count: b.take(hp.n_head * 4),
        };
        let load_counter = b.take(4);
        Layout {
            embed,
            layers,
            out_norm,
            out,
            rope_global,
            rope_local,
            weights_bytes,
            kv_bytes,
            scratch,
            load_counter,
            ctx,
            split_keys,
            max_splits,
            total: b.0,
        }
    }

    /// The RoPE table layer `l` rotates with.
    pub fn rope_of(&self, hp: &HParams, l: usize) -> usize {
        match (hp.local_rope(l), self.rope_local) {
            (true, Some(v)) => v.off,
            _ => self.rope_global.off,
        }
    }

    /// The destination of a tensor of the model, by GGUF name.
    pub fn dest(&self, hp: &HParams, name: &str) -> Option<Dest> {
        let row = |m: &Mat, first_row: usize| Dest::F16 {
            off: m.off + first_row * m.cols * 2,
        };
        let elem = |v: &Vector, first: usize| Dest::F32 {
            off: v.off + first * 4,
        };
        match name {
            TOKEN_EMBD => return Some(row(&self.embed, 0)),
            OUTPUT_NORM => return Some(elem(&self.out_norm, 0)),
            OUTPUT => return Some(row(&self.out, 0)),
            _ => {}
        }
        let rest = name.strip_prefix("blk.")?;
        let (i, suffix) = rest.split_once('.')?;
        let l = self.layers.get(i.parse::<usize>().ok()?)?;
        let (q, kv, f) = (hp.q_dim(), hp.kv_dim(), hp.ffn);
        let t = LayerTensor::ALL
            .into_iter()
            .find(|t| t.suffix() == suffix)?;
        Some(match t {
            LayerTensor::AttnNorm => elem(&l.attn_norm, 0),
            LayerTensor::AttnQ => row(&l.wqkv, 0),
            LayerTensor::AttnK => row(&l.wqkv, q),
            LayerTensor::AttnV => row(&l.wqkv, q + kv),
            LayerTensor::AttnQBias => elem(l.bqkv.as_ref()?, 0),
            LayerTensor::AttnKBias => elem(l.bqkv.as_ref()?, q),
            LayerTensor::AttnVBias => elem(l.bqkv.as_ref()?, q + kv),
            LayerTensor::AttnQNorm => elem(l.q_norm.as_ref()?, 0),
            LayerTensor::AttnKNorm => elem(l.k_norm.as_ref()?, 0),
            LayerTensor::AttnPostNorm => elem(l.attn_post_norm.as_ref()?, 0),
            LayerTensor::FfnPostNorm => elem(l.ffn_post_norm.as_ref()?, 0),
            LayerTensor::AttnOut => row(&l.wo, 0),
            LayerTensor::FfnNorm => elem(&l.ffn_norm, 0),
            LayerTensor::FfnGate => row(&l.wgu, 0),
            LayerTensor::FfnUp => row(&l.wgu, f),
            LayerTensor::FfnDown => row(&l.wdown, 0),
        })
    }
}

/// Shapes the kernels support, checked before anything is loaded.
pub fn check_shapes(hp: &HParams) -> Result<(), String> {
    let d = hp.head_dim;
    if !d.is_multiple_of(8) || d > 256 {
        return Err(format!("the CUDA backend needs a head dimension that is a multiple of 8 and at most 256; this model has {d}"));
    }
    for (what, k) in [
        ("hidden size", hp.hidden),
        ("Q width", hp.q_dim()),
        ("FFN size", hp.ffn),
    ] {
        if !k.is_multiple_of(8) {
            return Err(format!(
                "the CUDA backend needs a {what} that is a multiple of 8; this model has {k}"
            ));
        }
    }
    if hp.n_head > 128 {
        return Err(format!(
            "the CUDA backend supports at most 128 query heads; this model has {}",
            hp.n_head
        ));
    }
    if hp.n_kv_head == 0 || !hp.n_head.is_multiple_of(hp.n_kv_head) {
        return Err(format!(
            "{} query heads are not a multiple of {} KV heads",
            hp.n_head, hp.n_kv_head
        ));
    }
    Ok(())
}
