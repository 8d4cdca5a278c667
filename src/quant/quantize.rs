//! Quantization of f32 rows into GGUF blocks, for generated test and benchmark models: Q8_0, Q4_0,
//! Q4_1, Q5_0 and Q5_1 bit-identical to gguf-py's `gguf.quants.quantize` (numpy float32, the same
//! order of operations), and Q4_K, Q5_K, Q6_K with a simple scale search whose round-trip error is
//! bounded and tested (gguf-py has no K-quantizer to match).

use half::f16;

use super::{layout, QuantError};
use crate::gguf::GgmlType;

/// Whether [`quantize`] writes `ty`.
pub fn quantizable(ty: GgmlType) -> bool {
    use GgmlType as T;
    matches!(
        ty,
        T::Q8_0 | T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q4K | T::Q5K | T::Q6K
    )
}

/// `x` (a whole number of blocks of `ty`) as blocks of `ty`.
pub fn quantize(ty: GgmlType, x: &[f32]) -> Result<Vec<u8>, QuantError> {
    let (bytes, elems) = layout(ty).ok_or(QuantError::Unsupported { ty })?;
    if !quantizable(ty) {
        return Err(QuantError::Unsupported { ty });
    }
    if !x.len().is_multiple_of(elems) {
        return Err(QuantError::PartialBlock {
            ty,
            n_elems: x.len(),
            block_elems: elems,
        });
    }
    let mut out = Vec::with_capacity(x.len() / elems * bytes);
    for b in x.chunks_exact(elems) {
        match ty {
            GgmlType::Q8_0 => q8_0(b, &mut out),
            GgmlType::Q4_0 | GgmlType::Q5_0 => centred(ty, b, &mut out),
            GgmlType::Q4_1 | GgmlType::Q5_1 => with_min(ty, b, &mut out),
            GgmlType::Q4K | GgmlType::Q5K => k4(ty, b, &mut out),
            _ => q6_k(b, &mut out),
        }
    }
    Ok(out)
}

fn f16_bytes(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_bits().to_le_bytes()
}

