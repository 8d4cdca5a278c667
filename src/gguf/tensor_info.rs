//! One tensor's entry in the GGUF index: name, type, shape in ggml order, and where its bytes lie in
//! the file. Built only from validated data, so its sizes are consistent.

use super::decode::MAX_DIMS;
use super::dtype::GgmlType;
use super::error::GgufError;

#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    pub ty: GgmlType,
    /// ggml order: dims[0] is the fastest-varying (row length).
    pub dims: Vec<u64>,
    /// Absolute offset in the FILE (data section start + relative offset).
    pub offset: u64,
    pub n_elems: u64,
    pub n_bytes: u64,
}

impl TensorInfo {
    /// Number of rows: n_elems / dims[0] (0 for a tensor without dims).
    pub fn rows(&self) -> u64 {
        self.n_elems.checked_div(self.row_len()).unwrap_or(0)
    }

    /// Row length: dims[0] (0 for a tensor without dims).
    pub fn row_len(&self) -> u64 {
        self.dims.first().copied().unwrap_or(0)
    }

    /// One past the last byte of this tensor in the file.
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.n_bytes)
    }
}

/// Validate a tensor's shape for its type; returns (element count, byte size).
/// Checks, in order: 1..=4 dims, no zero dim, no overflow (ggml counts in i64), whole blocks per row.
pub(crate) fn check_shape(
    tensor: &str,
    ty: GgmlType,
    dims: &[u64],
) -> Result<(u64, u64), GgufError> {
    if dims.is_empty() || dims.len() as u64 > MAX_DIMS {
        return Err(GgufError::BadDimCount {
            tensor: tensor.to_string(),
            n_dims: dims.len() as u64,
        });
    }
    if let Some(index) = dims.iter().position(|&d| d == 0) {
        return Err(GgufError::ZeroDim {
            tensor: tensor.to_string(),
            index,
        });
    }
    let overflow = || GgufError::ElementCountOverflow {
        tensor: tensor.to_string(),
        dims: dims.to_vec(),
    };
    let n_elems = dims
        .iter()
        .try_fold(1u64, |acc, &d| acc.checked_mul(d))
        .filter(|&n| i64::try_from(n).is_ok())
        .ok_or_else(overflow)?;
    let row_len = dims.first().copied().unwrap_or(0);
    if !row_len.is_multiple_of(ty.block_elems()) {
        return Err(GgufError::RowNotBlockMultiple {
            tensor: tensor.to_string(),
            ty: ty.name(),
            row_len,
            block: ty.block_elems(),
        });
    }
    let n_bytes = ty.bytes_for(n_elems).ok_or_else(overflow)?;
    Ok((n_elems, n_bytes))
}
