//! Integer dot products of quantized weight rows with quantized activations.
//!
//! A weight row arrives unpacked (`quant::unpack_row`: i8 values with `value = a * q + b` per group
//! of 16); an activation row is quantized here to i16 in blocks of 32 (`dx = max|x| / 32767`, each
//! value rounded to the nearest step), with the sum of each group's quants kept for the `b` term.
//! The kernel widens both to 16-bit lanes (`vpmaddwd`) anyway, so 16-bit activations cost what 8-bit
//! ones would here and add ~1/258 of their rounding error: the products stay as close to the F16
//! path's as the weights allow. Per group the integer products are exact (pairs summed in i32,
//! below 2^24 so exact in f32 too); the eight pair sums of each lane are scaled by `a * dx` into eight
//! f32 accumulators with fused multiply-adds and reduced in a fixed tree at the end. The scalar path
//! computes exactly that, lane by lane, so both paths give bit-identical results and either can be
//! checked against the other.

use std::sync::OnceLock;

use crate::quant::GROUP;

/// Activation elements per quantization block (one scale each).
pub const ACT_BLOCK: usize = 32;

/// The largest activation quant.
const QMAX: f32 = 32767.0;

/// One row of activations quantized to i16.
#[derive(Debug, Default)]
pub struct QRow {
    pub q: Vec<i16>,
    /// One scale per block of 32.
    pub d: Vec<f32>,
    /// The sum of the quants of each group of 16.
    pub sums: Vec<i32>,
}

impl QRow {
    /// Quantize `x` (a multiple of 32 long) into this row's buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        let n = x.len();
        self.q.resize(n, 0);
        self.d.resize(n / ACT_BLOCK, 0.0);
        self.sums.resize(n / GROUP, 0);
        for (b, xs) in x.chunks_exact(ACT_BLOCK).enumerate() {
            let amax = xs.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = amax / QMAX;
            let id = if d > 0.0 { 1.0 / d } else { 0.0 };
            self.d[b] = d;
            let qs = &mut self.q[b * ACT_BLOCK..(b + 1) * ACT_BLOCK];
            for (q, &v) in qs.iter_mut().zip(xs) {
                *q = (v * id).round().clamp(-QMAX, QMAX) as i16;
            }
            for h in 0..2 {
                let half = &qs[h * GROUP..(h + 1) * GROUP];
                self.sums[2 * b + h] = half.iter().map(|&v| i32::from(v)).sum();
            }
        }
    }
}

/// Whether the AVX2 kernel runs: the CPU has AVX2 and FMA and `LAYERSTREAM_CPU_QUANT_SCALAR` is
/// unset (it forces the scalar path, for tests and comparisons).
pub fn simd() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        super::simd::has_avx2() && std::env::var_os("LAYERSTREAM_CPU_QUANT_SCALAR").is_none()
    })
}

/// `Σ_e (a[e/16] * w[e] + b[e/16]) * (dx[e/32] * x[e])` over the row, for each of `xs` (one or
/// two rows: the kernel reads the weights once for both; each result is computed exactly as if
/// alone). `offsets`: whether any `b` is non-zero (the term is skipped otherwise).
pub fn dot(w: &[i8], a: &[f32], b: &[f32], xs: &[&QRow], offsets: bool, out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA were detected; the lengths are checked inside.
        unsafe { x86::dot(w, a, b, xs, offsets, out) };
        return;
    }
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        *o = dot_scalar(w, a, b, x, offsets);
    }
}

/// The kernel's arithmetic, lane by lane: even groups into one set of eight lanes, odd groups
/// into another, the two added lane by lane, then the lanes reduced in a fixed tree.
pub fn dot_scalar(w: &[i8], a: &[f32], b: &[f32], x: &QRow, offsets: bool) -> f32 {
    let groups = w.len() / GROUP;
    assert!(x.q.len() >= w.len() && a.len() >= groups && b.len() >= groups);
    let mut lanes = [[0f32; 8]; 2];
    for g in 0..groups {
        let (wg, xg) = (
            &w[g * GROUP..(g + 1) * GROUP],
            &x.q[g * GROUP..(g + 1) * GROUP],
        );
        let scale = a[g] * x.d[g / 2];
        for (l, lane) in lanes[g % 2].iter_mut().enumerate() {
            let pair = i32::from(wg[2 * l]) * i32::from(xg[2 * l])
                + i32::from(wg[2 * l + 1]) * i32::from(xg[2 * l + 1]);
            *lane = (pair as f32).mul_add(scale, *lane);
        }
    }
    let l: Vec<f32> = (0..8).map(|i| lanes[0][i] + lanes[1][i]).collect();
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    let total = (s[0] + s[2]) + (s[1] + s[3]);
    total + offset_term(b, x, groups, offsets)
}

