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
    /// Each group's sum times its block's scale: what a weight row's offsets `b` multiply.
    pub offs: Vec<f32>,
}

impl QRow {
    /// Quantize `x` (a multiple of 32 long) into this row's buffers.
    pub fn quantize(&mut self, x: &[f32]) {
        let n = x.len();
        self.q.resize(n, 0);
        self.d.resize(n / ACT_BLOCK, 0.0);
        self.sums.resize(n / GROUP, 0);
        self.offs.resize(n / GROUP, 0.0);
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
                let sum: i32 = half.iter().map(|&v| i32::from(v)).sum();
                self.sums[2 * b + h] = sum;
                self.offs[2 * b + h] = d * sum as f32;
            }
        }
    }
}

/// Whether the AVX2 kernel runs: the CPU has AVX2, FMA and F16C and `LAYERSTREAM_CPU_QUANT_SCALAR` is
/// unset (it forces the scalar path, for tests and comparisons).
pub fn simd() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        super::simd::has_avx2() && std::env::var_os("LAYERSTREAM_CPU_QUANT_SCALAR").is_none()
    })
}

/// Tokens one pass over a weight row serves.
pub const TOKENS: usize = 4;

/// How a row's scales fall: one per block of 32 (every type but Q6_K: its two groups' integer
/// sums are added before scaling) or one per group of 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scales {
    Per32,
    Per16,
}

/// `Σ_e (a[e/16] * w[e] + b[e/16]) * (dx[e/32] * x[e])` over the row, for each of `xs` (one to
/// [`TOKENS`] rows: the kernel reads and widens the weights once for all of them; each result is
/// computed exactly as if alone). `offsets`: whether any `b` is non-zero (else skipped).
pub fn dot(
    w: &[i8],
    (a, b): (&[f32], &[f32]),
    scales: Scales,
    xs: &[&QRow],
    offsets: bool,
    out: &mut [f32],
) {
    #[cfg(target_arch = "x86_64")]
    if vnni() {
        // SAFETY: AVX2, FMA and AVX-VNNI were detected; the lengths are checked inside.
        unsafe { x86::dot_vnni(w, (a, b), scales, xs, offsets, out) };
        return;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA were detected; the lengths are checked inside.
        unsafe { x86::dot(w, (a, b), scales, xs, offsets, out) };
        return;
    }
    for (x, o) in xs.iter().zip(out.iter_mut()) {
        *o = dot_scalar(w, (a, b), scales, x, offsets);
    }
}

/// Whether the AVX-VNNI variant runs (`vpdpwssd`; the same results): the AVX2 kernel runs and the
/// CPU has AVX-VNNI, unless `LAYERSTREAM_CPU_NO_VNNI` is set.
pub fn vnni() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            simd()
                && std::is_x86_feature_detected!("avxvnni")
                && std::env::var_os("LAYERSTREAM_CPU_NO_VNNI").is_none()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// One token against a row of Q8_0, Q4_0, Q5_0, Q4_1, Q4_K or Q6_K blocks straight from their bytes:
/// the values decoded in registers (`quant::centred32` and its siblings) instead of unpacked to
/// memory first, the arithmetic exactly [`dot`]'s for those types (bit for bit). `None` where there
/// is no such kernel (the type, the row's length, or the CPU).
pub fn dot_blocks(ty: crate::gguf::GgmlType, bytes: &[u8], x: &QRow) -> Option<f32> {
    use crate::gguf::GgmlType as T;
    let fits = |n: usize| n <= x.q.len();
    if !matches!(ty, T::Q8_0 | T::Q4_0 | T::Q5_0 | T::Q4_1 | T::Q4K | T::Q6K)
        || !fits(bytes.len() / ty.block_bytes() as usize * ty.block_elems() as usize)
    {
        return None;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2, FMA and F16C were detected (`simd`); `bytes` is whole blocks of `ty` (checked inside).
        return Some(unsafe {
            match ty {
                T::Q6K => x86::dot_q6k(bytes, x),
                T::Q4K => x86::dot_q4k(bytes, x),
                T::Q4_1 => x86::dot_q4_1(bytes, x),
                _ => x86::dot_blocks(ty, bytes, x),
            }
        });
    }
    None
}

