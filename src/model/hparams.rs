//! Hyper-parameters, parsed once from GGUF metadata (`<arch>.*` keys, the family from
//! `general.architecture`) and checked for sane ranges.

use crate::gguf::Metadata;

use super::arch::Family;
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
    pub family: Family,
    pub n_layer: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub context: usize,
    pub rope_base: f32,
    /// How the global layers' RoPE frequencies are scaled.
    pub rope_scaling: RopeScaling,
    pub rms_eps: f32,
    /// `attention.sliding_window`: the positions a local layer attends to (its family's
    /// `sliding` row says which layers are local).
    pub sliding_window: Option<usize>,
}

impl HParams {
    /// Parse the `<arch>.*` keys. `vocab` is taken from the embedding tensor's dims by the caller.
    pub fn from_metadata(meta: &Metadata, vocab: usize) -> Result<HParams, ModelError> {
        let family = Family::from_name(meta.str("general.architecture")?)?;
        let key = |k: &str| family.key(k);
        let count = |k: &str, hi: usize| range(&key(k), meta.u64(&key(k))?, 1, hi);
        let n_layer = count("block_count", MAX_LAYERS)?;
        let hidden = count("embedding_length", MAX_HIDDEN)?;
        let ffn = count("feed_forward_length", MAX_FFN)?;
        let n_head = count("attention.head_count", hidden)?;
        let opt = |k: &str, lo: usize, hi: usize| match meta.opt_u64(&key(k))? {
            Some(v) => range(&key(k), v, lo, hi).map(Some),
            None => Ok(None),
        };
        let n_kv_head = opt("attention.head_count_kv", 1, n_head)?.unwrap_or(n_head);
        let context = opt("context_length", 1, 1 << 24)?.unwrap_or(4096);
        let rope_base = meta.opt_f32(&key("rope.freq_base"))?.unwrap_or(10_000.0);
        let rms_eps = meta
            .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
            .unwrap_or(1e-6);
        let rope_scaling = rope_scaling(meta, family)?;
        let head_dim = head_dim(
            family,
            hidden,
            n_head,
            opt("attention.key_length", 1, MAX_HEAD_DIM)?,
        )?;
        if let Some(v) = opt("attention.value_length", 1, MAX_HEAD_DIM)? {
            if v != head_dim {
                return Err(ModelError::Shape(format!(
                    "{} {v} differs from the key length {head_dim}; both must be equal",
                    key("attention.value_length")
                )));
            }
        }
        if n_head % n_kv_head != 0 {
            return Err(ModelError::Shape(format!(
                "{} {n_kv_head} does not divide {} {n_head}",
                key("attention.head_count_kv"),
                key("attention.head_count")
            )));
        }
        if !(rope_base.is_finite() && rope_base > 0.0) {
            return Err(ModelError::Shape(format!(
                "{} {rope_base} must be > 0",
                key("rope.freq_base")
            )));
        }
        if !(rms_eps.is_finite() && rms_eps > 0.0 && rms_eps < 1.0) {
            return Err(ModelError::Shape(format!(
                "{} {rms_eps} must be in (0, 1)",
                key("attention.layer_norm_rms_epsilon")
            )));
        }
        let vocab = range("vocabulary size", vocab as u64, 1, MAX_VOCAB)?;
        let sliding_window = sliding_window(meta, family, context)?;
        Ok(HParams {
            family,
            n_layer,
            hidden,
            ffn,
            n_head,
            n_kv_head,
            head_dim,
            vocab,
            context,
            rope_base,
            rope_scaling,
            rms_eps,
            sliding_window,
        })
    }

    /// The window of layer `l` when it is a local (sliding-window) layer.
    pub fn window(&self, l: usize) -> Option<usize> {
        let s = self.family.info().sliding?;
        let local = s.global_every.is_none_or(|n| l % n != n - 1);
        self.sliding_window.filter(|_| local)
    }

    /// Whether layer `l` rotates with the local layers' own RoPE table (see [`HParams::inv_freq`]).
    pub fn local_rope(&self, l: usize) -> bool {
        self.window(l).is_some() && self.local_rope_base().is_some()
    }

    /// The RoPE base of the local layers, when the model has local layers with their own.
    pub fn local_rope_base(&self) -> Option<f32> {
        let s = self.family.info().sliding?;
        self.sliding_window.and(s.local_rope_base)
    }

