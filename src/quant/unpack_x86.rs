//! AVX2 versions of the unpackers (all but Q5_K): the same values as the scalar ones in
//! `unpack.rs`, sixteen or thirty-two at a time.

use std::arch::x86_64::*;

use super::k_quants::scales_mins;
use crate::gguf::GgmlType;

/// The f16 at byte `at` of `b` as f32 (F16C: the same value as `f16_bits_to_f32`).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_at(b: &[u8], at: usize) -> f32 {
    let h = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(h))))
}

/// A whole row of `ty` (every block of `src`) into `q`, `a`, `b`; false when `ty` has no AVX2
/// unpacker here.
///
/// # Safety
/// AVX2 and F16C must be available; `src` must hold whole blocks of `ty` for `q.len()` values,
/// and `a`, `b` `q.len() / 16` factors each.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn row(ty: GgmlType, src: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) -> bool {
    let (bytes, elems) = match ty {
        GgmlType::Q4K => (144, 256),
        GgmlType::Q6K => (210, 256),
        GgmlType::Q4_0 => (18, 32),
        GgmlType::Q4_1 => (20, 32),
        GgmlType::Q5_0 => (22, 32),
        GgmlType::Q5_1 => (24, 32),
        GgmlType::Q8_0 => (34, 32),
        _ => return false,
    };
    let n = src.len() / bytes;
    let g = elems / 16;
    for i in 0..n {
        let blk = src.get_unchecked(i * bytes..(i + 1) * bytes);
        let (qo, ao, bo) = (
            q.get_unchecked_mut(i * elems..(i + 1) * elems),
            a.get_unchecked_mut(i * g..(i + 1) * g),
            b.get_unchecked_mut(i * g..(i + 1) * g),
        );
        match ty {
            GgmlType::Q4K => q4_k(blk, qo, ao, bo),
            GgmlType::Q6K => q6_k(blk, qo, ao, bo),
            GgmlType::Q4_1 => q4_legacy(blk, true, qo, ao, bo),
            GgmlType::Q5_1 => q5_legacy(blk, true, qo, ao, bo),
            _ => {
                let (v, d) = centred32(ty, blk);
                ao[..2].fill(d);
                bo[..2].fill(0.0);
                _mm256_storeu_si256(qo.as_mut_ptr().cast(), v);
            }
        }
    }
    true
}

/// Q4_K (`blk`: 144 bytes) into 256 values and 16 (a, b) pairs.
///
/// # Safety
/// AVX2 must be available; `q` must hold 256 values and `a`, `b` 16 each.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn q4_k(blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let (values, ds, dm) = q4k_values(blk);
    for j in 0..8 {
        a[2 * j..2 * j + 2].fill(ds[j]);
        b[2 * j..2 * j + 2].fill(-dm[j]);
        _mm256_storeu_si256(q.as_mut_ptr().add(32 * j).cast(), values[j]);
    }
}

/// A Q4_K block's eight sub-blocks of 32 values (one a register, in element order), each one's
/// scale `d * sc` and the minimum `dmin * m` it subtracts.
///
/// # Safety
/// AVX2 and F16C must be available; `blk` must hold one whole block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q4k_values(blk: &[u8]) -> ([__m256i; 8], [f32; 8], [f32; 8]) {
    let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
    let mut s = [0u8; 12];
    s.copy_from_slice(&blk[4..16]);
    let (sc, mn) = scales_mins(&s);
    let ds: [f32; 8] = std::array::from_fn(|j| d * f32::from(sc[j]));
    let dm: [f32; 8] = std::array::from_fn(|j| dmin * f32::from(mn[j]));
    let mask = _mm256_set1_epi8(0x0f);
    let src = blk.as_ptr().add(16);
    let mut values = [_mm256_setzero_si256(); 8];
    for c in 0..4 {
        let v = _mm256_loadu_si256(src.add(32 * c).cast());
        values[2 * c] = _mm256_and_si256(v, mask);
        values[2 * c + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
    }
    (values, ds, dm)
}

/// Q6_K (`blk`: 210 bytes) into 256 values centred on 32 and 16 scales.
///
/// # Safety
/// As for [`q4_k`].
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn q6_k(blk: &[u8], q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let (values, d) = q6k_values(blk);
    for (g, &s) in blk[192..208].iter().enumerate() {
        a[g] = d * f32::from(s as i8);
        b[g] = 0.0;
    }
    for (k, v) in values.iter().enumerate() {
        _mm256_storeu_si256(q.as_mut_ptr().add(32 * k).cast(), *v);
    }
}

/// A Q6_K block's 256 values, 32 a register in element order, and its `d` (group g's scale is
/// `d * scales[g]`, the signed bytes 192..208).
///
/// # Safety
/// AVX2 and F16C must be available; `blk` must hold one whole block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q6k_values(blk: &[u8]) -> ([__m256i; 8], f32) {
    let d = f16_at(blk, 208);
    let mut out = [_mm256_setzero_si256(); 8];
    let (m4, m30, k32) = (
        _mm256_set1_epi8(0x0f),
        _mm256_set1_epi8(0x30),
        _mm256_set1_epi8(32),
    );
    let p = blk.as_ptr();
    for n in 0..2 {
        let ql0 = _mm256_loadu_si256(p.add(64 * n).cast());
        let ql1 = _mm256_loadu_si256(p.add(64 * n + 32).cast());
        let qh = _mm256_loadu_si256(p.add(128 + 32 * n).cast());
        // Bits 2k..2k+2 of qh become bits 4..6 of value k.
        let high = [
            _mm256_and_si256(_mm256_slli_epi16(qh, 4), m30),
            _mm256_and_si256(_mm256_slli_epi16(qh, 2), m30),
            _mm256_and_si256(qh, m30),
            _mm256_and_si256(_mm256_srli_epi16(qh, 2), m30),
        ];
        let low = [
            _mm256_and_si256(ql0, m4),
            _mm256_and_si256(ql1, m4),
            _mm256_and_si256(_mm256_srli_epi16(ql0, 4), m4),
            _mm256_and_si256(_mm256_srli_epi16(ql1, 4), m4),
        ];
        for k in 0..4 {
            out[4 * n + k] = _mm256_sub_epi8(_mm256_or_si256(low[k], high[k]), k32);
        }
    }
    (out, d)
}