/// The kernel's arithmetic, lane by lane: each step's eight pair sums (a block of 32 with
/// `Per32`, a group of 16 with `Per16`) scaled into one of two sets of eight lanes (even and odd
/// steps), the two added lane by lane, then the lanes reduced in a fixed tree.
pub fn dot_scalar(
    w: &[i8],
    (a, b): (&[f32], &[f32]),
    scales: Scales,
    x: &QRow,
    offsets: bool,
) -> f32 {
    let groups = w.len() / GROUP;
    assert!(x.q.len() >= w.len() && a.len() >= groups && b.len() >= groups);
    let pairs = |g: usize, l: usize| {
        let e = g * GROUP + 2 * l;
        i32::from(w[e]) * i32::from(x.q[e]) + i32::from(w[e + 1]) * i32::from(x.q[e + 1])
    };
    let mut lanes = [[0f32; 8]; 2];
    let step = match scales {
        Scales::Per32 => 2,
        Scales::Per16 => 1,
    };
    for (i, g) in (0..groups).step_by(step).enumerate() {
        let scale = a[g] * x.d[g / 2];
        for (l, lane) in lanes[i % 2].iter_mut().enumerate() {
            let p = match scales {
                Scales::Per32 => pairs(g, l) + pairs(g + 1, l),
                Scales::Per16 => pairs(g, l),
            };
            *lane = (p as f32).mul_add(scale, *lane);
        }
    }
    let l: [f32; 8] = std::array::from_fn(|i| lanes[0][i] + lanes[1][i]);
    tree(&l) + offset_term(b, x, groups, offsets)
}

/// `Σ_g b[g] * offs[g]` (each group's offset times its share of the activations): group g
/// into lane g % 8 with fused multiply-adds, the lanes reduced in the kernels' fixed tree.
fn offset_term(b: &[f32], x: &QRow, groups: usize, offsets: bool) -> f32 {
    if !offsets {
        return 0.0;
    }
    #[cfg(target_arch = "x86_64")]
    if simd() {
        // SAFETY: AVX2 and FMA were detected; `groups` is within both slices (checked by `dot`).
        return unsafe { x86::offsets(&b[..groups], &x.offs[..groups]) };
    }
    let mut lanes = [0f32; 8];
    for (g, (bg, o)) in b.iter().zip(&x.offs).take(groups).enumerate() {
        lanes[g % 8] = bg.mul_add(*o, lanes[g % 8]);
    }
    tree(&lanes)
}

