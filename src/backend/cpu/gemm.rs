//! Matrix-matrix product for prefill: `Y[t][r] = Σ_k W[r][k] · X[t][k]`.
//!
//! Algorithm: a register tile of 3 weight rows × 3 tokens keeps 9 eight-lane accumulators; each
//! step loads 8 weights of each row once (widening F16 → F32 in registers) and 8 activations of
//! each token once, and issues 12 FMAs. Where the CPU has AVX-512 every kernel runs 16 lanes wide
//! instead (about a fifth more F32 FMA throughput on the CI-class Xeon, which the batched decode
//! is bound by); all of them switch together, on the same condition (`kc` a multiple of 16), so a
//! (row, token)'s sum is still computed the same way whatever the number of tokens. No packing pass: each task's 12-row × `KC` block of W (≤ 24 KiB in F16) stays
//! in L1 while every token tile of the chunk streams past it from L2. The reduction is split into
//! `KC`-long blocks so that long rows (the FFN down projection) keep X's working set in L2.

use half::f16;

use super::simd::{has_avx2, has_avx512};

/// Reduction (column) block length.
pub const KC: usize = 1024;
/// Tokens per register tile.
pub const MT: usize = 3;
/// Weight rows per register tile.
pub const NR: usize = 3;

/// Weight element types the tile kernels read.
pub trait GemmElem: super::simd::WeightElem {
    /// `out[j][t] = Σ_{k<kc} w[j*ldw + k] · x[t*ldx + k]` for `j < NR`, `t < mt`.
    ///
    /// # Safety
    /// `w` must have `NR` readable rows of stride `ldw` with `kc` columns; `x` `mt` rows of stride
    /// `ldx` with `kc` columns.
    unsafe fn tile(
        w: *const Self,
        ldw: usize,
        x: *const f32,
        ldx: usize,
        kc: usize,
        mt: usize,
    ) -> [[f32; MT]; NR];

    /// One token: `out[j] = Σ_{k<kc} w[j*ldw + k] · x[k]`, bit-identical to `tile(..)[j][0]`, so a
    /// row's result never depends on how many tokens share its product.
    ///
    /// # Safety
    /// As for `tile` with `mt == 1`.
    unsafe fn tile1(w: *const Self, ldw: usize, x: *const f32, kc: usize) -> [f32; NR];

    /// One weight row against `n ≤ ROW_TOKENS` tokens: `out[t] = Σ_{k<kc} w[k] · x[t*ldx + k]`,
    /// each bit-identical to the tile's sum for that (row, token). The row is read once for all
    /// tokens, so a small batch streams W at memory speed while it computes.
    ///
    /// # Safety
    /// `w` must have `kc` readable elements; `x` `n` rows of stride `ldx` with `kc` columns.
    unsafe fn row_tokens(
        w: *const Self,
        x: *const f32,
        ldx: usize,
        kc: usize,
        n: usize,
    ) -> [f32; ROW_TOKENS];
}

/// Most tokens `row_tokens` takes at once (one accumulator each, in registers).
pub const ROW_TOKENS: usize = 8;

macro_rules! impl_tile {
    ($ty:ty, $load:ident, $load1:ident, $rows:ident) => {
        impl GemmElem for $ty {
            unsafe fn tile(
                w: *const $ty,
                ldw: usize,
                x: *const f32,
                ldx: usize,
                kc: usize,
                mt: usize,
            ) -> [[f32; MT]; NR] {
                #[cfg(target_arch = "x86_64")]
                if has_avx512() && kc % 16 == 0 {
                    return x86::wide::$load(w, ldw, x, ldx, kc, mt);
                }
                #[cfg(target_arch = "x86_64")]
                if has_avx2() && kc % 8 == 0 {
                    return x86::$load(w, ldw, x, ldx, kc, mt);
                }
                scalar_tile(w, ldw, x, ldx, kc, mt)
            }
            unsafe fn tile1(w: *const $ty, ldw: usize, x: *const f32, kc: usize) -> [f32; NR] {
                #[cfg(target_arch = "x86_64")]
                if has_avx512() && kc % 16 == 0 {
                    return x86::wide::$load1(w, ldw, x, kc);
                }
                #[cfg(target_arch = "x86_64")]
                if has_avx2() && kc % 8 == 0 {
                    return x86::$load1(w, ldw, x, kc);
                }
                let t = scalar_tile(w, ldw, x, kc, kc, 1);
                [t[0][0], t[1][0], t[2][0]]
            }
            unsafe fn row_tokens(
                w: *const $ty,
                x: *const f32,
                ldx: usize,
                kc: usize,
                n: usize,
            ) -> [f32; ROW_TOKENS] {
                #[cfg(target_arch = "x86_64")]
                if has_avx512() && kc % 16 == 0 {
                    return x86::wide::$rows(w, x, ldx, kc, n);
                }
                #[cfg(target_arch = "x86_64")]
                if has_avx2() && kc % 8 == 0 {
                    return x86::$rows(w, x, ldx, kc, n);
                }
                let mut out = [0f32; ROW_TOKENS];
                for (t, o) in out.iter_mut().enumerate().take(n) {
                    *o = scalar_tile(w, 0, x.add(t * ldx), ldx, kc, 1)[0][0];
                }
                out
            }
        }
    };
}