/// numpy's `1 / d` where d is non-zero, else 0.
fn inv(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

fn q8_0(b: &[f32], out: &mut Vec<u8>) {
    let d = b.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
    let id = inv(d);
    out.extend_from_slice(&f16_bytes(d));
    out.extend(b.iter().map(|&v| (v * id).round() as i8 as u8));
}

/// The element of largest magnitude, signed (numpy's first `argmax` of `abs`).
fn signed_max(b: &[f32]) -> f32 {
    let mut best = b[0];
    for &v in &b[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// Q4_0 and Q5_0: `d = max / -8` (or `-16`), `q = trunc(x / d + 8.5)` clipped.
fn centred(ty: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    let (half, top) = match ty {
        GgmlType::Q4_0 => (8.0f32, 15u8),
        _ => (16.0, 31),
    };
    let d = signed_max(b) / -half;
    let id = inv(d);
    let q: Vec<u8> = b
        .iter()
        .map(|&v| ((v * id + (half + 0.5)).trunc() as u8).min(top))
        .collect();
    out.extend_from_slice(&f16_bytes(d));
    pack(ty == GgmlType::Q5_0, &q, out);
}

/// Q4_1 and Q5_1: `d = (max - min) / 15` (or `31`), `q = trunc((x - min) / d + 0.5)` clipped.
fn with_min(ty: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    let top = if ty == GgmlType::Q4_1 { 15u8 } else { 31 };
    let max = b.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let min = b.iter().fold(f32::INFINITY, |m, &v| m.min(v));
    let d = (max - min) / f32::from(top);
    let id = inv(d);
    let q: Vec<u8> = b
        .iter()
        .map(|&v| (((v - min) * id + 0.5).trunc() as u8).min(top))
        .collect();
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(min));
    pack(ty == GgmlType::Q5_1, &q, out);
}

/// 32 quants as nibbles (element i low, i + 16 high) after the 32 fifth bits when `five`.
fn pack(five: bool, q: &[u8], out: &mut Vec<u8>) {
    if five {
        let qh = q
            .iter()
            .enumerate()
            .fold(0u32, |h, (i, &v)| h | (u32::from(v >> 4) << i));
        out.extend_from_slice(&qh.to_le_bytes());
    }
    out.extend((0..16).map(|i| (q[i] & 0x0f) | ((q[i + 16] & 0x0f) << 4)));
}

/// Q4_K and Q5_K: each sub-block of 32 as `d*sc * q - dmin*m` with its own minimum (≤ 0) and
/// range, the eight scales and minimums quantized to 6 bits against the block's largest.
fn k4(ty: GgmlType, b: &[f32], out: &mut Vec<u8>) {
    let top = if ty == GgmlType::Q4K { 15.0f32 } else { 31.0 };
    let (mut scale, mut mins) = ([0f32; 8], [0f32; 8]);
    for (j, s) in b.chunks_exact(32).enumerate() {
        let min = s.iter().fold(0f32, |m, &v| m.min(v));
        let max = s.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        scale[j] = (max - min) / top;
        mins[j] = -min;
    }
    let d = scale.iter().fold(0f32, |m, &v| m.max(v)) / 63.0;
    let dmin = mins.iter().fold(0f32, |m, &v| m.max(v)) / 63.0;
    let (d16, dmin16) = (f16::from_f32(d).to_f32(), f16::from_f32(dmin).to_f32());
    let six = |v: f32, unit: f32| (v * inv(unit)).round().clamp(0.0, 63.0) as u8;
    let sc: [u8; 8] = std::array::from_fn(|j| six(scale[j], d16));
    let mn: [u8; 8] = std::array::from_fn(|j| six(mins[j], dmin16));
    out.extend_from_slice(&f16_bytes(d));
    out.extend_from_slice(&f16_bytes(dmin));
    let mut s = [0u8; 12];
    for j in 0..4 {
        s[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        s[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        s[j + 8] = (sc[j + 4] & 0x0f) | ((mn[j + 4] & 0x0f) << 4);
    }
    out.extend_from_slice(&s);
    // The quants against the stored (rounded) factors.
    let q: Vec<u8> = (0..256)
        .map(|e| {
            let j = e / 32;
            let (ds, dm) = (d16 * f32::from(sc[j]), dmin16 * f32::from(mn[j]));
            ((b[e] + dm) * inv(ds)).round().clamp(0.0, top) as u8
        })
        .collect();
    if ty == GgmlType::Q5K {
        out.extend((0..32).map(|l| (0..8).fold(0u8, |h, j| h | ((q[32 * j + l] >> 4) << j))));
    }
    for c in 0..4 {
        out.extend((0..32).map(|l| (q[64 * c + l] & 0x0f) | ((q[64 * c + 32 + l] & 0x0f) << 4)));
    }
}

/// Q6_K: sixteen groups of 16 with signed 8-bit scales against the block's largest, values
/// centred on 32.
fn q6_k(b: &[f32], out: &mut Vec<u8>) {
    let scales: [f32; 16] = std::array::from_fn(|g| signed_max(&b[16 * g..16 * g + 16]) / -32.0);
    let d = signed_max(&scales) / -128.0;
    let d16 = f16::from_f32(d).to_f32();
    let sc: [i8; 16] =
        std::array::from_fn(|g| (scales[g] * inv(d16)).round().clamp(-128.0, 127.0) as i8);
    let q: Vec<u8> = (0..256)
        .map(|e| {
            let step = d16 * f32::from(sc[e / 16]);
            ((b[e] * inv(step)).round() + 32.0).clamp(0.0, 63.0) as u8
        })
        .collect();
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for n in 0..2 {
        for l in 0..32 {
            let at = |k: usize| q[128 * n + 32 * k + l];
            ql[64 * n + l] = (at(0) & 0x0f) | ((at(2) & 0x0f) << 4);
            ql[64 * n + 32 + l] = (at(1) & 0x0f) | ((at(3) & 0x0f) << 4);
            qh[32 * n + l] =
                (at(0) >> 4) | ((at(1) >> 4) << 2) | ((at(2) >> 4) << 4) | ((at(3) >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&v| v as u8));
    out.extend_from_slice(&f16_bytes(d));
}
