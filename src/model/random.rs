//! Random-weight models of any supported family and shape, written with our GGUF writer: tiny
//! ones for tests, real-size ones for speed and loading measurements (values don't change either).

use std::path::Path;

use half::{bf16, f16};

use super::arch::{Family, Presence};
use super::hparams::RopeScaling;
use super::names;
use super::HParams;
use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, Value};
use crate::rng::Rng;

/// Element type of the 2-D weights (norms and biases are always F32). The quantized ones are
/// written by our quantizer (`quant::quantize`): rows must be whole blocks (32 values; 256 for the
/// K types).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WeightDtype {
    F16,
    F32,
    Bf16,
    #[value(name = "q8_0")]
    Q8_0,
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q5_0")]
    Q5_0,
    #[value(name = "q5_1")]
    Q5_1,
    #[value(name = "q4_k")]
    Q4K,
    #[value(name = "q5_k")]
    Q5K,
    #[value(name = "q6_k")]
    Q6K,
}

impl WeightDtype {
    /// The quantized type it writes, if any.
    pub fn quantized(self) -> Option<GgmlType> {
        Some(match self {
            WeightDtype::F16 | WeightDtype::F32 | WeightDtype::Bf16 => return None,
            WeightDtype::Q8_0 => GgmlType::Q8_0,
            WeightDtype::Q4_0 => GgmlType::Q4_0,
            WeightDtype::Q4_1 => GgmlType::Q4_1,
            WeightDtype::Q5_0 => GgmlType::Q5_0,
            WeightDtype::Q5_1 => GgmlType::Q5_1,
            WeightDtype::Q4K => GgmlType::Q4K,
            WeightDtype::Q5K => GgmlType::Q5K,
            WeightDtype::Q6K => GgmlType::Q6K,
        })
    }
}

/// Where the vocabulary comes from.
#[derive(Clone, Debug)]
pub enum VocabSource {
    /// Copy every `tokenizer.*` key from this GGUF file; vocab size = its token count.
    FromFile(std::path::PathBuf),
    /// No tokenizer; a vocabulary of this many ids (forward-only tests).
    Size(usize),
}

/// What to generate.
#[derive(Clone, Debug)]
pub struct RandomModelSpec {
    pub family: Family,
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub ffn: usize,
    pub vocab: VocabSource,
    pub tied: bool,
    pub dtype: WeightDtype,
    pub seed: u64,
    pub context: usize,
    pub rope_base: f32,
    /// Written as `attention.key_length`/`value_length` when given; else hidden / heads.
    pub head_dim: Option<usize>,
    /// `attention.sliding_window` of a family with local layers (default 512, at most the
    /// context); refused for others.
    pub sliding_window: Option<usize>,
    /// RoPE scaling written into the file.
    pub rope_scaling: RopeScalingSpec,
}

/// RoPE scaling of a random model, as a converter writes it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RopeScalingSpec {
    #[default]
    None,
    /// `rope.scaling.type = linear` with this factor.
    Linear(f32),
    /// Llama 3.1's `llama3` rope type, written as llama.cpp's converter does: the per-frequency
    /// factors in `rope_freqs.weight`.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_context: f64,
    },
    /// `rope.scaling.type = yarn` with this factor and original context.
    Yarn {
        factor: f32,
        original_context: usize,
    },
}

impl std::str::FromStr for RopeScalingSpec {
    type Err = String;

    /// `none`, `linear:FACTOR`, `llama3:FACTOR:LOW:HIGH:ORIGINAL_CONTEXT` or
    /// `yarn:FACTOR:ORIGINAL_CONTEXT`.
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let nums: Result<Vec<f64>, _> = parts[1..].iter().map(|p| p.parse::<f64>()).collect();
        let nums = nums.map_err(|e| format!("'{s}': {e}"))?;
        match (parts[0], nums.as_slice()) {
            ("none", []) => Ok(RopeScalingSpec::None),
            ("linear", [f]) if *f >= 1.0 => Ok(RopeScalingSpec::Linear(*f as f32)),
            ("llama3", [f, lo, hi, ctx]) if *f >= 1.0 && hi > lo && *ctx > 0.0 => {
                Ok(RopeScalingSpec::Llama3 {
                    factor: *f,
                    low_freq_factor: *lo,
                    high_freq_factor: *hi,
                    original_context: *ctx,
                })
            }
            ("yarn", [f, ctx]) if *f >= 1.0 && *ctx >= 1.0 => Ok(RopeScalingSpec::Yarn {
                factor: *f as f32,
                original_context: *ctx as usize,
            }),
            _ => Err(format!(
                "'{s}': expected none, linear:FACTOR (>= 1), llama3:FACTOR:LOW:HIGH:CONTEXT or \
                 yarn:FACTOR:CONTEXT"
            )),
        }
    }
}

