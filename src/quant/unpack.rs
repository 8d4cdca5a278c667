//! Quantized rows as small integers with an affine map per group of 16 elements, for the CPU's
//! integer dot products: `value[e] = a[e / 16] * q[e] + b[e / 16]`, computed in f32 exactly as the
//! dequantizers compute it (the reconstruction is bit-identical to [`super::dequantize`]). The
//! integers are i8 (signed where the format centres them: Q8_0, Q4_0, Q5_0, Q6_K; b = 0 there).

use super::float::f16_bits_to_f32;
use super::k_quants::scales_mins;
use super::{check, QuantError};
use crate::gguf::GgmlType;

/// Elements sharing one (a, b) pair.
pub const GROUP: usize = 16;

/// Whether [`unpack_row`] handles `ty`.
pub fn unpackable(ty: GgmlType) -> bool {
    use GgmlType as T;
    matches!(
        ty,
        T::Q8_0 | T::Q4_0 | T::Q4_1 | T::Q5_0 | T::Q5_1 | T::Q4K | T::Q5K | T::Q6K
    )
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16_bits_to_f32(u16::from_le_bytes([b[at], b[at + 1]]))
}

/// Whether the CPU has AVX2 and F16C.
fn avx2() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the AVX2 unpackers run: the CPU has AVX2 and `LAYERSTREAM_CPU_QUANT_SCALAR` is unset.
fn simd() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| avx2() && std::env::var_os("LAYERSTREAM_CPU_QUANT_SCALAR").is_none())
}

/// Unpack `q.len()` elements of type `ty` from `src` (whole blocks) into `q`, with `a` and `b`
/// holding `q.len() / 16` factors each.
pub fn unpack_row(
    ty: GgmlType,
    src: &[u8],
    q: &mut [i8],
    a: &mut [f32],
    b: &mut [f32],
) -> Result<(), QuantError> {
    unpack_with(ty, src, q, a, b, simd())
}

/// [`unpack_row`] with the AVX2 unpackers (with `fast`, where the CPU and the type have one) or
/// the scalar ones.
pub fn unpack_with(
    ty: GgmlType,
    src: &[u8],
    q: &mut [i8],
    a: &mut [f32],
    b: &mut [f32],
    fast: bool,
) -> Result<(), QuantError> {
    check(ty, src, q.len())?;
    let fast = fast && avx2();
    if !unpackable(ty) {
        return Err(QuantError::Unsupported { ty });
    }
    let groups = q.len() / GROUP;
    assert!(
        a.len() >= groups && b.len() >= groups,
        "factor buffers too short"
    );
    let (block_bytes, block_elems) = super::layout(ty).ok_or(QuantError::Unsupported { ty })?;
    let per = block_elems / GROUP;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: AVX2 and F16C were detected (`fast` is cleared otherwise); `check` made sure `src`
    // holds whole blocks for `q`, and the factor buffers are long enough (asserted above).
    if fast && unsafe { super::unpack_x86::row(ty, src, q, a, b) } {
        return Ok(());
    }
    for (i, blk) in src.chunks_exact(block_bytes).enumerate() {
        let e = i * block_elems;
        let (qo, ao, bo) = (
            &mut q[e..e + block_elems],
            &mut a[i * per..(i + 1) * per],
            &mut b[i * per..(i + 1) * per],
        );
        unpack_block(ty, blk, qo, ao, bo);
    }
    Ok(())
}

/// One block with the scalar unpackers.
fn unpack_block(ty: GgmlType, blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    match ty {
        GgmlType::Q8_0 => q8_0(blk, q, a, b),
        GgmlType::Q4_0 | GgmlType::Q4_1 => q4_legacy(ty, blk, q, a, b),
        GgmlType::Q5_0 | GgmlType::Q5_1 => q5_legacy(ty, blk, q, a, b),
        GgmlType::Q4K | GgmlType::Q5K => k4(ty, blk, q, a, b),
        _ => q6_k(blk, q, a, b),
    }
}

fn q8_0(blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let d = f16_at(blk, 0);
    for (o, &v) in q.iter_mut().zip(&blk[2..34]) {
        *o = v as i8;
    }
    a.fill(d);
    b.fill(0.0);
}

