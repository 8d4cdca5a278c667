//! Dot-product kernels over F16 or F32 weight rows with F32 activations.
//!
//! AVX2 + FMA + F16C where the CPU has them (checked once at runtime), a portable scalar loop
//! otherwise. Decode reads each weight row as one sequential stream (`dot1`): it is bound by memory
//! traffic, and a single stream is what the hardware prefetcher follows best.

use half::f16;
use std::sync::OnceLock;

/// Whether the AVX2/FMA/F16C kernels may run on this CPU.
pub fn has_avx2() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// Whether the 512-bit product kernels may run (AVX-512F, beside the AVX2 set): their sums run
/// 16 lanes wide, so every product path switches together (see `gemm.rs`).
pub fn has_avx512() -> bool {
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            has_avx2()
                && std::is_x86_feature_detected!("avx512f")
                && std::env::var_os("LAYERSTREAM_CPU_NO_AVX512").is_none()
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    })
}

/// A weight element type the kernels read.
pub trait WeightElem: Copy + Send + Sync + 'static {
    fn to_f32(self) -> f32;
    /// `row · x` with one sequential stream over the row (decode reads weights in memory order).
    fn dot1(row: &[Self], x: &[f32]) -> f32;
    /// Convert `src` into `dst` (same length).
    fn widen(src: &[Self], dst: &mut [f32]);
}

impl WeightElem for f32 {
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
    fn dot1(row: &[f32], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU features were checked above; lengths are clamped inside.
            return unsafe { x86::dot1_f32(row, x) };
        }
        dot_scalar(row, x)
    }
    fn widen(src: &[f32], dst: &mut [f32]) {
        dst.copy_from_slice(src);
    }
}

impl WeightElem for f16 {
    #[inline]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    fn dot1(row: &[f16], x: &[f32]) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU features were checked above; lengths are clamped inside.
            return unsafe { x86::dot1_f16(row, x) };
        }
        dot_scalar(row, x)
    }
    fn widen(src: &[f16], dst: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if has_avx2() {
            // SAFETY: the CPU features were checked above.
            unsafe { x86::widen_f16(src, dst) };
            return;
        }
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
    }
}

/// SwiGLU over a row: `out[i] = gate[i] / (1 + e^-gate[i]) * up[i]`, eight lanes at a time.
pub fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU features were checked above; lengths are clamped inside.
        unsafe { x86::silu_mul(gate, up, out) };
        return;
    }
    for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