impl RopeScalingSpec {
    /// Llama 3.1's per-frequency factors for `head_dim` and `base` (llama.cpp's converter's
    /// formula, in f64): 1 for short wavelengths, `factor` for long ones, smoothly between.
    pub fn llama3_factors(&self, head_dim: usize, base: f32) -> Option<Vec<f32>> {
        let RopeScalingSpec::Llama3 {
            factor,
            low_freq_factor: lo,
            high_freq_factor: hi,
            original_context: ctx,
        } = *self
        else {
            return None;
        };
        let (low_wavelen, high_wavelen) = (ctx / lo, ctx / hi);
        let factors = (0..head_dim / 2).map(|i| {
            let freq = 1.0 / (base as f64).powf((2 * i) as f64 / head_dim as f64);
            let wavelen = 2.0 * std::f64::consts::PI / freq;
            if wavelen < high_wavelen {
                1.0
            } else if wavelen > low_wavelen {
                factor
            } else {
                let smooth = (ctx / wavelen - lo) / (hi - lo);
                1.0 / ((1.0 - smooth) / factor + smooth)
            }
        });
        Some(factors.map(|f| f as f32).collect())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RandomModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("invalid shape: {0}")]
    Shape(String),
}

/// Write a random model to `out` and return its hyper-parameters.
pub fn write_random_model(spec: &RandomModelSpec, out: &Path) -> Result<HParams, RandomModelError> {
    write_random_model_with(spec, out, &mut || {})
}

/// The units `write_random_model_with` reports: the embeddings, each layer, the head.
pub fn units(spec: &RandomModelSpec) -> u64 {
    spec.layers as u64 + 2
}

/// `write_random_model`, calling `on_unit` once each of the `units(spec)` units is generated
/// (the file is written after the last).
pub fn write_random_model_with(
    spec: &RandomModelSpec,
    out: &Path,
    on_unit: &mut dyn FnMut(),
) -> Result<HParams, RandomModelError> {
    check_shape(spec)?;
    let mut w = GgufWriter::new();
    let hp = add_metadata(&mut w, spec)?;
    add_tensors(&mut w, spec, &hp, on_unit)?;
    w.write_file(out)?;
    Ok(hp)
}

/// Refuse shapes the forward pass cannot run.
fn check_shape(spec: &RandomModelSpec) -> Result<(), RandomModelError> {
    let divides = spec.head_dim.is_some() || spec.hidden.is_multiple_of(spec.heads.max(1));
    if spec.heads == 0
        || spec.kv_heads == 0
        || !divides
        || !spec.heads.is_multiple_of(spec.kv_heads)
    {
        return Err(RandomModelError::Shape(format!(
            "heads {} must divide hidden {} (unless --head-dim is given) and kv-heads {} must \
             divide heads",
            spec.heads, spec.hidden, spec.kv_heads
        )));
    }
    let head_dim = spec.head_dim.unwrap_or(spec.hidden / spec.heads);
    if !head_dim.is_multiple_of(2) || head_dim == 0 || spec.layers == 0 || spec.ffn == 0 {
        return Err(RandomModelError::Shape(
            "head dim must be even; layers and ffn must be >= 1".into(),
        ));
    }
    Ok(())
}