/// Eight lanes summed as the kernels' horizontal sum does.
fn tree(l: &[f32; 8]) -> f32 {
    let s = [l[0] + l[4], l[1] + l[5], l[2] + l[6], l[3] + l[7]];
    (s[0] + s[2]) + (s[1] + s[3])
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::super::simd::x86::hsum;
    use super::{offset_term, QRow, Scales, TOKENS};
    use crate::quant::GROUP;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn widen(w: *const i8, g: usize) -> __m256i {
        _mm256_cvtepi8_epi16(_mm_loadu_si128(w.add(g * GROUP).cast()))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn madd(wv: __m256i, x: &QRow, g: usize) -> __m256i {
        _mm256_madd_epi16(wv, _mm256_loadu_si256(x.q.as_ptr().add(g * GROUP).cast()))
    }

    /// See [`super::offset_term`]: eight groups a step, a partial last step lane by lane.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn offsets(b: &[f32], o: &[f32]) -> f32 {
        let n = b.len().min(o.len());
        let mut acc = _mm256_setzero_ps();
        let full = n / 8 * 8;
        for g in (0..full).step_by(8) {
            let (bv, ov) = (
                _mm256_loadu_ps(b.as_ptr().add(g)),
                _mm256_loadu_ps(o.as_ptr().add(g)),
            );
            acc = _mm256_fmadd_ps(bv, ov, acc);
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), acc);
        for g in full..n {
            lanes[g % 8] = b[g].mul_add(o[g], lanes[g % 8]);
        }
        super::tree(&lanes)
    }

    /// See [`super::dot_blocks`]: block j's pair sums into the even or odd accumulator as `tokens`
    /// puts them for one token.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_blocks(ty: crate::gguf::GgmlType, bytes: &[u8], x: &QRow) -> f32 {
        per32(bytes, ty.block_bytes() as usize, x, |b| {
            let (v, d) = crate::quant::centred32(ty, b);
            (v, d, None)
        })
    }

    /// The one-token kernel over blocks of 32 with one scale each: `decode` gives a block's
    /// values, scale and (Q4_1) minimum; the sums as `tokens` makes them, then the minimums' term
    /// lane by lane as `offset_term` makes it (group g into lane g % 8, in order; 0 without).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn per32(
        bytes: &[u8],
        size: usize,
        x: &QRow,
        decode: impl Fn(&[u8]) -> (__m256i, f32, Option<f32>),
    ) -> f32 {
        let blocks = bytes.len() / size;
        assert!(bytes.len() == blocks * size && x.q.len() >= blocks * 32 && x.d.len() >= blocks);
        assert!(x.offs.len() >= 2 * blocks);
        let xp = x.q.as_ptr();
        let mut lanes = [0f32; 8];
        let mut step = |j: usize, acc: __m256| {
            let (v, d, min) = decode(bytes.get_unchecked(j * size..(j + 1) * size));
            if let Some(m) = min {
                for g in [2 * j, 2 * j + 1] {
                    lanes[g % 8] = m.mul_add(*x.offs.get_unchecked(g), lanes[g % 8]);
                }
            }
            let w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(v));
            let w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(v, 1));
            let x0 = _mm256_loadu_si256(xp.add(j * 32).cast());
            let x1 = _mm256_loadu_si256(xp.add(j * 32 + 16).cast());
            let p = _mm256_add_epi32(_mm256_madd_epi16(w0, x0), _mm256_madd_epi16(w1, x1));
            let s = _mm256_set1_ps(d * *x.d.get_unchecked(j));
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc)
        };
        let (mut e, mut o) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut j = 0;
        while j + 2 <= blocks {
            e = step(j, e);
            o = step(j + 1, o);
            j += 2;
        }
        if j < blocks {
            e = step(j, e);
        }
        // Without minimums the lanes stay 0: `dot` adds the absent offsets' 0.0 too.
        hsum(_mm256_add_ps(e, o)) + super::tree(&lanes)
    }

    /// [`super::dot_blocks`] for Q6_K: each chunk of 32 is two groups with their own scales, into
    /// the even and the odd accumulator as `tokens` puts `Per16` groups.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q6k(bytes: &[u8], x: &QRow) -> f32 {
        let blocks = bytes.len() / 210;
        assert!(
            bytes.len() == blocks * 210 && x.q.len() >= blocks * 256 && x.d.len() >= blocks * 8
        );
        let (mut e, mut o) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for blk in 0..blocks {
            let b = bytes.get_unchecked(blk * 210..(blk + 1) * 210);
            let (values, d) = crate::quant::q6k_values(b);
            for (k, v) in values.iter().enumerate() {
                let g = blk * 16 + 2 * k;
                let w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(*v));
                let w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(*v, 1));
                let p0 = _mm256_cvtepi32_ps(madd(w0, x, g));
                let p1 = _mm256_cvtepi32_ps(madd(w1, x, g + 1));
                let dx = *x.d.get_unchecked(g / 2);
                let (a0, a1) = (
                    d * f32::from(b[192 + 2 * k] as i8),
                    d * f32::from(b[193 + 2 * k] as i8),
                );
                e = _mm256_fmadd_ps(p0, _mm256_set1_ps(a0 * dx), e);
                o = _mm256_fmadd_ps(p1, _mm256_set1_ps(a1 * dx), o);
            }
        }
        hsum(_mm256_add_ps(e, o)) + 0.0
    }

    /// [`super::dot_blocks`] for Q4_K: eight sub-blocks of 32 a block, each with its scale into
    /// the even or odd accumulator (by its index in the row) and its minimum into the offsets'
    /// lanes, as `tokens` and `offset_term` take them.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4k(bytes: &[u8], x: &QRow) -> f32 {
        let blocks = bytes.len() / 144;
        assert!(bytes.len() == blocks * 144 && x.q.len() >= blocks * 256);
        assert!(x.d.len() >= blocks * 8 && x.offs.len() >= blocks * 16);
        let mut lanes = [0f32; 8];
        let (mut e, mut o) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        for blk in 0..blocks {
            let b = bytes.get_unchecked(blk * 144..(blk + 1) * 144);
            let (values, ds, dm) = crate::quant::q4k_values(b);
            for j in 0..8 {
                let sb = blk * 8 + j;
                let g = 2 * sb;
                for gg in [g, g + 1] {
                    lanes[gg % 8] = (-dm[j]).mul_add(*x.offs.get_unchecked(gg), lanes[gg % 8]);
                }
                let w0 = _mm256_cvtepi8_epi16(_mm256_castsi256_si128(values[j]));
                let w1 = _mm256_cvtepi8_epi16(_mm256_extracti128_si256(values[j], 1));
                let p = _mm256_add_epi32(madd(w0, x, g), madd(w1, x, g + 1));
                let s = _mm256_set1_ps(ds[j] * *x.d.get_unchecked(sb));
                let pf = _mm256_cvtepi32_ps(p);
                // Eight sub-blocks a block: even ones to `e`, odd ones to `o`, as `tokens` does.
                if j % 2 == 0 {
                    e = _mm256_fmadd_ps(pf, s, e);
                } else {
                    o = _mm256_fmadd_ps(pf, s, o);
                }
            }
        }
        hsum(_mm256_add_ps(e, o)) + super::tree(&lanes)
    }

    /// [`super::dot_blocks`] for Q4_1: its minimums in the offsets' term.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn dot_q4_1(bytes: &[u8], x: &QRow) -> f32 {
        per32(bytes, 20, x, |b| {
            let (v, d, m) = crate::quant::q4_1_values(b);
            (v, d, Some(m))
        })
    }

    /// The kernel (`tokens` and `dot`) for a set of CPU features and a way to sum a block's
    /// sixteen pairs of products into eight lanes (the integers are exact either way, so every
    /// variant gives the same results bit for bit).
    macro_rules! kernel {
        ($tokens:ident, $dot:ident, $feat:literal, $pairs:ident) => {
            /// `N` tokens against the row: per step the weights are widened once, then each token's pair
            /// sums are scaled into its even or odd accumulator.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn $tokens<const N: usize>(
                w: &[i8],
                a: &[f32],
                scales: Scales,
                xs: &[&QRow],
            ) -> [__m256; N] {
                let (wp, groups) = (w.as_ptr(), w.len() / GROUP);
                let mut acc = [[_mm256_setzero_ps(); 2]; N];
                // One block of 32 (Per32) into the token's even or odd accumulator.
                let block = |acc: &mut [[__m256; 2]; N], g: usize, odd: usize| {
                    let (w0, w1) = (widen(wp, g), widen(wp, g + 1));
                    let a0 = *a.get_unchecked(g);
                    for (t, x) in xs.iter().enumerate().take(N) {
                        let p = $pairs(w0, w1, x, g);
                        let s = _mm256_set1_ps(a0 * *x.d.get_unchecked(g / 2));
                        acc[t][odd] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), s, acc[t][odd]);
                    }
                };
                let mut g = 0;
                match scales {
                    Scales::Per32 => {
                        // Blocks alternate between the accumulators; a lone last block is even.
                        while g + 4 <= groups {
                            block(&mut acc, g, 0);
                            block(&mut acc, g + 2, 1);
                            g += 4;
                        }
                        if g < groups {
                            block(&mut acc, g, 0);
                        }
                    }
                    Scales::Per16 => {
                        while g < groups {
                            let (w0, w1) = (widen(wp, g), widen(wp, g + 1));
                            let (a0, a1) = (*a.get_unchecked(g), *a.get_unchecked(g + 1));
                            for (t, x) in xs.iter().enumerate().take(N) {
                                let d = *x.d.get_unchecked(g / 2);
                                let p0 = _mm256_cvtepi32_ps(madd(w0, x, g));
                                let p1 = _mm256_cvtepi32_ps(madd(w1, x, g + 1));
                                acc[t][0] = _mm256_fmadd_ps(p0, _mm256_set1_ps(a0 * d), acc[t][0]);
                                acc[t][1] = _mm256_fmadd_ps(p1, _mm256_set1_ps(a1 * d), acc[t][1]);
                            }
                            g += 2;
                        }
                    }
                }
                let mut out = [_mm256_setzero_ps(); N];
                for t in 0..N {
                    out[t] = _mm256_add_ps(acc[t][0], acc[t][1]);
                }
                out
            }

            /// See [`super::dot`].
            #[target_feature(enable = $feat)]
            pub unsafe fn $dot(
                w: &[i8],
                (a, b): (&[f32], &[f32]),
                scales: Scales,
                xs: &[&QRow],
                offsets: bool,
                out: &mut [f32],
            ) {
                let groups = w.len() / GROUP;
                assert!(
                    groups.is_multiple_of(2)
                        && (1..=TOKENS).contains(&xs.len())
                        && out.len() >= xs.len()
                );
                assert!(a.len() >= groups && b.len() >= groups);
                for x in xs {
                    assert!(x.q.len() >= w.len() && x.d.len() * 2 >= groups);
                }
                let mut sums = [_mm256_setzero_ps(); TOKENS];
                match xs.len() {
                    1 => sums[..1].copy_from_slice(&$tokens::<1>(w, a, scales, xs)),
                    2 => sums[..2].copy_from_slice(&$tokens::<2>(w, a, scales, xs)),
                    3 => sums[..3].copy_from_slice(&$tokens::<3>(w, a, scales, xs)),
                    _ => sums.copy_from_slice(&$tokens::<4>(w, a, scales, xs)),
                }
                for (t, x) in xs.iter().enumerate() {
                    out[t] = hsum(sums[t]) + offset_term(b, x, groups, offsets);
                }
            }
        };
    }

    kernel!(tokens, dot, "avx2,fma", pairs);
    kernel!(tokens_vnni, dot_vnni, "avx2,fma,avxvnni", pairs_vnni);

    /// A block's pair sums: each half's `vpmaddwd`, added.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn pairs(w0: __m256i, w1: __m256i, x: &QRow, g: usize) -> __m256i {
        _mm256_add_epi32(madd(w0, x, g), madd(w1, x, g + 1))
    }

    /// The same with AVX-VNNI: the second half multiplied and added in one `vpdpwssd`.
    #[inline]
    #[target_feature(enable = "avx2,fma,avxvnni")]
    unsafe fn pairs_vnni(w0: __m256i, w1: __m256i, x: &QRow, g: usize) -> __m256i {
        let x1 = _mm256_loadu_si256(x.q.as_ptr().add((g + 1) * GROUP).cast());
        _mm256_dpwssd_avx_epi32(madd(w0, x, g), w1, x1)
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
        // Per-32 rows repeat each scale over a block's two groups.
        let per16: Vec<f32> = (0..n / 16).map(|g| 0.01 + g as f32 * 1e-3).collect();
        let per32: Vec<f32> = (0..n / 16).map(|g| 0.01 + (g / 2) as f32 * 1e-3).collect();
        let b: Vec<f32> = (0..n / 16).map(|g| -0.05 * (g / 2) as f32).collect();
        let rows: Vec<QRow> = (0..5)
            .map(|t| {
                let x: Vec<f32> = (0..n)
                    .map(|i| ((i * 13 + t * 7) % 29) as f32 / 3.0 - 4.5 * (t as f32 + 1.0))
                    .collect();
                let mut r = QRow::default();
                r.quantize(&x);
                r
            })
            .collect();
        for (scales, a) in [(Scales::Per32, &per32), (Scales::Per16, &per16)] {
            for offsets in [false, true] {
                let alone: Vec<f32> = rows
                    .iter()
                    .map(|r| dot_scalar(&w, (a, &b), scales, r, offsets))
                    .collect();
                // The kernel with one to four tokens a pass gives each token's scalar result.
                for k in 1..=TOKENS {
                    let xs: Vec<&QRow> = rows[..k].iter().collect();
                    let mut got = [0f32; TOKENS];
                    dot(&w, (a, &b), scales, &xs, offsets, &mut got);
                    #[cfg(target_arch = "x86_64")]
                    if simd() && std::is_x86_feature_detected!("avxvnni") {
                        // Both variants, whichever `dot` picked.
                        let (mut v, mut p) = ([0f32; TOKENS], [0f32; TOKENS]);
                        unsafe { x86::dot_vnni(&w, (a, &b), scales, &xs, offsets, &mut v) };
                        unsafe { x86::dot(&w, (a, &b), scales, &xs, offsets, &mut p) };
                        assert_eq!(v.map(f32::to_bits), p.map(f32::to_bits));
                    }
                    for t in 0..k {
                        assert_eq!(
                            got[t].to_bits(),
                            alone[t].to_bits(),
                            "{scales:?} {k} tokens, token {t}"
                        );
                    }
                }
                let r = &rows[0];
                let exact: f64 = (0..n)
                    .map(|e| {
                        let off = if offsets { b[e / 16] as f64 } else { 0.0 };
                        let wv = a[e / 16] as f64 * w[e] as f64 + off;
                        wv * (r.d[e / 32] as f64 * r.q[e] as f64)
                    })
                    .sum();
                let s = alone[0] as f64;
                assert!(
                    (s - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                    "{s} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn offset_terms_agree_on_both_paths_with_a_partial_last_step() {
        for n in [96, 256, 416] {
            let x: Vec<f32> = (0..n)
                .map(|i| ((i * 11 % 23) as f32 - 11.0) / 5.0)
                .collect();
            let mut r = QRow::default();
            r.quantize(&x);
            let b: Vec<f32> = (0..n / 16).map(|g| 0.3 - 0.07 * g as f32).collect();
            let mut lanes = [0f32; 8];
            for g in 0..n / 16 {
                lanes[g % 8] = b[g].mul_add(r.offs[g], lanes[g % 8]);
            }
            let want = tree(&lanes);
            assert_eq!(
                offset_term(&b, &r, n / 16, true).to_bits(),
                want.to_bits(),
                "{n}"
            );
            let exact: f64 = (0..n / 16)
                .map(|g| b[g] as f64 * r.d[g / 2] as f64 * r.sums[g] as f64)
                .sum();
            assert!(
                (want as f64 - exact).abs() < 1e-4 * (1.0 + exact.abs()),
                "{want} vs {exact}"
            );
        }
    }
}
