//! Reading a unit's tensors from a GGUF file into the CPU backend's compute layout.
//!
//! Bytes come in with `pread` (never by touching the mmap, which would SIGBUS if the file were
//! truncated under us). Matrices become F16 (F16 and quantized sources) or F32 (F32/BF16
//! sources); Q/K/V are stacked into one matrix and gate/up into another, so each layer needs
//! three parallel products fewer per token. Norms and biases are F32.

use half::f16;

use super::matrix::{MatData, Matrix};
use crate::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::model::names::{LayerTensor, OUTPUT, OUTPUT_NORM, TOKEN_EMBD};
use crate::model::{ModelError, ModelSpec};

/// One decoder layer.
#[derive(Debug)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>, // (hidden)
    pub wqkv: Matrix,        // (q_dim + 2 kv_dim, hidden)
    pub bqkv: Vec<f32>,      // (q_dim + 2 kv_dim)
    pub wo: Matrix,          // (hidden, q_dim)
    pub ffn_norm: Vec<f32>,  // (hidden)
    pub w_gate_up: Matrix,   // (2 ffn, hidden): gate rows, then up rows
    pub w_down: Matrix,      // (hidden, ffn)
}

/// Final norm and LM head (`output` is None when tied to the embeddings).
#[derive(Debug)]
pub struct HeadWeights {
    pub norm: Vec<f32>,         // (hidden)
    pub output: Option<Matrix>, // (vocab, hidden)
}

impl LayerWeights {
    pub fn bytes(&self) -> usize {
        let v = (self.attn_norm.len() + self.bqkv.len() + self.ffn_norm.len()) * 4;
        v + self.wqkv.bytes() + self.wo.bytes() + self.w_gate_up.bytes() + self.w_down.bytes()
    }
}

fn info<'a>(file: &'a GgufFile, name: &str) -> Result<&'a TensorInfo, ModelError> {
    file.tensor(name)
        .ok_or_else(|| ModelError::MissingTensor(name.to_string()))
}

fn data_err(t: &TensorInfo, e: impl std::fmt::Display) -> ModelError {
    ModelError::TensorData {
        name: t.name.clone(),
        message: e.to_string(),
    }
}

/// Read a whole tensor's raw bytes.
fn read_raw(file: &GgufFile, t: &TensorInfo) -> Result<Vec<u8>, ModelError> {
    let mut buf = vec![0u8; t.n_bytes as usize];
    file.read_tensor_at(t, 0, &mut buf)?;
    Ok(buf)
}

/// A 1-D tensor as F32.
pub fn load_vector(file: &GgufFile, name: &str) -> Result<Vec<f32>, ModelError> {
    let t = info(file, name)?;
    let raw = read_raw(file, t)?;
    let mut out = vec![0f32; t.n_elems as usize];
    crate::quant::dequantize(t.ty, &raw, &mut out).map_err(|e| data_err(t, e))?;
    Ok(out)
}

/// Stack the rows of several 2-D tensors (same row length) into one matrix.
pub fn load_stacked(file: &GgufFile, names: &[&str]) -> Result<Matrix, ModelError> {
    let infos = names
        .iter()
        .map(|n| info(file, n))
        .collect::<Result<Vec<_>, _>>()?;
    let cols = infos.first().map(|t| t.row_len() as usize).unwrap_or(0);
    let rows: usize = infos.iter().map(|t| t.rows() as usize).sum();
    let wide = infos
        .iter()
        .any(|t| matches!(t.ty, GgmlType::F32 | GgmlType::BF16));
    let data = if wide {
        let mut out = vec![0f32; rows * cols];
        let mut at = 0;
        for t in &infos {
            let n = t.n_elems as usize;
            let raw = read_raw(file, t)?;
            crate::quant::dequantize(t.ty, &raw, &mut out[at..at + n])
                .map_err(|e| data_err(t, e))?;
            at += n;
        }
        MatData::F32(out)
    } else {
        let mut out = vec![f16::ZERO; rows * cols];
        let mut at = 0;
        for t in &infos {
            let n = t.n_elems as usize;
            let dst = &mut out[at..at + n];
            if t.ty == GgmlType::F16 {
                file.read_tensor_at(t, 0, bytemuck::cast_slice_mut(dst))?;
            } else {
                let raw = read_raw(file, t)?;
                crate::quant::dequantize_f16(t.ty, &raw, dst).map_err(|e| data_err(t, e))?;
            }
            at += n;
        }
        MatData::F16(out)
    };
    Ok(Matrix { rows, cols, data })
}

/// The token embedding table.
pub fn load_embedding(file: &GgufFile) -> Result<Matrix, ModelError> {
    load_stacked(file, &[TOKEN_EMBD])
}

/// Layer `layer`'s weights.
pub fn load_layer(file: &GgufFile, layer: usize) -> Result<LayerWeights, ModelError> {
    let n = |t: LayerTensor| t.name(layer);
    let (q, k, v) = (
        n(LayerTensor::AttnQ),
        n(LayerTensor::AttnK),
        n(LayerTensor::AttnV),
    );
    let mut bqkv = load_vector(file, &n(LayerTensor::AttnQBias))?;
    bqkv.extend(load_vector(file, &n(LayerTensor::AttnKBias))?);
    bqkv.extend(load_vector(file, &n(LayerTensor::AttnVBias))?);
    let (gate, up) = (n(LayerTensor::FfnGate), n(LayerTensor::FfnUp));
    Ok(LayerWeights {
        attn_norm: load_vector(file, &n(LayerTensor::AttnNorm))?,
        wqkv: load_stacked(file, &[&q, &k, &v])?,
        bqkv,
        wo: load_stacked(file, &[&n(LayerTensor::AttnOut)])?,
        ffn_norm: load_vector(file, &n(LayerTensor::FfnNorm))?,
        w_gate_up: load_stacked(file, &[&gate, &up])?,
        w_down: load_stacked(file, &[&n(LayerTensor::FfnDown)])?,
    })
}

/// The final norm and (untied) LM head.
pub fn load_head(file: &GgufFile, spec: &ModelSpec) -> Result<HeadWeights, ModelError> {
    let output = if spec.tied {
        None
    } else {
        Some(load_stacked(file, &[OUTPUT])?)
    };
    Ok(HeadWeights {
        norm: load_vector(file, OUTPUT_NORM)?,
        output,
    })
}