/// `Σ_g b[g] * dx * sum(x quants of g)`, in group order.
fn offset_term(b: &[f32], x: &QRow, groups: usize, offsets: bool) -> f32 {
    if !offsets {
        return 0.0;
    }
    let mut acc = 0f32;
    for g in 0..groups {
        acc = (b[g] * x.d[g / 2]).mul_add(x.sums[g] as f32, acc);
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{offset_term, QRow};
    use crate::quant::GROUP;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// One group's pair sums scaled into `acc`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn group(wv: __m256i, x: &QRow, g: usize, a: f32, acc: __m256) -> __m256 {
        let xv = _mm256_loadu_si256(x.q.as_ptr().add(g * GROUP).cast());
        let pairs = _mm256_cvtepi32_ps(_mm256_madd_epi16(wv, xv));
        let scale = a * *x.d.get_unchecked(g / 2);
        _mm256_fmadd_ps(pairs, _mm256_set1_ps(scale), acc)
    }

    /// See [`super::dot`].
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(
        w: &[i8],
        a: &[f32],
        b: &[f32],
        xs: &[&QRow],
        offsets: bool,
        out: &mut [f32],
    ) {
        let groups = w.len() / GROUP;
        assert!(groups % 2 == 0 && !xs.is_empty() && xs.len() <= 2);
        assert!(a.len() >= groups && b.len() >= groups && out.len() >= xs.len());
        for x in xs {
            assert!(x.q.len() >= w.len() && x.d.len() * 2 >= groups);
        }
        let wp = w.as_ptr();
        match xs {
            // Groups come in pairs (rows are whole blocks of 32): even ones into `e`, odd into `o`.
            [x] => {
                let (mut e, mut o) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for g in (0..groups).step_by(2) {
                    let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(g * GROUP).cast()));
                    let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add((g + 1) * GROUP).cast()));
                    e = group(w0, x, g, *a.get_unchecked(g), e);
                    o = group(w1, x, g + 1, *a.get_unchecked(g + 1), o);
                }
                out[0] = hsum(_mm256_add_ps(e, o)) + offset_term(b, x, groups, offsets);
            }
            _ => {
                let (x0, x1) = (xs[0], xs[1]);
                let (mut e0, mut o0) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                let (mut e1, mut o1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for g in (0..groups).step_by(2) {
                    let w0 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add(g * GROUP).cast()));
                    let w1 = _mm256_cvtepi8_epi16(_mm_loadu_si128(wp.add((g + 1) * GROUP).cast()));
                    let (a0, a1) = (*a.get_unchecked(g), *a.get_unchecked(g + 1));
                    e0 = group(w0, x0, g, a0, e0);
                    o0 = group(w1, x0, g + 1, a1, o0);
                    e1 = group(w0, x1, g, a0, e1);
                    o1 = group(w1, x1, g + 1, a1, o1);
                }
                out[0] = hsum(_mm256_add_ps(e0, o0)) + offset_term(b, x0, groups, offsets);
                out[1] = hsum(_mm256_add_ps(e1, o1)) + offset_term(b, x1, groups, offsets);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantized_activations_round_to_the_nearest_step_and_sum_per_group() {
        let x: Vec<f32> = (0..64).map(|i| (i as f32 - 20.0) / 7.0).collect();
        let mut r = QRow::default();
        r.quantize(&x);
        for (e, &v) in x.iter().enumerate() {
            let d = r.d[e / 32];
            assert!((f32::from(r.q[e]) * d - v).abs() <= d / 2.0 + 1e-6, "{e}");
        }
        assert_eq!(
            r.q[..32].iter().map(|v| v.unsigned_abs()).max(),
            Some(32767)
        );
        assert_eq!(
            r.sums[1],
            r.q[16..32].iter().map(|&v| i32::from(v)).sum::<i32>()
        );
        r.quantize(&[0.0; 32]);
        assert_eq!((r.d[0], r.q[5]), (0.0, 0));
    }

    #[test]
    fn both_paths_agree_bit_for_bit_and_match_the_real_sum() {
        let n = 256;
        let w: Vec<i8> = (0..n).map(|i| ((i * 37 % 61) as i32 - 30) as i8).collect();
        let a: Vec<f32> = (0..n / 16).map(|g| 0.01 + g as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..n / 16).map(|g| -0.05 * g as f32).collect();
        let x: Vec<f32> = (0..n)
            .map(|i| ((i * 13 % 29) as f32 - 14.0) / 3.0)
            .collect();
        let mut r = QRow::default();
        r.quantize(&x);
        let mut r2 = QRow::default();
        r2.quantize(&x.iter().map(|v| v * -0.5).collect::<Vec<_>>());
        for offsets in [false, true] {
            let s = dot_scalar(&w, &a, &b, &r, offsets);
            let s2 = dot_scalar(&w, &a, &b, &r2, offsets);
            let (mut one, mut two) = ([0f32; 1], [0f32; 2]);
            dot(&w, &a, &b, &[&r], offsets, &mut one);
            dot(&w, &a, &b, &[&r, &r2], offsets, &mut two);
            assert_eq!(one[0].to_bits(), s.to_bits(), "offsets {offsets}");
            assert_eq!(
                [two[0].to_bits(), two[1].to_bits()],
                [s.to_bits(), s2.to_bits()]
            );
            let exact: f64 = (0..n)
                .map(|e| {
                    let wv = a[e / 16] as f64 * w[e] as f64
                        + if offsets { b[e / 16] as f64 } else { 0.0 };
                    wv * (r.d[e / 32] as f64 * r.q[e] as f64)
                })
                .sum();
            assert!(
                (s as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                "{s} vs {exact}"
            );
        }
    }
}