fn dot_scalar<W: WeightElem>(row: &[W], x: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let n = row.len().min(x.len());
    let chunks = n / 8;
    for c in 0..chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += row[c * 8 + l].to_f32() * x[c * 8 + l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..n {
        s += row[i].to_f32() * x[i];
    }
    s
}

#[cfg(target_arch = "x86_64")]
pub(super) mod x86 {
    use half::f16;
    use std::arch::x86_64::*;

    /// The eight lanes summed: (l + l+4), then pairs of those (`qdot`'s `tree` in scalar form).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(in crate::backend::cpu) unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }

    macro_rules! dot1_fn {
        ($name:ident, $ty:ty, $feat:literal, $load:expr) => {
            /// Four independent 8-lane accumulators over 32 elements per step.
            #[target_feature(enable = $feat)]
            pub unsafe fn $name(row: &[$ty], x: &[f32]) -> f32 {
                let n = row.len().min(x.len());
                let main = n / 32 * 32;
                let (r, xp) = (row.as_ptr(), x.as_ptr());
                let mut a = [_mm256_setzero_ps(); 4];
                let mut i = 0;
                while i < main {
                    a[0] = _mm256_fmadd_ps($load(r.add(i)), _mm256_loadu_ps(xp.add(i)), a[0]);
                    a[1] =
                        _mm256_fmadd_ps($load(r.add(i + 8)), _mm256_loadu_ps(xp.add(i + 8)), a[1]);
                    a[2] = _mm256_fmadd_ps(
                        $load(r.add(i + 16)),
                        _mm256_loadu_ps(xp.add(i + 16)),
                        a[2],
                    );
                    a[3] = _mm256_fmadd_ps(
                        $load(r.add(i + 24)),
                        _mm256_loadu_ps(xp.add(i + 24)),
                        a[3],
                    );
                    i += 32;
                }
                let mut s = hsum(_mm256_add_ps(
                    _mm256_add_ps(a[0], a[1]),
                    _mm256_add_ps(a[2], a[3]),
                ));
                for k in main..n {
                    s += super::WeightElem::to_f32(*r.add(k)) * x[k];
                }
                s
            }
        };
    }

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }

    dot1_fn!(dot1_f16, f16, "avx2,fma,f16c", load_f16);
    dot1_fn!(dot1_f32, f32, "avx2,fma", load_f32);

    /// e^x for eight lanes (Cephes expf: range reduction by ln 2, degree-5 polynomial;
    /// relative error ~2e-7 over the clamped range).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(
            _mm256_max_ps(x, _mm256_set1_ps(-87.3)),
            _mm256_set1_ps(88.3),
        );
        let n = _mm256_floor_ps(_mm256_fmadd_ps(
            x,
            _mm256_set1_ps(std::f32::consts::LOG2_E),
            _mm256_set1_ps(0.5),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
        let r2 = _mm256_mul_ps(r, r);
        let y = _mm256_add_ps(_mm256_fmadd_ps(p, r2, r), _mm256_set1_ps(1.0));
        let pow2 = _mm256_castsi256_ps(_mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        ));
        _mm256_mul_ps(y, pow2)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(gate: &[f32], up: &[f32], out: &mut [f32]) {
        let n = gate.len().min(up.len()).min(out.len());
        let main = n / 8 * 8;
        let one = _mm256_set1_ps(1.0);
        let mut i = 0;
        while i < main {
            let g = _mm256_loadu_ps(gate.as_ptr().add(i));
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
            let s = _mm256_div_ps(g, _mm256_add_ps(one, e));
            _mm256_storeu_ps(
                out.as_mut_ptr().add(i),
                _mm256_mul_ps(s, _mm256_loadu_ps(up.as_ptr().add(i))),
            );
            i += 8;
        }
        for k in main..n {
            out[k] = gate[k] / (1.0 + (-gate[k]).exp()) * up[k];
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn widen_f16(src: &[f16], dst: &mut [f32]) {
        let n = src.len().min(dst.len());
        let main = n / 8 * 8;
        let mut i = 0;
        while i < main {
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), load_f16(src.as_ptr().add(i)));
            i += 8;
        }
        for k in main..n {
            dst[k] = src[k].to_f32();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_silu_matches_scalar_to_float_precision() {
        let g: Vec<f32> = (0..1003).map(|i| (i as f32 - 500.0) * 0.37).collect();
        let u: Vec<f32> = (0..1003).map(|i| 1.0 + (i % 13) as f32 * 0.1).collect();
        let mut out = vec![f32::NAN; g.len()];
        silu_mul(&g, &u, &mut out);
        for i in 0..g.len() {
            let want = (g[i] as f64 / (1.0 + (-(g[i] as f64)).exp()) * u[i] as f64) as f32;
            assert!(
                (out[i] - want).abs() <= 1e-6 * (1.0 + want.abs()),
                "{}: {} vs {want}",
                g[i],
                out[i]
            );
        }
    }

    #[test]
    fn dot1_matches_scalar_for_f16_and_f32_with_tails() {
        for n in [1usize, 7, 16, 33, 896] {
            let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.1).collect();
            let rows: Vec<Vec<f32>> = (0..4)
                .map(|r| {
                    (0..n)
                        .map(|i| ((i * 13 + r * 7) % 17) as f32 * 0.05 - 0.4)
                        .collect()
                })
                .collect();
            let rows16: Vec<Vec<f16>> = rows
                .iter()
                .map(|r| r.iter().map(|&v| f16::from_f32(v)).collect())
                .collect();
            let got32: Vec<f32> = rows.iter().map(|r| f32::dot1(r, &x)).collect();
            let got16: Vec<f32> = rows16.iter().map(|r| f16::dot1(r, &x)).collect();
            for j in 0..4 {
                let want32: f32 = rows[j].iter().zip(&x).map(|(a, b)| a * b).sum();
                let want16: f32 = rows16[j].iter().zip(&x).map(|(a, b)| a.to_f32() * b).sum();
                assert!(
                    (got32[j] - want32).abs() <= 1e-4 * (1.0 + want32.abs()),
                    "f32 n={n}"
                );
                assert!(
                    (got16[j] - want16).abs() <= 1e-4 * (1.0 + want16.abs()),
                    "f16 n={n}"
                );
            }
        }
    }
}
