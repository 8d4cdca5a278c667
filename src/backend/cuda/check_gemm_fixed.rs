//! `check-cuda`'s checks of the batch-invariant product (`cuda/gemm_fixed.cu`): against an f64
//! reference at the model's shapes (odd row and column counts, adding into Y); the full product by
//! the direct kernels and by the tiled ones bit for bit the same; and each row's values bit for bit
//! the same computed alone or beside a few rows (direct kernels) as in the full product (tiled).

use std::fmt::Write as _;

use half::f16;
use rayon::prelude::*;

use super::blas::Blas;
use super::check::{download, median_us, randh, randn, upload, Report, MODEL_PRODUCTS, TOL_F32};
use super::driver::{DevBuf, Event, Stream};
use super::gemm_fixed::{FixedGemm, Kind};
use super::kernels::Kernels;
use crate::rng::Rng;

/// (rows, columns, K): narrow products, K split in 8, one row, more rows than one block takes,
/// and a wide product with a ragged last column group; then the tiled kernels' edges: rows
/// ending mid-tile, K split in 8 with a ragged last column tile, K of 2 chunks (empty ranges)
/// over many column tiles, and a column count one past a tile.
const SHAPES: [(usize, usize, usize); 9] = [
    (37, 1003, 896),
    (130, 520, 4864),
    (1, 9728, 896),
    (64, 1152, 96),
    (70, 33_003, 64),
    (100, 9728, 896),
    (130, 1000, 4864),
    (64, 33_003, 64),
    (200, 2049, 96),
];

pub(super) fn check_gemm_fixed(
    k: &Kernels,
    s: &Stream,
    rng: &mut Rng,
    r: &mut Report,
) -> Result<(), String> {
    for (m, n, kk) in SHAPES {
        let x = randh(rng, m * kk, 1.0);
        let w = randh(rng, n * kk, 0.05);
        let y0 = randn(rng, m * n, 1.0);
        let (xb, wb) = (upload(&x)?, upload(&w)?);
        let tiled = full(k, s, (&xb, &wb, &y0), (m, n, kk), Kind::Tiled)?;
        let direct = full(k, s, (&xb, &wb, &y0), (m, n, kk), Kind::Direct)?;
        r.err(
            &format!("gemm_fixed {m}x{n}x{kk} (+=)"),
            &tiled,
            &reference(&x, &w, &y0, m, n, kk),
            TOL_F32,
        );
        let differ = differing(&direct, &tiled);
        r.line(
            &format!("gemm_fixed {m}x{n}x{kk} kernels"),
            format!(
                "direct vs tiled: {differ} of {} values differ (0 required)",
                m * n
            ),
            differ == 0,
        );
        if m > 1 {
            invariance(k, s, r, (&xb, &wb, &y0), &tiled, (m, n, kk))?;
        }
    }
    Ok(())
}

/// Y0 + X · Wᵀ by the kernel family `kind`, whatever the planner would pick.
fn full(
    k: &Kernels,
    s: &Stream,
    (xb, wb, y0): (&DevBuf, &DevBuf, &[f32]),
    (m, n, kk): (usize, usize, usize),
    kind: Kind,
) -> Result<Vec<f32>, String> {
    let yb = upload(y0)?;
    k.gemm_fixed_as(kind, s, xb.ptr, wb.ptr, yb.ptr, (m, n, kk), true)?;
    s.sync()?;
    download::<f32>(&yb, m * n)
}

/// How many values of `a` and `b` carry different bits.
fn differing(a: &[f32], b: &[f32]) -> usize {
    a.iter()
        .zip(b)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count()
}

fn reference(x: &[f16], w: &[f16], y0: &[f32], m: usize, n: usize, kk: usize) -> Vec<f64> {
    let wide = |v: &[f16]| v.iter().map(|h| h.to_f64()).collect::<Vec<f64>>();
    let (x, w) = (wide(x), wide(w));
    (0..m * n)
        .into_par_iter()
        .map(|i| {
            let (xr, wr) = (&x[i / n * kk..][..kk], &w[i % n * kk..][..kk]);
            y0[i] as f64 + xr.iter().zip(wr).map(|(a, b)| a * b).sum::<f64>()
        })
        .collect()
}

