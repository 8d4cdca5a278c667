//! The Qwen2 model description: hyper-parameters, the tensor-name table, and the check that a
//! GGUF file holds every tensor at the shape and type the hyper-parameters call for.

pub mod hparams;
pub mod names;
pub mod random;

pub use hparams::HParams;
use names::{LayerTensor, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};

use crate::gguf::{GgmlType, GgufError, GgufFile, TensorInfo};

/// Why a file cannot be used as a Qwen2 model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("general.architecture is '{0}'; expected 'qwen2'")]
    Architecture(String),
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

/// A validated model: its hyper-parameters and whether the LM head is tied to the embeddings.
#[derive(Clone, Debug)]
pub struct ModelSpec {
    pub hp: HParams,
    pub tied: bool,
}

impl ModelSpec {
    /// Validate the whole tensor index against the hyper-parameters, before any weight is read.
    pub fn from_file(file: &GgufFile) -> Result<ModelSpec, ModelError> {
        let embd = require(file, TOKEN_EMBD)?;
        let vocab = embd.dims.get(1).copied().unwrap_or(0);
        let hp = HParams::from_metadata(file.metadata(), vocab as usize)?;
        check(file, TOKEN_EMBD, names::global_dims(TOKEN_EMBD, &hp))?;
        check(file, OUTPUT_NORM, names::global_dims(OUTPUT_NORM, &hp))?;
        let tied = file.tensor(OUTPUT).is_none();
        if !tied {
            check(file, OUTPUT, names::global_dims(OUTPUT, &hp))?;
        }
        for layer in 0..hp.n_layer {
            for t in LayerTensor::ALL {
                check(file, &t.name(layer), Some(t.dims_in(&hp)))?;
            }
        }
        Ok(ModelSpec { hp, tied })
    }
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
