//! Dequantization of GGUF tensor data to f32 and f16, and quantization of f32 rows (`quantize`).
//! Owns the block layouts of every supported type and the reference order of float operations: results are bit-identical to gguf-py's
//! `gguf.quants.dequantize` (numpy float32), which the golden tests check. Block formats live one
//! family per file; this module validates lengths and spreads the blocks over rayon's threads.

mod float;
mod k_quants;
mod q4;
mod q5;
mod q8_0;
mod quantize;
mod unpack;
#[cfg(target_arch = "x86_64")]
mod unpack_x86;

use half::f16;
use rayon::prelude::*;

use crate::gguf::GgmlType;

pub use float::{f16_bits_to_f32, f32_to_f16_bits};
pub use quantize::{quantizable, quantize};
pub use unpack::{scales_finite, unpack_row, unpack_with, unpackable, GROUP};
#[cfg(target_arch = "x86_64")]
pub use unpack_x86::{centred32, q4_1_values, q4k_values, q6k_values};

/// Output elements handled by one rayon task: big enough to amortise scheduling, small enough to
/// balance two to dozens of cores on a single tensor.
const ELEMS_PER_TASK: usize = 32 * 1024;

/// Why a buffer could not be dequantized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantError {
    #[error("dequantizing {} is not supported", .ty.name())]
    Unsupported { ty: GgmlType },
    #[error("{n_elems} elements are not a whole number of {} blocks of {block_elems}", .ty.name())]
    PartialBlock {
        ty: GgmlType,
        n_elems: usize,
        block_elems: usize,
    },
    #[error("{n_elems} {} elements take {expected} bytes, got {got}", .ty.name())]
    SourceLength {
        ty: GgmlType,
        n_elems: usize,
        expected: usize,
        got: usize,
    },
}

/// Whether [`dequantize`] and [`dequantize_f16`] handle `ty`.
pub fn supported(ty: GgmlType) -> bool {
    layout(ty).is_some()
}

/// Dequantize `dst.len()` elements of type `ty` from `src` (exactly `ty.bytes_for(dst.len())`
/// bytes), in ggml element order.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<(), QuantError> {
    check(ty, src, dst.len())?;
    match ty {
        GgmlType::F32 => parallel(src, dst, 4, 1, float::f32_to_f32),
        GgmlType::F16 => parallel(src, dst, 2, 1, float::f16_to_f32),
        GgmlType::BF16 => parallel(src, dst, 2, 1, float::bf16_to_f32),
        GgmlType::Q4_0 => parallel(src, dst, 18, 32, blocks(q4::q4_0)),
        GgmlType::Q4_1 => parallel(src, dst, 20, 32, blocks(q4::q4_1)),
        GgmlType::Q5_0 => parallel(src, dst, 22, 32, blocks(q5::q5_0)),
        GgmlType::Q5_1 => parallel(src, dst, 24, 32, blocks(q5::q5_1)),
        GgmlType::Q8_0 => parallel(src, dst, 34, 32, blocks(q8_0::q8_0)),
        GgmlType::Q4K => parallel(src, dst, 144, 256, blocks(k_quants::q4_k)),
        GgmlType::Q5K => parallel(src, dst, 176, 256, blocks(k_quants::q5_k)),
        GgmlType::Q6K => parallel(src, dst, 210, 256, blocks(k_quants::q6_k)),
        _ => return Err(QuantError::Unsupported { ty }),
    }
    Ok(())
}

/// Dequantize to f16: each element is the f32 result of [`dequantize`] rounded to nearest even
/// (as numpy's `astype(float16)`); F16 data is copied bit for bit.
pub fn dequantize_f16(ty: GgmlType, src: &[u8], dst: &mut [f16]) -> Result<(), QuantError> {
    check(ty, src, dst.len())?;
    match ty {
        GgmlType::F32 => parallel(src, dst, 4, 1, float::f32_to_f16),
        GgmlType::F16 => parallel(src, dst, 2, 1, float::f16_to_f16),
        GgmlType::BF16 => parallel(src, dst, 2, 1, float::bf16_to_f16),
        GgmlType::Q4_0 => parallel(src, dst, 18, 32, blocks_f16(q4::q4_0)),
        GgmlType::Q4_1 => parallel(src, dst, 20, 32, blocks_f16(q4::q4_1)),
        GgmlType::Q5_0 => parallel(src, dst, 22, 32, blocks_f16(q5::q5_0)),
        GgmlType::Q5_1 => parallel(src, dst, 24, 32, blocks_f16(q5::q5_1)),
        GgmlType::Q8_0 => parallel(src, dst, 34, 32, blocks_f16(q8_0::q8_0)),
        GgmlType::Q4K => parallel(src, dst, 144, 256, blocks_f16(k_quants::q4_k)),
        GgmlType::Q5K => parallel(src, dst, 176, 256, blocks_f16(k_quants::q5_k)),
        GgmlType::Q6K => parallel(src, dst, 210, 256, blocks_f16(k_quants::q6_k)),
        _ => return Err(QuantError::Unsupported { ty }),
    }
    Ok(())
}