/// Rows of the full product `full` (tiled kernels) recomputed alone and as the last row of a
/// 17-row product (direct kernels): every value must carry the same bits.
fn invariance(
    k: &Kernels,
    s: &Stream,
    r: &mut Report,
    (xb, wb, y0): (&DevBuf, &DevBuf, &[f32]),
    full: &[f32],
    (m, n, kk): (usize, usize, usize),
) -> Result<(), String> {
    let rows: Vec<usize> = [0, 1, 8, 15, 16, 17, 31, 32, 63, 64, 65, m / 2, m - 1]
        .into_iter()
        .filter(|&t| t < m)
        .collect();
    let (mut compared, mut differ) = (0usize, 0usize);
    for &t in &rows {
        for before in [0usize, 16] {
            // Rows t - before ..= t, with row t last (position `before` in its block's tile).
            let first = t.saturating_sub(before);
            let count = t - first + 1;
            let yb = upload(&y0[first * n..(t + 1) * n])?;
            let x = xb.ptr + (first * kk * 2) as u64;
            k.gemm_fixed_as(Kind::Direct, s, x, wb.ptr, yb.ptr, (count, n, kk), true)?;
            s.sync()?;
            let got = download::<f32>(&yb, count * n)?;
            compared += n;
            differ += differing(&got[(count - 1) * n..], &full[t * n..(t + 1) * n]);
        }
    }
    r.line(
        &format!("gemm_fixed {m}x{n}x{kk} invariance"),
        format!(
            "rows {rows:?} alone and after 16 others vs in {m}: {differ} of {compared} values differ (0 required)"
        ),
        differ == 0,
    );
    Ok(())
}

/// The real model's products at several row counts: the batch-invariant kernels (the planner's
/// pick, named in `kernel`, then the direct and the tiled ones forced) vs cuBLAS at the same rows
/// and vs cuBLAS over 64-row chunks (the invariant mode's other way), median of 50.
pub(super) fn time_fixed(k: &Kernels, s: &Stream, rng: &mut Rng) -> Result<String, String> {
    let blas = Blas::new(s)?;
    let (e0, e1) = (Event::new(true)?, Event::new(true)?);
    let mut out = String::from(
        "product (M x N x K)        fixed us  kernel  direct us  tiled us   cuBLAS us   cuBLAS-64 us   fixed GB/s\n",
    );
    for (n, kk) in MODEL_PRODUCTS {
        let w = randh(rng, n * kk, 0.05);
        let x = randh(rng, 512 * kk, 1.0);
        let (wb, xb, yb) = (upload(&w)?, upload(&x)?, upload(&vec![0f32; 512 * n])?);
        for m in [1usize, 8, 64, 128, 512] {
            let time = |f: &mut dyn FnMut() -> Result<(), String>| median_us(s, (&e0, &e1), 50, f);
            let as_kind = |kind| {
                time(&mut || k.gemm_fixed_as(kind, s, xb.ptr, wb.ptr, yb.ptr, (m, n, kk), false))
            };
            let ours = as_kind(FixedGemm::kind(m, n))?;
            let (direct, tiled) = (as_kind(Kind::Direct)?, as_kind(Kind::Tiled)?);
            let theirs = time(&mut || blas.gemm(xb.ptr, wb.ptr, yb.ptr, m, n, kk, false))?;
            let chunked = time(&mut || {
                (0..m.div_ceil(64)).try_for_each(|c| {
                    let (xo, yo) = ((c * 64 * kk * 2) as u64, (c * 64 * n * 4) as u64);
                    blas.gemm(xb.ptr + xo, wb.ptr, yb.ptr + yo, 64, n, kk, false)
                })
            })?;
            let kernel = match FixedGemm::kind(m, n) {
                Kind::Direct => "direct",
                Kind::Tiled => "tiled",
            };
            let _ = writeln!(
                out,
                "{:<26} {ours:>8.1} {kernel:>7} {direct:>10.1} {tiled:>9.1} {theirs:>11.1} {chunked:>14.1} {:>12.0}",
                format!("{m} x {n} x {kk}"),
                (n * kk * 2) as f64 / 1e3 / ours
            );
        }
    }
    Ok(out)
}