/// The metadata (and the tokenizer, when copied); returns the hyper-parameters it describes.
fn add_metadata(w: &mut GgufWriter, spec: &RandomModelSpec) -> Result<HParams, RandomModelError> {
    let arch = spec.family.name();
    w.add_kv("general.architecture", Value::String(arch.into()))?;
    w.add_kv(
        "general.name",
        Value::String(format!(
            "random-{arch}-{}l-{}h-seed{}",
            spec.layers, spec.hidden, spec.seed
        )),
    )?;
    let file_type = match spec.dtype {
        WeightDtype::F32 => 0,
        WeightDtype::F16 => 1,
        WeightDtype::Bf16 => 32,
        // llama.cpp's `general.file_type` of the "mostly" types.
        WeightDtype::Q4_0 => 2,
        WeightDtype::Q4_1 => 3,
        WeightDtype::Q8_0 => 7,
        WeightDtype::Q5_0 => 8,
        WeightDtype::Q5_1 => 9,
        WeightDtype::Q4K => 15,
        WeightDtype::Q5K => 17,
        WeightDtype::Q6K => 18,
    };
    w.add_kv("general.file_type", Value::U32(file_type))?;
    let k = |s: &str| spec.family.key(s);
    w.add_kv(k("block_count"), Value::U32(spec.layers as u32))?;
    w.add_kv(k("context_length"), Value::U32(spec.context as u32))?;
    w.add_kv(k("embedding_length"), Value::U32(spec.hidden as u32))?;
    w.add_kv(k("feed_forward_length"), Value::U32(spec.ffn as u32))?;
    w.add_kv(k("attention.head_count"), Value::U32(spec.heads as u32))?;
    w.add_kv(
        k("attention.head_count_kv"),
        Value::U32(spec.kv_heads as u32),
    )?;
    w.add_kv(k("rope.freq_base"), Value::F32(spec.rope_base))?;
    w.add_kv(k("attention.layer_norm_rms_epsilon"), Value::F32(1e-6))?;
    if let Some(d) = spec.head_dim {
        w.add_kv(k("attention.key_length"), Value::U32(d as u32))?;
        w.add_kv(k("attention.value_length"), Value::U32(d as u32))?;
    }
    // A default window only where the family interleaves local and global layers (Gemma 3).
    let window = match spec.family.info().sliding {
        Some(s) if s.global_every.is_some() => {
            Some(spec.sliding_window.unwrap_or(512).min(spec.context))
        }
        _ => spec.sliding_window,
    };
    if let Some(win) = window {
        w.add_kv(k("attention.sliding_window"), Value::U32(win as u32))?;
    }
    let rope_scaling = add_rope_scaling(w, spec)?;
    let vocab = match &spec.vocab {
        VocabSource::Size(n) => *n,
        VocabSource::FromFile(p) => copy_tokenizer(w, p)?,
    };
    Ok(HParams {
        family: spec.family,
        n_layer: spec.layers,
        hidden: spec.hidden,
        ffn: spec.ffn,
        n_head: spec.heads,
        n_kv_head: spec.kv_heads,
        head_dim: spec.head_dim.unwrap_or(spec.hidden / spec.heads),
        vocab,
        context: spec.context,
        rope_base: spec.rope_base,
        rope_scaling,
        rms_eps: 1e-6,
        sliding_window: window,
    })
}

/// The RoPE scaling keys `spec` asks for (Llama 3.1's factors go in as `rope_freqs.weight`, with
/// the tensors); what the file then says.
fn add_rope_scaling(
    w: &mut GgufWriter,
    spec: &RandomModelSpec,
) -> Result<RopeScaling, RandomModelError> {
    let k = |s: &str| spec.family.key(s);
    Ok(match spec.rope_scaling {
        RopeScalingSpec::None => RopeScaling::None,
        RopeScalingSpec::Linear(f) => {
            w.add_kv(k("rope.scaling.type"), Value::String("linear".into()))?;
            w.add_kv(k("rope.scaling.factor"), Value::F32(f))?;
            RopeScaling::Linear(f)
        }
        RopeScalingSpec::Yarn {
            factor,
            original_context,
        } => {
            w.add_kv(k("rope.scaling.type"), Value::String("yarn".into()))?;
            w.add_kv(k("rope.scaling.factor"), Value::F32(factor))?;
            w.add_kv(
                k("rope.scaling.original_context_length"),
                Value::U32(original_context as u32),
            )?;
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast: 32.0,
                beta_slow: 1.0,
            }
        }
        l @ RopeScalingSpec::Llama3 { .. } => {
            let d = spec.head_dim.unwrap_or(spec.hidden / spec.heads);
            RopeScaling::Factors(l.llama3_factors(d, spec.rope_base).unwrap_or_default())
        }
    })
}

/// Every tensor, in file order, from one generator seeded by `spec.seed`.
fn add_tensors(
    w: &mut GgufWriter,
    spec: &RandomModelSpec,
    hp: &HParams,
    on_unit: &mut dyn FnMut(),
) -> Result<(), RandomModelError> {
    let mut rng = Rng::new(spec.seed);
    let dims = |n: &str| names::global_dims(n, hp).unwrap_or_default();
    if let RopeScaling::Factors(f) = &hp.rope_scaling {
        let bytes: Vec<u8> = f.iter().flat_map(|v| v.to_le_bytes()).collect();
        w.add_tensor(names::ROPE_FREQS, GgmlType::F32, &[f.len() as u64], bytes)?;
    }
    let embd = dims(names::TOKEN_EMBD);
    add_matrix(w, &mut rng, names::TOKEN_EMBD, &embd, spec.dtype, 1.0)?;
    on_unit();
    // Biases only where the family always has them (Llama-family files have none).
    let biases = spec.family.info().qkv_bias == Presence::Required;
    let tensors = super::layer_tensors(spec.family, biases);
    for layer in 0..spec.layers {
        for &t in &tensors {
            let d = t.dims_in(hp);
            let name = t.name(layer);
            match t {
                _ if t.is_vector() && !t.is_qkv_bias() => {
                    add_vector(w, &mut rng, &name, &d, 1.0, 0.2)?
                }
                _ if t.is_vector() => add_vector(w, &mut rng, &name, &d, 0.0, 0.1)?,
                _ => {
                    let std = 1.0 / (d[0] as f32).sqrt();
                    add_matrix(w, &mut rng, &name, &d, spec.dtype, std)?
                }
            }
        }
        on_unit();
    }
    let norm = dims(names::OUTPUT_NORM);
    add_vector(w, &mut rng, names::OUTPUT_NORM, &norm, 1.0, 0.2)?;
    if !spec.tied {
        let d = dims(names::OUTPUT);
        let std = 1.0 / (d[0] as f32).sqrt();
        add_matrix(w, &mut rng, names::OUTPUT, &d, spec.dtype, std)?;
    }
    on_unit();
    Ok(())
}