impl_tile!(f16, tile_f16, tile1_f16, rows_f16);
impl_tile!(f32, tile_f32, tile1_f32, rows_f32);

unsafe fn scalar_tile<W: super::simd::WeightElem>(
    w: *const W,
    ldw: usize,
    x: *const f32,
    ldx: usize,
    kc: usize,
    mt: usize,
) -> [[f32; MT]; NR] {
    let mut out = [[0f32; MT]; NR];
    for (j, row) in out.iter_mut().enumerate() {
        for (t, o) in row.iter_mut().enumerate().take(mt) {
            let mut s = 0f32;
            for k in 0..kc {
                s += (*w.add(j * ldw + k)).to_f32() * *x.add(t * ldx + k);
            }
            *o = s;
        }
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{MT, NR};
    use half::f16;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)))
    }

    // Each kernel is written once over a vector width: `[lanes, zero, fma, load activations,
    // horizontal sum]` (the AVX2 set here, the AVX-512 one in `wide`).

    macro_rules! tile_fn {
        ($name:ident, $ty:ty, $feat:literal, $load:expr,
         [$lanes:literal, $zero:ident, $fma:ident, $loadx:ident, $hsum:ident]) => {
            /// The 3 × 3 tile with every accumulator a named local: nine accumulators, three
            /// activation vectors and one weight vector fit the sixteen registers without spills.
            /// Fewer than 3 tokens reuse token 0's row and drop the extra sums.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(
                w: *const $ty,
                ldw: usize,
                x: *const f32,
                ldx: usize,
                kc: usize,
                mt: usize,
            ) -> [[f32; MT]; NR] {
                let x0 = x;
                let x1 = if mt > 1 { x.add(ldx) } else { x };
                let x2 = if mt > 2 { x.add(2 * ldx) } else { x };
                let (w0, w1, w2) = (w, w.add(ldw), w.add(2 * ldw));
                let z = $zero();
                let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (z, z, z, z, z, z);
                let (mut a20, mut a21, mut a22) = (z, z, z);
                let mut k = 0;
                while k < kc {
                    let v0 = $loadx(x0.add(k));
                    let v1 = $loadx(x1.add(k));
                    let v2 = $loadx(x2.add(k));
                    let wv = $load(w0.add(k));
                    a00 = $fma(wv, v0, a00);
                    a01 = $fma(wv, v1, a01);
                    a02 = $fma(wv, v2, a02);
                    let wv = $load(w1.add(k));
                    a10 = $fma(wv, v0, a10);
                    a11 = $fma(wv, v1, a11);
                    a12 = $fma(wv, v2, a12);
                    let wv = $load(w2.add(k));
                    a20 = $fma(wv, v0, a20);
                    a21 = $fma(wv, v1, a21);
                    a22 = $fma(wv, v2, a22);
                    k += $lanes;
                }
                [
                    [$hsum(a00), $hsum(a01), $hsum(a02)],
                    [$hsum(a10), $hsum(a11), $hsum(a12)],
                    [$hsum(a20), $hsum(a21), $hsum(a22)],
                ]
            }
        };
    }

    macro_rules! tile1_fn {
        ($name:ident, $ty:ty, $feat:literal, $load:expr,
         [$lanes:literal, $zero:ident, $fma:ident, $loadx:ident, $hsum:ident]) => {
            /// Token 0's column of the 3 × 3 tile: the same accumulator chain per row, in the
            /// same order, without the two unused token columns.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(w: *const $ty, ldw: usize, x: *const f32, kc: usize) -> [f32; NR] {
                let (w0, w1, w2) = (w, w.add(ldw), w.add(2 * ldw));
                let z = $zero();
                let (mut a0, mut a1, mut a2) = (z, z, z);
                let mut k = 0;
                while k < kc {
                    let v0 = $loadx(x.add(k));
                    a0 = $fma($load(w0.add(k)), v0, a0);
                    a1 = $fma($load(w1.add(k)), v0, a1);
                    a2 = $fma($load(w2.add(k)), v0, a2);
                    k += $lanes;
                }
                [$hsum(a0), $hsum(a1), $hsum(a2)]
            }
        };
    }

    macro_rules! rows_fn {
        ($name:ident, $inner:ident, $ty:ty, $feat:literal, $load:expr,
         [$lanes:literal, $zero:ident, $fma:ident, $loadx:ident, $hsum:ident]) => {
            /// One weight row × `N` tokens: one accumulator chain per token, in k order.
            #[inline]
            #[target_feature(enable = $feat)]
            unsafe fn $inner<const N: usize>(
                w: *const $ty,
                x: *const f32,
                ldx: usize,
                kc: usize,
            ) -> [f32; crate::backend::cpu::gemm::ROW_TOKENS] {
                let mut acc = [$zero(); N];
                let mut k = 0;
                while k < kc {
                    let wv = $load(w.add(k));
                    for (t, a) in acc.iter_mut().enumerate() {
                        *a = $fma(wv, $loadx(x.add(t * ldx + k)), *a);
                    }
                    k += $lanes;
                }
                let mut out = [0f32; crate::backend::cpu::gemm::ROW_TOKENS];
                for (o, a) in out.iter_mut().zip(acc) {
                    *o = $hsum(a);
                }
                out
            }

            #[target_feature(enable = $feat)]
            pub unsafe fn $name(
                w: *const $ty,
                x: *const f32,
                ldx: usize,
                kc: usize,
                n: usize,
            ) -> [f32; crate::backend::cpu::gemm::ROW_TOKENS] {
                match n {
                    1 => $inner::<1>(w, x, ldx, kc),
                    2 => $inner::<2>(w, x, ldx, kc),
                    3 => $inner::<3>(w, x, ldx, kc),
                    4 => $inner::<4>(w, x, ldx, kc),
                    5 => $inner::<5>(w, x, ldx, kc),
                    6 => $inner::<6>(w, x, ldx, kc),
                    7 => $inner::<7>(w, x, ldx, kc),
                    _ => $inner::<8>(w, x, ldx, kc),
                }
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    /// Every kernel of one vector width: `$feat` its CPU features (with `f16c` for F16 weights),
    /// `$width` as the macros above take it.
    macro_rules! kernels {
        ($feat:literal, $feat16:literal, $width:tt) => {
            tile_fn!(tile_f16, f16, $feat16, load_f16, $width);
            tile_fn!(tile_f32, f32, $feat, load_f32, $width);
            tile1_fn!(tile1_f16, f16, $feat16, load_f16, $width);
            tile1_fn!(tile1_f32, f32, $feat, load_f32, $width);
            rows_fn!(rows_f16, rows_n_f16, f16, $feat16, load_f16, $width);
            rows_fn!(rows_f32, rows_n_f32, f32, $feat, load_f32, $width);
        };
    }

    kernels!(
        "avx2,fma",
        "avx2,fma,f16c",
        [8, _mm256_setzero_ps, _mm256_fmadd_ps, _mm256_loadu_ps, hsum]
    );

    /// The same three kernels 16 lanes wide (AVX-512F): each accumulator chain runs over k in
    /// steps of 16, and its lanes are summed as the two 8-lane halves added, then `hsum`.
    pub mod wide {
        use super::super::{MT, NR};
        use super::hsum;
        use half::f16;
        use std::arch::x86_64::*;

        #[inline]
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn hsum16(v: __m512) -> f32 {
            let lo = _mm512_castps512_ps256(v);
            let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
            hsum(_mm256_add_ps(lo, hi))
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx2,fma,f16c")]
        unsafe fn load_f16(p: *const f16) -> __m512 {
            _mm512_cvtph_ps(_mm256_loadu_si256(p as *const __m256i))
        }

        #[inline]
        #[target_feature(enable = "avx512f,avx2,fma")]
        unsafe fn load_f32(p: *const f32) -> __m512 {
            _mm512_loadu_ps(p)
        }

        kernels!(
            "avx512f,avx2,fma",
            "avx512f,avx2,fma,f16c",
            [
                16,
                _mm512_setzero_ps,
                _mm512_fmadd_ps,
                _mm512_loadu_ps,
                hsum16
            ]
        );
    }
}
