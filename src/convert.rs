//! Conversion of a (quantized) GGUF model to F16: the same metadata in the same order with
//! `general.file_type` = 1 (mostly F16), the same tensors in the same order and shapes, every
//! tensor of two or more dims stored as F16 and every 1-D tensor as F32. Values are exactly what
//! `quant::dequantize` gives (rounded to nearest even for F16), matching
//! shared/tools/gguf_to_f16.py. The output is written to a temporary file and renamed into place.

use std::path::{Path, PathBuf};

use half::f16;

use crate::gguf::{GgmlType, GgufError, GgufFile, GgufWriter, TensorInfo, Value};
use crate::quant::{self, QuantError};

/// The metadata key holding the model's dominant tensor type.
const FILE_TYPE_KEY: &str = "general.file_type";
/// `general.file_type` value for "mostly F16" (llama.cpp's LLAMA_FTYPE_MOSTLY_F16).
const FILE_TYPE_MOSTLY_F16: u32 = 1;

/// What a conversion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConvertReport {
    /// Tensors written.
    pub tensors: usize,
    /// Size of the input file.
    pub bytes_in: u64,
    /// Size of the output file.
    pub bytes_out: u64,
}

/// Why a conversion failed; the output path is left untouched.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("tensor '{tensor}': {source}")]
    Dequantize {
        tensor: String,
        #[source]
        source: QuantError,
    },
    #[error("tensor '{tensor}' has {n_elems} elements, more than this platform can address")]
    TooLarge { tensor: String, n_elems: u64 },
    #[error("building the F16 file: {0}")]
    Build(#[source] GgufError),
    #[error("writing {}: {source}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: GgufError,
    },
}

/// Convert `input` to an F16 GGUF file at `out` (written atomically: tmp file + rename).
pub fn convert_to_f16(input: &GgufFile, out: &Path) -> Result<ConvertReport, ConvertError> {
    convert_to_f16_with(input, out, &mut |_| {})
}

/// `convert_to_f16`, calling `on_tensor` with each tensor's input size once it is converted
/// (the sizes add up to `input_tensor_bytes`); the file is written after the last.
pub fn convert_to_f16_with(
    input: &GgufFile,
    out: &Path,
    on_tensor: &mut dyn FnMut(u64),
) -> Result<ConvertReport, ConvertError> {
    let mut writer = GgufWriter::new();
    let mut saw_file_type = false;
    for (key, value) in input.metadata().iter() {
        // general.alignment is copied like any key: the writer lays data out by it.
        let value = if key == FILE_TYPE_KEY {
            saw_file_type = true;
            Value::U32(FILE_TYPE_MOSTLY_F16)
        } else {
            value.clone()
        };
        writer.add_kv(key, value).map_err(ConvertError::Build)?;
    }
    if !saw_file_type {
        let value = Value::U32(FILE_TYPE_MOSTLY_F16);
        writer
            .add_kv(FILE_TYPE_KEY, value)
            .map_err(ConvertError::Build)?;
    }
    for t in input.tensors() {
        let (ty, data) = convert_tensor(input, t)?;
        on_tensor(input.tensor_bytes(t).len() as u64);
        writer
            .add_tensor(t.name.as_str(), ty, &t.dims, data)
            .map_err(ConvertError::Build)?;
    }
    let write_err = |source| ConvertError::Write {
        path: out.to_path_buf(),
        source,
    };
    writer.write_file(out).map_err(write_err)?;
    let bytes_out = std::fs::metadata(out)
        .map_err(|e| {
            write_err(GgufError::io(
                format!("reading the size of {}", out.display()),
                e,
            ))
        })?
        .len();
    Ok(ConvertReport {
        tensors: input.tensors().len(),
        bytes_in: input.file_size(),
        bytes_out,
    })
}

/// The bytes of every tensor's data in `input`.
pub fn input_tensor_bytes(input: &GgufFile) -> u64 {
    input
        .tensors()
        .iter()
        .map(|t| input.tensor_bytes(t).len() as u64)
        .sum()
}

/// The output type and little-endian bytes of one tensor.
fn convert_tensor(input: &GgufFile, t: &TensorInfo) -> Result<(GgmlType, Vec<u8>), ConvertError> {
    let n = usize::try_from(t.n_elems).map_err(|_| ConvertError::TooLarge {
        tensor: t.name.clone(),
        n_elems: t.n_elems,
    })?;
    let src = input.tensor_bytes(t);
    let dequant_err = |source| ConvertError::Dequantize {
        tensor: t.name.clone(),
        source,
    };
    if t.dims.len() >= 2 {
        let mut values = vec![f16::ZERO; n];
        quant::dequantize_f16(t.ty, src, &mut values).map_err(dequant_err)?;
        let mut bytes = Vec::with_capacity(n * 2);
        values
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_bits().to_le_bytes()));
        Ok((GgmlType::F16, bytes))
    } else {
        let mut values = vec![0f32; n];
        quant::dequantize(t.ty, src, &mut values).map_err(dequant_err)?;
        let mut bytes = Vec::with_capacity(n * 4);
        values
            .iter()
            .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes()));
        Ok((GgmlType::F32, bytes))
    }
}