fn copy_tokenizer(w: &mut GgufWriter, path: &Path) -> Result<usize, RandomModelError> {
    let src = GgufFile::open(path)?;
    for (key, v) in src.metadata().iter() {
        if key.starts_with("tokenizer.") {
            w.add_kv(key, v.clone())?;
        }
    }
    Ok(src.metadata().strings("tokenizer.ggml.tokens")?.len())
}

/// Elements drawn by one task: tensors bigger than this are filled in parallel, each chunk from
/// its own generator seeded from the tensor's seed and the chunk's index (deterministic for a seed).
const CHUNK_ELEMS: usize = 1 << 20;

/// `n` values `mean + std * N(0,1)` encoded by `encode` into `width` bytes each.
fn random_bytes(
    rng: &mut Rng,
    n: u64,
    width: usize,
    mean: f32,
    std: f32,
    encode: impl Fn(f32, &mut [u8]) + Sync,
) -> Vec<u8> {
    use rayon::prelude::*;
    let tensor_seed = rng.next_u64();
    let mut bytes = vec![0u8; n as usize * width];
    bytes
        .par_chunks_mut(CHUNK_ELEMS * width)
        .enumerate()
        .for_each(|(i, chunk)| {
            let mut r = Rng::new(tensor_seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for out in chunk.chunks_exact_mut(width) {
                encode(mean + std * r.normal(), out);
            }
        });
    bytes
}

fn add_vector(
    w: &mut GgufWriter,
    rng: &mut Rng,
    name: &str,
    dims: &[u64],
    mean: f32,
    std: f32,
) -> Result<(), RandomModelError> {
    let n: u64 = dims.iter().product();
    let bytes = random_bytes(rng, n, 4, mean, std, |v, o| {
        o.copy_from_slice(&v.to_le_bytes())
    });
    w.add_tensor(name, GgmlType::F32, dims, bytes)?;
    Ok(())
}

fn add_matrix(
    w: &mut GgufWriter,
    rng: &mut Rng,
    name: &str,
    dims: &[u64],
    dtype: WeightDtype,
    std: f32,
) -> Result<(), RandomModelError> {
    let n: u64 = dims.iter().product();
    if let Some(ty) = dtype.quantized() {
        let cols = dims[0] as usize;
        let block = ty.block_elems() as usize;
        if !cols.is_multiple_of(block) {
            return Err(RandomModelError::Shape(format!(
                "{name} has rows of {cols} values; {} needs a multiple of {block}",
                ty.name()
            )));
        }
        let raw = random_bytes(rng, n, 4, 0.0, std, |v, o| {
            o.copy_from_slice(&v.to_le_bytes())
        });
        let x: Vec<f32> = bytemuck::pod_collect_to_vec(&raw);
        use rayon::prelude::*;
        let parts = x
            .par_chunks(cols * 64)
            .map(|rows| crate::quant::quantize(ty, rows))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| RandomModelError::Shape(e.to_string()))?;
        let bytes = parts.concat();
        w.add_tensor(name, ty, dims, bytes)?;
        return Ok(());
    }
    let (ty, bytes) = match dtype {
        WeightDtype::F32 => (
            GgmlType::F32,
            random_bytes(rng, n, 4, 0.0, std, |v, o| {
                o.copy_from_slice(&v.to_le_bytes())
            }),
        ),
        WeightDtype::F16 => (
            GgmlType::F16,
            random_bytes(rng, n, 2, 0.0, std, |v, o| {
                o.copy_from_slice(&f16::from_f32(v).to_le_bytes())
            }),
        ),
        _ => (
            GgmlType::BF16,
            random_bytes(rng, n, 2, 0.0, std, |v, o| {
                o.copy_from_slice(&bf16::from_f32(v).to_le_bytes())
            }),
        ),
    };
    w.add_tensor(name, ty, dims, bytes)?;
    Ok(())
}
