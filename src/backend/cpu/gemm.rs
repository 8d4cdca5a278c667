//! Matrix-matrix product for prefill: `Y[t][r] = Σ_k W[r][k] · X[t][k]`.
//!
//! Algorithm (BLIS-style): a block of 16 weight rows × `KC` columns is widened to F32 and packed
//! k-major (`packed[k][16]`), then a 6-token × 16-row register tile is accumulated over the block
//! with two 8-lane FMAs per token per k. The packed block stays in L1, the token rows in L2, so
//! the kernel runs near the FMA limit instead of the F16→F32 conversion limit.

use super::simd::{has_avx2, WeightElem};

/// Rows per packed block (two 8-lane registers).
pub const NR: usize = 16;
/// Tokens per register tile.
pub const MR: usize = 6;
/// Columns (reduction length) per packed block.
pub const KC: usize = 256;

/// Pack rows `[r0, r0+nr)` × columns `[k0, k0+kc)` of row-major `w` (row length `k`) into
/// `out[kk*NR + j]`; rows past `nr` are zero.
pub fn pack<W: WeightElem>(
    w: &[W],
    k: usize,
    r0: usize,
    nr: usize,
    k0: usize,
    kc: usize,
    out: &mut [f32],
) {
    let mut tmp = [0f32; KC];
    for j in 0..NR {
        if j < nr {
            let row = &w[(r0 + j) * k + k0..(r0 + j) * k + k0 + kc];
            W::widen(row, &mut tmp[..kc]);
            for kk in 0..kc {
                out[kk * NR + j] = tmp[kk];
            }
        } else {
            for kk in 0..kc {
                out[kk * NR + j] = 0.0;
            }
        }
    }
}

/// Accumulate `y[t*ldy + j] += Σ_kk packed[kk][j] · x[t*ldx + kk]` for `t < mt`, `j < nr`.
///
/// # Safety
/// `x` must hold `mt` rows of stride `ldx` with `kc` readable columns each; `y` must hold `mt`
/// rows of stride `ldy` with `nr` writable columns; nobody else may write those `y` elements.
#[allow(clippy::too_many_arguments)] // the operands of a register-tile kernel
pub unsafe fn tile(
    packed: &[f32],
    kc: usize,
    x: *const f32,
    ldx: usize,
    mt: usize,
    y: *mut f32,
    ldy: usize,
    nr: usize,
) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && nr == NR {
        match mt {
            6 => return x86::tile::<6>(packed, kc, x, ldx, y, ldy),
            5 => return x86::tile::<5>(packed, kc, x, ldx, y, ldy),
            4 => return x86::tile::<4>(packed, kc, x, ldx, y, ldy),
            3 => return x86::tile::<3>(packed, kc, x, ldx, y, ldy),
            2 => return x86::tile::<2>(packed, kc, x, ldx, y, ldy),
            1 => return x86::tile::<1>(packed, kc, x, ldx, y, ldy),
            _ => {}
        }
    }
    for t in 0..mt {
        for j in 0..nr {
            let mut s = 0f32;
            for kk in 0..kc {
                s += packed[kk * NR + j] * *x.add(t * ldx + kk);
            }
            *y.add(t * ldy + j) += s;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::NR;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn tile<const M: usize>(
        packed: &[f32],
        kc: usize,
        x: *const f32,
        ldx: usize,
        y: *mut f32,
        ldy: usize,
    ) {
        let mut c0 = [_mm256_setzero_ps(); M];
        let mut c1 = [_mm256_setzero_ps(); M];
        let p = packed.as_ptr();
        for kk in 0..kc.min(packed.len() / NR) {
            let b0 = _mm256_loadu_ps(p.add(kk * NR));
            let b1 = _mm256_loadu_ps(p.add(kk * NR + 8));
            for t in 0..M {
                let a = _mm256_broadcast_ss(&*x.add(t * ldx + kk));
                c0[t] = _mm256_fmadd_ps(a, b0, c0[t]);
                c1[t] = _mm256_fmadd_ps(a, b1, c1[t]);
            }
        }
        for t in 0..M {
            let yp = y.add(t * ldy);
            _mm256_storeu_ps(yp, _mm256_add_ps(_mm256_loadu_ps(yp), c0[t]));
            _mm256_storeu_ps(yp.add(8), _mm256_add_ps(_mm256_loadu_ps(yp.add(8)), c1[t]));
        }
    }
}