/// Q4_0 (centred on 8) and Q4_1 (plus its minimum): element i < 16 is the low nibble of byte i,
/// element i + 16 its high nibble.
fn q4_legacy(ty: GgmlType, blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let d = f16_at(blk, 0);
    let (qs, offset, min) = match ty {
        GgmlType::Q4_0 => (&blk[2..18], 8, 0.0),
        _ => (&blk[4..20], 0, f16_at(blk, 2)),
    };
    for (i, &v) in qs.iter().enumerate() {
        q[i] = (v & 0x0f) as i8 - offset;
        q[i + 16] = (v >> 4) as i8 - offset;
    }
    a.fill(d);
    b.fill(min);
}

/// Q5_0 (centred on 16) and Q5_1 (plus its minimum): Q4's nibbles with bit 4 of element i from
/// bit i of the 32-bit `qh`.
fn q5_legacy(ty: GgmlType, blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let d = f16_at(blk, 0);
    let (h, offset, min) = match ty {
        GgmlType::Q5_0 => (2, 16, 0.0),
        _ => (4, 0, f16_at(blk, 2)),
    };
    let qh = u32::from_le_bytes([blk[h], blk[h + 1], blk[h + 2], blk[h + 3]]);
    for (i, &v) in blk[h + 4..h + 20].iter().enumerate() {
        let (lo, hi) = (((qh >> i) & 1) as u8, ((qh >> (i + 16)) & 1) as u8);
        q[i] = ((v & 0x0f) | (lo << 4)) as i8 - offset;
        q[i + 16] = ((v >> 4) | (hi << 4)) as i8 - offset;
    }
    a.fill(d);
    b.fill(min);
}

/// Q4_K and Q5_K: eight sub-blocks of 32 with 6-bit scales and minimums (x = d*sc * q - dmin*m).
fn k4(ty: GgmlType, blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let mut s = [0u8; 12];
    s.copy_from_slice(&blk[4..16]);
    let (sc, mn) = scales_mins(&s);
    let five = ty == GgmlType::Q5K;
    let (qh, qs) = match five {
        true => (&blk[16..48], &blk[48..176]),
        false => (&blk[16..16], &blk[16..144]),
    };
    for j in 0..8 {
        let chunk = &qs[32 * (j / 2)..32 * (j / 2) + 32];
        let shift = 4 * (j % 2);
        for (l, &v) in chunk.iter().enumerate() {
            let high = if five { ((qh[l] >> j) & 1) << 4 } else { 0 };
            q[32 * j + l] = (((v >> shift) & 0x0f) | high) as i8;
        }
        let (ds, dm) = (d * f32::from(sc[j]), dmin * f32::from(mn[j]));
        a[2 * j..2 * j + 2].fill(ds);
        b[2 * j..2 * j + 2].fill(-dm);
    }
}

/// Q6_K: sixteen groups of 16 with signed 8-bit scales, values centred on 32.
fn q6_k(blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let d = f16_at(blk, 208);
    for (g, &s) in blk[192..208].iter().enumerate() {
        a[g] = d * f32::from(s as i8);
    }
    b.fill(0.0);
    for n in 0..2 {
        let ql = &blk[64 * n..64 * n + 64];
        let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
        for k in 0..4 {
            let part = &ql[32 * (k % 2)..32 * (k % 2) + 32];
            let shift = 4 * (k / 2);
            for (l, (&lo, &hi)) in part.iter().zip(qh).enumerate() {
                let v = ((lo >> shift) & 0x0f) | (((hi >> (2 * k)) & 0x03) << 4);
                q[128 * n + 32 * k + l] = v as i8 - 32;
            }
        }
    }
}

/// Whether every block scale (and minimum) of `src`, whole blocks of `ty`, is finite.
pub fn scales_finite(ty: GgmlType, src: &[u8]) -> bool {
    let Some((block_bytes, _)) = super::layout(ty) else {
        return false;
    };
    // Byte offsets of each block's f16 factors.
    let fields: &[usize] = match ty {
        GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        _ => return false,
    };
    src.chunks_exact(block_bytes).all(|b| {
        fields
            .iter()
            .all(|&at| u16::from_le_bytes([b[at], b[at + 1]]) & 0x7c00 != 0x7c00)
    })
}
