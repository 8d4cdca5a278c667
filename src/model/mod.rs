//! The model description: the architecture table, hyper-parameters, the tensor-name table, and
//! the check that a GGUF file holds every tensor at the shape and type its family and
//! hyper-parameters call for.

pub mod arch;
pub mod hparams;
pub mod names;
pub mod random;

use arch::Presence;
pub use hparams::HParams;
use names::{LayerTensor, OUTPUT, OUTPUT_NORM, ROPE_FREQS, TOKEN_EMBD};

use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};

/// Why a file cannot be used as a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("general.architecture is '{arch}': {why}; supported: {supported}")]
    Architecture {
        arch: String,
        why: &'static str,
        supported: String,
    },
    #[error("{key} = {value} is out of range; expected {lo}..={hi}")]
    Range {
        key: String,
        value: u64,
        lo: usize,
        hi: usize,
    },
    #[error("{0}")]
    Shape(String),
    #[error("tensor '{0}' is missing")]
    MissingTensor(String),
    #[error("tensor '{name}' has wrong shape; expected {expected:?}, got {got:?}")]
    TensorShape {
        name: String,
        expected: Vec<u64>,
        got: Vec<u64>,
    },
    #[error("tensor '{name}' has type {ty}, which this engine cannot compute with")]
    TensorType { name: String, ty: &'static str },
    #[error("tensor '{name}': {message}")]
    TensorData { name: String, message: String },
    #[error(
        "model weights need {needed} bytes of memory; {available} bytes are available ({limit})"
    )]
    Memory {
        needed: u64,
        available: u64,
        limit: String,
    },
}

/// A validated model: its hyper-parameters, whether the LM head is tied to the embeddings, and
/// whether its layers carry Q/K/V biases.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub hp: HParams,
    pub tied: bool,
    pub qkv_bias: bool,
}

impl ModelSpec {
    /// Validate the whole tensor index against the hyper-parameters, before any weight is read.
    pub fn from_file(file: &GgufFile) -> Result<ModelSpec, ModelError> {
        let embd = require(file, TOKEN_EMBD)?;
        let vocab = embd.dims.get(1).copied().unwrap_or(0);
        let mut hp = HParams::from_metadata(file.metadata(), vocab as usize)?;
        if let Some(f) = rope_factors(file, &hp)? {
            hp.rope_scaling = hparams::RopeScaling::Factors(f);
        }
        check(file, TOKEN_EMBD, names::global_dims(TOKEN_EMBD, &hp))?;
        check(file, OUTPUT_NORM, names::global_dims(OUTPUT_NORM, &hp))?;
        let tied = file.tensor(OUTPUT).is_none();
        if !tied {
            check(file, OUTPUT, names::global_dims(OUTPUT, &hp))?;
        }
        let qkv_bias = match hp.family.info().qkv_bias {
            Presence::Required => true,
            Presence::Absent => false,
            Presence::Optional => file.tensor(&LayerTensor::AttnQBias.name(0)).is_some(),
        };
        let spec = ModelSpec { hp, tied, qkv_bias };
        let present = spec.layer_tensors();
        for layer in 0..spec.hp.n_layer {
            for t in LayerTensor::ALL {
                let name = t.name(layer);
                if present.contains(&t) {
                    check(file, &name, Some(t.dims_in(&spec.hp)))?;
                } else if t.is_qkv_bias() && file.tensor(&name).is_some() {
                    return Err(ModelError::Shape(format!(
                        "tensor '{name}' is present but layer 0 has no Q/K/V biases"
                    )));
                }
            }
        }
        Ok(spec)
    }

    /// The tensors each layer of this model holds.
    pub fn layer_tensors(&self) -> Vec<LayerTensor> {
        layer_tensors(self.hp.family, self.qkv_bias)
    }
}

/// The tensors each layer of a `family` model holds (with Q/K/V biases or not).
pub fn layer_tensors(family: arch::Family, qkv_bias: bool) -> Vec<LayerTensor> {
    let info = family.info();
    LayerTensor::ALL
        .into_iter()
        .filter(|t| !t.is_qkv_bias() || qkv_bias)
        .filter(|t| !t.is_qk_norm() || info.qk_norm)
        .filter(|t| !t.is_post_norm() || info.post_norms)
        .collect()
}

/// Llama 3.1's `rope_freqs.weight`: `head_dim / 2` F32 factors, each finite and positive; only
/// for a family without local layers and without another scaling.
fn rope_factors(file: &GgufFile, hp: &HParams) -> Result<Option<Vec<f32>>, ModelError> {
    let Some(t) = file.tensor(ROPE_FREQS) else {
        return Ok(None);
    };
    let half = hp.head_dim as u64 / 2;
    if t.dims != [half] || t.ty != GgmlType::F32 {
        return Err(ModelError::TensorData {
            name: ROPE_FREQS.into(),
            message: format!(
                "expected {half} F32 factors (head dimension / 2), got {:?} {}",
                t.dims,
                t.ty.name()
            ),
        });
    }
    if hp.rope_scaling != hparams::RopeScaling::None
        || hp
            .family
            .info()
            .sliding
            .is_some_and(|s| s.local_rope_base.is_some())
    {
        return Err(ModelError::TensorData {
            name: ROPE_FREQS.into(),
            message: format!(
                "frequency factors cannot be combined with {} or a {} model's local layers",
                hp.family.key("rope.scaling.type"),
                hp.family.name()
            ),
        });
    }
    let f: Vec<f32> = file
        .tensor_bytes(t)
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    if let Some((i, v)) = f
        .iter()
        .enumerate()
        .find(|(_, v)| !(v.is_finite() && **v > 0.0))
    {
        return Err(ModelError::TensorData {
            name: ROPE_FREQS.into(),
            message: format!("factor {i} is {v}; each must be finite and > 0"),
        });
    }
    Ok(Some(f))
}

fn require<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn check(file: &GgufFile, name: &str, dims: Option<Vec<u64>>) -> Result<(), ModelError> {
    let t = require(file, name)?;
    let expected = dims.unwrap_or_default();
    if t.dims != expected {
        return Err(ModelError::TensorShape {
            name: name.to_string(),
            expected,
            got: t.dims.clone(),
        });
    }
    if !computable(t.ty) {
        return Err(ModelError::TensorType {
            name: name.to_string(),
            ty: t.ty.name(),
        });
    }
    Ok(())
}

/// Types the engine can read (dequantized on load where quantized).
pub fn computable(ty: GgmlType) -> bool {
    crate::quant::supported(ty)
}