/// A Q4_1 block's 32 values (its nibbles), its scale and its minimum.
///
/// # Safety
/// As for [`q6k_values`].
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q4_1_values(blk: &[u8]) -> (__m256i, f32, f32) {
    let v = _mm_loadu_si128(blk.as_ptr().add(4).cast());
    (nibbles(v), f16_at(blk, 0), f16_at(blk, 2))
}

/// The 32 values and the scale of a block of a type centred on zero with one scale per 32 and no
/// minimum (Q8_0, Q4_0, Q5_0; anything else is read as Q5_0): what the unpackers below store, held
/// in a register (the CPU's decode products use it directly).
///
/// # Safety
/// AVX2 and F16C must be available; `blk` must hold one whole block.
#[inline]
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn centred32(ty: GgmlType, blk: &[u8]) -> (__m256i, f32) {
    let d = f16_at(blk, 0);
    match ty {
        GgmlType::Q8_0 => (_mm256_loadu_si256(blk.as_ptr().add(2).cast()), d),
        GgmlType::Q4_0 => {
            let v = _mm_loadu_si128(blk.as_ptr().add(2).cast());
            (_mm256_sub_epi8(nibbles(v), _mm256_set1_epi8(8)), d)
        }
        _ => {
            let qh = u32::from_le_bytes([blk[2], blk[3], blk[4], blk[5]]);
            let v = _mm_loadu_si128(blk.as_ptr().add(6).cast());
            let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
            let vals = _mm256_or_si256(nibbles(v), high);
            (_mm256_sub_epi8(vals, _mm256_set1_epi8(16)), d)
        }
    }
}

/// 16 bytes' low nibbles (elements 0..16) then their high nibbles (16..32).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn nibbles(v: __m128i) -> __m256i {
    let mask = _mm_set1_epi8(0x0f);
    _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16(v, 4), mask),
        _mm_and_si128(v, mask),
    )
}

/// Q4_0 (18 bytes, `offset` 8) or Q4_1 (20 bytes, `offset` 0, its minimum in `b`) into 32 values.
///
/// # Safety
/// As for [`q4_k`], with 32 values and 2 pairs.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn q4_legacy(blk: &[u8], one: bool, q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let (at, offset, min) = match one {
        false => (2, 8, 0.0),
        true => (4, 0, f16_at(blk, 2)),
    };
    let d = f16_at(blk, 0);
    a[..2].fill(d);
    b[..2].fill(min);
    let v = _mm_loadu_si128(blk.as_ptr().add(at).cast());
    let (mask, off) = (_mm_set1_epi8(0x0f), _mm_set1_epi8(offset));
    let lo = _mm_sub_epi8(_mm_and_si128(v, mask), off);
    let hi = _mm_sub_epi8(_mm_and_si128(_mm_srli_epi16(v, 4), mask), off);
    _mm_storeu_si128(q.as_mut_ptr().cast(), lo);
    _mm_storeu_si128(q.as_mut_ptr().add(16).cast(), hi);
}

/// The 32 bits of `bits` as 32 bytes: 0xff where the bit is set, 0 elsewhere (byte j, bit j).
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn bytes_from_bits(bits: u32) -> __m256i {
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(bits as i32),
        _mm256_set_epi64x(
            0x0303_0303_0303_0303,
            0x0202_0202_0202_0202,
            0x0101_0101_0101_0101,
            0,
        ),
    );
    // Each byte keeps its own bit; every other bit is forced on, so a set bit makes 0xff.
    let others = _mm256_set1_epi64x(0x7fbf_dfef_f7fb_fdfe_u64 as i64);
    _mm256_cmpeq_epi8(_mm256_or_si256(spread, others), _mm256_set1_epi64x(-1))
}

/// Q5_0 (22 bytes, centred on 16) or Q5_1 (24 bytes, its minimum in `b`) into 32 values.
///
/// # Safety
/// As for [`q4_legacy`].
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn q5_legacy(blk: &[u8], one: bool, q: &mut [i8], a: &mut [f32], b: &mut [f32]) {
    let (h, offset, min) = match one {
        false => (2, 16, 0.0),
        true => (4, 0, f16_at(blk, 2)),
    };
    a[..2].fill(f16_at(blk, 0));
    b[..2].fill(min);
    let qh = u32::from_le_bytes([blk[h], blk[h + 1], blk[h + 2], blk[h + 3]]);
    let v = _mm_loadu_si128(blk.as_ptr().add(h + 4).cast());
    let mask = _mm_set1_epi8(0x0f);
    let nibbles = _mm256_set_m128i(
        _mm_and_si128(_mm_srli_epi16(v, 4), mask),
        _mm_and_si128(v, mask),
    );
    let high = _mm256_and_si256(bytes_from_bits(qh), _mm256_set1_epi8(0x10));
    let vals = _mm256_sub_epi8(_mm256_or_si256(nibbles, high), _mm256_set1_epi8(offset));
    _mm256_storeu_si256(q.as_mut_ptr().cast(), vals);
}