    /// The inverse frequencies RoPE rotates pair `i` of a head by (angle = position × `inv[i]`),
    /// `head_dim / 2` of them: `1 / base^(2i / head_dim)` in F32 as transformers computes them,
    /// then for the global table the file's scaling (linear: divided by the factor; Llama 3.1:
    /// divided by `rope_freqs[i]`). `local`: the local layers' table (their own base, unscaled).
    pub fn inv_freq(&self, local: bool) -> Vec<f32> {
        let base = match local {
            true => self.local_rope_base().unwrap_or(self.rope_base),
            false => self.rope_base,
        };
        let d = self.head_dim;
        let ramp = yarn_ramp(&self.rope_scaling, d, base);
        (0..d / 2)
            .map(|i| {
                let pos = base.powf((2 * i) as f32 / d as f32);
                let f = 1.0 / pos;
                match (&self.rope_scaling, local) {
                    (_, true) | (RopeScaling::None, _) => f,
                    (RopeScaling::Linear(k), false) => f / k,
                    (RopeScaling::Factors(v), false) => f / v[i],
                    (RopeScaling::Yarn { factor, .. }, false) => {
                        let keep = 1.0 - ramp[i];
                        (1.0 / (factor * pos)) * (1.0 - keep) + f * keep
                    }
                }
            })
            .collect()
    }

    /// What RoPE's cos and sin are multiplied by: YaRN's attention factor `0.1 ln(factor) + 1`
    /// for the global layers, else 1.
    pub fn rope_mscale(&self, local: bool) -> f32 {
        match (&self.rope_scaling, local) {
            (RopeScaling::Yarn { factor, .. }, false) if *factor > 1.0 => {
                (0.1 * f64::from(*factor).ln() + 1.0) as f32
            }
            _ => 1.0,
        }
    }