/// (bytes, elements) per block of a supported type. Kept here, independent of the GGUF reader's
/// table, so a length check can never disagree with the block functions it guards.
fn layout(ty: GgmlType) -> Option<(usize, usize)> {
    Some(match ty {
        GgmlType::F32 => (4, 1),
        GgmlType::F16 | GgmlType::BF16 => (2, 1),
        GgmlType::Q4_0 => (18, 32),
        GgmlType::Q4_1 => (20, 32),
        GgmlType::Q5_0 => (22, 32),
        GgmlType::Q5_1 => (24, 32),
        GgmlType::Q8_0 => (34, 32),
        GgmlType::Q4K => (144, 256),
        GgmlType::Q5K => (176, 256),
        GgmlType::Q6K => (210, 256),
        _ => return None,
    })
}

/// Checks that `src` holds exactly the bytes of `n_elems` whole blocks of `ty`.
fn check(ty: GgmlType, src: &[u8], n_elems: usize) -> Result<(), QuantError> {
    let (block_bytes, block_elems) = layout(ty).ok_or(QuantError::Unsupported { ty })?;
    if !n_elems.is_multiple_of(block_elems) {
        return Err(QuantError::PartialBlock {
            ty,
            n_elems,
            block_elems,
        });
    }
    let expected = (n_elems / block_elems).checked_mul(block_bytes);
    if expected != Some(src.len()) {
        return Err(QuantError::SourceLength {
            ty,
            n_elems,
            expected: expected.unwrap_or(usize::MAX),
            got: src.len(),
        });
    }
    Ok(())
}

/// Runs `kernel` over matching runs of whole blocks of `src` and `dst` on rayon's pool. The caller
/// has checked that `src` holds exactly `dst.len() / block_elems` blocks.
fn parallel<T: Send>(
    src: &[u8],
    dst: &mut [T],
    block_bytes: usize,
    block_elems: usize,
    kernel: impl Fn(&[u8], &mut [T]) + Sync,
) {
    let blocks_per_task = (ELEMS_PER_TASK / block_elems).max(1);
    let elems = blocks_per_task * block_elems;
    if dst.len() <= elems {
        kernel(src, dst);
        return;
    }
    src.par_chunks(blocks_per_task * block_bytes)
        .zip(dst.par_chunks_mut(elems))
        .for_each(|(s, d)| kernel(s, d));
}

/// Lifts a one-block f32 function to runs of whole blocks.
fn blocks<const B: usize, const E: usize>(
    block: fn(&[u8; B], &mut [f32; E]),
) -> impl Fn(&[u8], &mut [f32]) + Sync {
    move |src, dst| {
        for (s, d) in src.chunks_exact(B).zip(dst.chunks_exact_mut(E)) {
            // chunks_exact guarantees both conversions; they compile to nothing.
            if let (Ok(s), Ok(d)) = (s.try_into(), d.try_into()) {
                block(s, d);
            }
        }
    }
}

/// Lifts a one-block f32 function to runs of whole blocks written as f16.
fn blocks_f16<const B: usize, const E: usize>(
    block: fn(&[u8; B], &mut [f32; E]),
) -> impl Fn(&[u8], &mut [f16]) + Sync {
    move |src, dst| {
        let mut tmp = [0f32; E];
        for (s, d) in src.chunks_exact(B).zip(dst.chunks_exact_mut(E)) {
            if let Ok(s) = s.try_into() {
                block(s, &mut tmp);
                for (o, &x) in d.iter_mut().zip(&tmp) {
                    *o = f16::from_bits(f32_to_f16_bits(x));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
