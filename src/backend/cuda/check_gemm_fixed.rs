//! `check-cuda`'s checks of the batch-invariant product (`cuda/gemm_fixed.cu`): against an f64
//! reference at the model's shapes (odd row and column counts, adding into Y), and each row's
//! values bit for bit the same computed alone, beside a few rows, and beside many.

use std::fmt::Write as _;

use half::f16;

use super::blas::Blas;
use super::check::{download, median_us, randh, randn, upload, Report, MODEL_PRODUCTS, TOL_F32};
use super::driver::{Event, Stream};
use super::kernels::Kernels;
use crate::rng::Rng;

/// (rows, columns, K): narrow products, K split in 8, one row, more rows than one block takes,
/// and a wide product with a ragged last column group.
const SHAPES: [(usize, usize, usize); 5] = [
    (37, 1003, 896),
    (130, 520, 4864),
    (1, 9728, 896),
    (64, 1152, 96),
    (70, 33_003, 64),
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
        let (xb, wb, yb) = (upload(&x)?, upload(&w)?, upload(&y0)?);
        k.gemm_fixed(s, xb.ptr, wb.ptr, yb.ptr, m, n, kk, true)?;
        s.sync()?;
        let got = download::<f32>(&yb, m * n)?;
        r.err(
            &format!("gemm_fixed {m}x{n}x{kk} (+=)"),
            &got,
            &reference(&x, &w, &y0, m, n, kk),
            TOL_F32,
        );
        if m > 1 {
            invariance(k, s, r, (&xb, &wb, &y0), &got, (m, n, kk))?;
        }
    }
    Ok(())
}

fn reference(x: &[f16], w: &[f16], y0: &[f32], m: usize, n: usize, kk: usize) -> Vec<f64> {
    (0..m * n)
        .map(|i| {
            let (t, o) = (i / n, i % n);
            let dot: f64 = (0..kk)
                .map(|j| x[t * kk + j].to_f64() * w[o * kk + j].to_f64())
                .sum();
            y0[i] as f64 + dot
        })
        .collect()
}

/// Rows of the full product `full` recomputed alone and as the last row of a 17-row product:
/// every value must carry the same bits.
fn invariance(
    k: &Kernels,
    s: &Stream,
    r: &mut Report,
    (xb, wb, y0): (&super::driver::DevBuf, &super::driver::DevBuf, &[f32]),
    full: &[f32],
    (m, n, kk): (usize, usize, usize),
) -> Result<(), String> {
    let rows: Vec<usize> = [0, 1, 8, 15, 16, 17, m / 2, m - 1]
        .into_iter()
        .filter(|&t| t < m)
        .collect();
    let (mut compared, mut differing) = (0usize, 0usize);
    for &t in &rows {
        for before in [0usize, 16] {
            // Rows t - before ..= t, with row t last (position `before` in its block's tile).
            let first = t.saturating_sub(before);
            let count = t - first + 1;
            let yb = upload(&y0[first * n..(t + 1) * n])?;
            let x = xb.ptr + (first * kk * 2) as u64;
            k.gemm_fixed(s, x, wb.ptr, yb.ptr, count, n, kk, true)?;
            s.sync()?;
            let got = download::<f32>(&yb, count * n)?;
            let row = &got[(count - 1) * n..];
            compared += n;
            differing += row
                .iter()
                .zip(&full[t * n..(t + 1) * n])
                .filter(|(a, b)| a.to_bits() != b.to_bits())
                .count();
        }
    }
    r.line(
        &format!("gemm_fixed {m}x{n}x{kk} invariance"),
        format!(
            "rows {rows:?} alone and after 16 others vs in {m}: {differing} of {compared} values differ (0 required)"
        ),
        differing == 0,
    );
    Ok(())
}

/// The real model's products at several row counts: the batch-invariant kernel vs cuBLAS at the
/// same rows and vs cuBLAS over 64-row chunks (the invariant mode's other way), median of 50.
pub(super) fn time_fixed(k: &Kernels, s: &Stream, rng: &mut Rng) -> Result<String, String> {
    let blas = Blas::new(s)?;
    let (e0, e1) = (Event::new(true)?, Event::new(true)?);
    let mut out = String::from(
        "product (M x N x K)        fixed us   cuBLAS us   cuBLAS-64 us   fixed GB/s\n",
    );
    for (n, kk) in MODEL_PRODUCTS {
        let w = randh(rng, n * kk, 0.05);
        let x = randh(rng, 512 * kk, 1.0);
        let (wb, xb, yb) = (upload(&w)?, upload(&x)?, upload(&vec![0f32; 512 * n])?);
        for m in [1usize, 8, 64, 128, 512] {
            let time = |f: &mut dyn FnMut() -> Result<(), String>| median_us(s, (&e0, &e1), 50, f);
            let fixed = time(&mut || k.gemm_fixed(s, xb.ptr, wb.ptr, yb.ptr, m, n, kk, false))?;
            let theirs = time(&mut || blas.gemm(xb.ptr, wb.ptr, yb.ptr, m, n, kk, false))?;
            let chunked = time(&mut || {
                (0..m.div_ceil(64)).try_for_each(|c| {
                    let (xo, yo) = ((c * 64 * kk * 2) as u64, (c * 64 * n * 4) as u64);
                    blas.gemm(xb.ptr + xo, wb.ptr, yb.ptr + yo, 64, n, kk, false)
                })
            })?;
            let _ = writeln!(
                out,
                "{:<26} {fixed:>8.1} {theirs:>11.1} {chunked:>14.1} {:>12.0}",
                format!("{m} x {n} x {kk}"),
                (n * kk * 2) as f64 / 1e3 / fixed
            );
        }
    }
    Ok(out)
}