    /// The factor attention scores are scaled by: 1/sqrt(head_dim), except Gemma 3 27B's
    /// 1/sqrt(hidden / heads) (its `query_pre_attn_scalar`; the 62-layer model, as llama.cpp tells
    /// it apart: its files carry no key for it).
    pub fn attn_scale(&self) -> f32 {
        let d = match (self.family, self.n_layer) {
            (Family::Gemma3, 62) => self.hidden / self.n_head,
            _ => self.head_dim,
        };
        1.0 / (d as f32).sqrt()
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

/// The head dimension: `attention.key_length` where the file gives it, else hidden / heads; even
/// (RoPE rotates pairs) and at most `MAX_HEAD_DIM`.
fn head_dim(
    family: Family,
    hidden: usize,
    n_head: usize,
    key_length: Option<usize>,
) -> Result<usize, ModelError> {
    let d = match key_length {
        Some(d) => d,
        None if hidden.is_multiple_of(n_head) => hidden / n_head,
        None => {
            return Err(ModelError::Shape(format!(
                "{} {n_head} does not divide {} {hidden} (and {} is not given)",
                family.key("attention.head_count"),
                family.key("embedding_length"),
                family.key("attention.key_length")
            )))
        }
    };
    if d % 2 != 0 || d > MAX_HEAD_DIM {
        return Err(ModelError::Shape(format!(
            "head dimension {d} must be even and at most {MAX_HEAD_DIM}"
        )));
    }
    Ok(d)
}

/// `<arch>.attention.sliding_window` for a family with local layers: at least 1 and at most the
/// context (a larger window is a misread file, not a longer reach).
fn sliding_window(
    meta: &Metadata,
    family: Family,
    context: usize,
) -> Result<Option<usize>, ModelError> {
    let k = family.key("attention.sliding_window");
    let Some(w) = meta.opt_u64(&k)? else {
        return Ok(None);
    };
    if family.info().sliding.is_none() {
        return Err(ModelError::Shape(format!(
            "{k} is set, but '{}' models have no sliding-window layers",
            family.name()
        )));
    }
    range(&k, w, 1, context).map(Some)
}

/// How the global layers' RoPE frequencies are scaled beyond the base.
#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// `rope.scaling.type = linear`: every frequency divided by `rope.scaling.factor` (positions
    /// interpolated; Gemma 3's larger models, extended Llama 2 files).
    Linear(f32),
    /// Llama 3.1/3.2's `rope_freqs.weight` (`head_dim / 2` F32 factors the converter computed
    /// from the `llama3` rope type): frequency `i` divided by factor `i`. Set by
    /// `ModelSpec::from_file`, which reads the tensor.
    Factors(Vec<f32>),
    /// YaRN (`rope.scaling.type = yarn`, Qwen2/Qwen3 beyond their trained context): frequencies
    /// blended between interpolated (divided by `factor`) and kept along a ramp between the
    /// dimensions that turn `beta_fast` and `beta_slow` times over `original_context`, and cos/sin
    /// scaled by `0.1 ln(factor) + 1`, as transformers computes them.
    Yarn {
        factor: f32,
        original_context: usize,
        beta_fast: f32,
        beta_slow: f32,
    },
}

/// YaRN's ramp over the `head_dim / 2` frequencies (0 below the fast boundary, 1 above the slow
/// one), as transformers' `linear_ramp_factor` over `find_correction_range` (truncated); empty for
/// other scalings.
fn yarn_ramp(scaling: &RopeScaling, d: usize, base: f32) -> Vec<f32> {
    let RopeScaling::Yarn {
        original_context,
        beta_fast,
        beta_slow,
        ..
    } = *scaling
    else {
        return Vec::new();
    };
    let (dim, base, ctx) = (d as f64, f64::from(base), original_context as f64);
    let correction = |rotations: f64| {
        (dim * (ctx / (rotations * 2.0 * std::f64::consts::PI)).ln()) / (2.0 * base.ln())
    };
    let low = correction(f64::from(beta_fast)).floor().max(0.0);
    let high = correction(f64::from(beta_slow)).ceil().min(dim - 1.0);
    let (low, mut high) = (low as f32, high as f32);
    if low == high {
        high += 0.001;
    }
    (0..d / 2)
        .map(|i| ((i as f32 - low) / (high - low)).clamp(0.0, 1.0))
        .collect()
}

/// `<arch>.rope.scaling.type`: none, linear (with its factor) or yarn (with its factor and
/// original context); others are refused naming the key, rather than served with wrong positions.
fn rope_scaling(meta: &Metadata, family: Family) -> Result<RopeScaling, ModelError> {
    let k = family.key("rope.scaling.type");
    match meta.opt_str(&k)? {
        None | Some("none") => Ok(RopeScaling::None),
        Some("linear") => {
            let fk = family.key("rope.scaling.factor");
            match meta.opt_f32(&fk)? {
                Some(f) if f.is_finite() && (1.0..=1024.0).contains(&f) => {
                    Ok(RopeScaling::Linear(f))
                }
                Some(f) => Err(ModelError::Shape(format!(
                    "{fk} {f} is out of range; expected 1 to 1024"
                ))),
                None => Err(ModelError::Shape(format!(
                    "{k} is 'linear' but {fk} is missing"
                ))),
            }
        }
        Some("yarn") => yarn_scaling(meta, family),
        Some(t) => Err(ModelError::Shape(format!(
            "{k} is '{t}'; supported: none, linear, yarn (and Llama 3.1's rope_freqs.weight)"
        ))),
    }
}

/// YaRN's keys: the factor and the original context (required), the ramp's boundaries (llama.cpp's
/// `yarn_beta_fast` / `yarn_beta_slow`, default 32 and 1).
fn yarn_scaling(meta: &Metadata, family: Family) -> Result<RopeScaling, ModelError> {
    let (fk, ck) = (
        family.key("rope.scaling.factor"),
        family.key("rope.scaling.original_context_length"),
    );
    let factor = match meta.opt_f32(&fk)? {
        Some(f) if f.is_finite() && (1.0..=1024.0).contains(&f) => f,
        Some(f) => {
            return Err(ModelError::Shape(format!(
                "{fk} {f} is out of range; expected 1 to 1024"
            )))
        }
        None => return Err(ModelError::Shape(format!("yarn scaling needs {fk}"))),
    };
    let original_context = match meta.opt_u64(&ck)? {
        Some(c) => range(&ck, c, 1, 1 << 24)?,
        None => return Err(ModelError::Shape(format!("yarn scaling needs {ck}"))),
    };
    let beta = |k: &str, default: f32| -> Result<f32, ModelError> {
        let key = family.key(k);
        match meta.opt_f32(&key)? {
            None => Ok(default),
            Some(b) if b.is_finite() && b > 0.0 => Ok(b),
            Some(b) => Err(ModelError::Shape(format!("{key} {b} must be > 0"))),
        }
    };
    Ok(RopeScaling::Yarn {
        factor,
        original_context,
        beta_fast: beta("rope.scaling.yarn_beta_fast", 32.0)?,
        beta_slow: beta("rope.scaling.yarn_beta_slow", 1.0)?,
    })
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
