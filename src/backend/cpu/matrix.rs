//! A weight matrix in the CPU backend's compute layout, and its parallel products.
//!
//! Row-major `[rows][cols]` (a GGUF tensor with dims `[cols, rows]` as stored), F16 or F32, or
//! the file's quantized blocks (`qmat`).
//! Work is split over output rows with rayon; no allocation happens per call.

use half::f16;
use rayon::prelude::*;

use super::buffer::WeightBuf;
use super::gemm::{GemmElem, KC, MT, NR, ROW_TOKENS};
use super::qmat::QuantMat;
use super::simd::WeightElem;

/// Weight storage.
#[derive(Debug)]
pub enum MatData {
    F16(WeightBuf<f16>),
    F32(WeightBuf<f32>),
    Quant(QuantMat),
}

/// A `[rows][cols]` weight matrix.
#[derive(Debug)]
pub struct Matrix {
    pub rows: usize,
    pub cols: usize,
    pub data: MatData,
}

/// Rows handed to one rayon task in a matrix-vector product.
const MATVEC_ROWS_PER_TASK: usize = 64;

impl Matrix {
    pub fn bytes(&self) -> usize {
        match &self.data {
            MatData::F16(v) => v.len() * 2,
            MatData::F32(v) => v.len() * 4,
            MatData::Quant(q) => q.bytes.len(),
        }
    }

    /// Copy row `r` into `out` as F32 (embedding lookup).
    pub fn row_into(&self, r: usize, out: &mut [f32]) {
        let range = r * self.cols..(r + 1) * self.cols;
        match &self.data {
            MatData::F16(v) => f16::widen(&v[range], out),
            MatData::F32(v) => out.copy_from_slice(&v[range]),
            MatData::Quant(q) => q.row_into(r, out),
        }
    }

    /// `y = W x` (`x.len() == cols`, `y.len() == rows`).
    pub fn matvec(&self, x: &[f32], y: &mut [f32]) {
        match &self.data {
            MatData::F16(w) => matvec_impl(w, self.cols, x, y),
            MatData::F32(w) => matvec_impl(w, self.cols, x, y),
            MatData::Quant(q) => q.matmul(self.rows, self.cols, x, 1, y),
        }
    }

    /// `Y[t] = W X[t]` for `n_tok` tokens: `x` is `[n_tok][cols]`, `y` is `[n_tok][rows]`.
    ///
    /// Row-invariant: each `Y[t]` is bit-identical whatever `n_tok` is and wherever token `t`
    /// sits among the others (every output sums its products in the same order), so a sequence's
    /// results do not depend on what else shares the batch.
    pub fn matmul(&self, x: &[f32], n_tok: usize, y: &mut [f32]) {
        match &self.data {
            MatData::F16(w) => matmul_impl(w, self.rows, self.cols, x, n_tok, y),
            MatData::F32(w) => matmul_impl(w, self.rows, self.cols, x, n_tok, y),
            MatData::Quant(q) => q.matmul(self.rows, self.cols, x, n_tok, y),
        }
    }
}

fn matvec_impl<W: WeightElem>(w: &[W], cols: usize, x: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(MATVEC_ROWS_PER_TASK)
        .enumerate()
        .for_each(|(chunk, out)| {
            let r0 = chunk * MATVEC_ROWS_PER_TASK;
            let row = |r: usize| &w[(r0 + r) * cols..(r0 + r + 1) * cols];
            for (r, o) in out.iter_mut().enumerate() {
                *o = W::dot1(row(r), x);
            }
        });
}

/// Raw output pointer shared by tasks that write disjoint columns.
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);
// SAFETY: each task writes only the columns of its own row block.
unsafe impl Send for OutPtr {}
unsafe impl Sync for OutPtr {}

/// Weight rows per rayon task in a matrix-matrix product.
const MATMUL_ROWS_PER_TASK: usize = 12;

fn matmul_impl<W: GemmElem>(
    w: &[W],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tok: usize,
    y: &mut [f32],
) {
    assert!(x.len() >= n_tok * cols && y.len() >= n_tok * rows && w.len() >= rows * cols);
    y[..n_tok * rows].fill(0.0);
    let out = OutPtr(y.as_mut_ptr());
    let rpt = MATMUL_ROWS_PER_TASK;
    let tasks = rows.div_ceil(rpt);
    // Equal reduction blocks of at most KC columns: long enough that the per-tile horizontal sums
    // are cheap, short enough that the task's W block and one token tile stay near L1.
    let block = cols.div_ceil(cols.div_ceil(KC)).next_multiple_of(16);
    // Rows a 3-row tile cannot cover (the matrix's last `rows % NR`) are summed with `dot1` on
    // every path, so each (row, token) is computed the same way at any token count.
    let tail = rows - rows % NR;
    let p = Product {
        w,
        rows,
        cols,
        x,
        n_tok,
        block,
        tail,
    };
    // One token: the 3-row tile keeps three accumulator chains in flight (one chain a row would
    // wait on each FMA's latency); 2 to ROW_TOKENS tokens already give each row that many.
    let few = (2..=ROW_TOKENS).contains(&n_tok);
    (0..tasks).into_par_iter().for_each(|task| {
        let r = task * rpt..((task + 1) * rpt).min(rows);
        // SAFETY: bounds asserted above; this task alone writes columns `r`.
        unsafe {
            if few {
                rows_task(p, r, out)
            } else {
                tiles_task(p, r, out)
            }
        }
    });
}

/// Many tokens (or one): 3-row × 3-token register tiles; the task's W block (12 rows × ≤ KC)
/// stays in L1 while token tiles pass over it.
///
/// # Safety
/// As for [`rows_task`].
unsafe fn tiles_task<W: GemmElem>(p: Product<'_, W>, r: std::ops::Range<usize>, out: OutPtr) {
    let (w, x, rows, cols) = (p.w, p.x, p.rows, p.cols);
    let mut k0 = 0;
    while k0 < cols {
        let kc = p.block.min(cols - k0);
        let mut t = 0;
        while t < p.n_tok {
            let mt = MT.min(p.n_tok - t);
            let mut row = r.start;
            while row < r.end {
                let nr = NR.min(r.end - row);
                let (wp, xp) = (
                    w.as_ptr().add(row * cols + k0),
                    x.as_ptr().add(t * cols + k0),
                );
                if nr == NR && mt == 1 {
                    for (j, v) in W::tile1(wp, cols, xp, kc).iter().enumerate() {
                        *out.0.add(t * rows + row + j) += v;
                    }
                } else if nr == NR {
                    let acc = W::tile(wp, cols, xp, cols, kc, mt);
                    for (j, accs) in acc.iter().enumerate() {
                        for (tt, v) in accs.iter().enumerate().take(mt) {
                            *out.0.add((t + tt) * rows + row + j) += v;
                        }
                    }
                } else {
                    for j in 0..nr {
                        let wr = &w[(row + j) * cols + k0..(row + j) * cols + k0 + kc];
                        for tt in 0..mt {
                            let xr = &x[(t + tt) * cols + k0..(t + tt) * cols + k0 + kc];
                            *out.0.add((t + tt) * rows + row + j) += W::dot1(wr, xr);
                        }
                    }
                }
                row += nr;
            }
            t += mt;
        }
        k0 += kc;
    }
}

/// The operands of one product, as the tasks see them.
#[derive(Clone, Copy)]
struct Product<'a, W> {
    w: &'a [W],
    rows: usize,
    cols: usize,
    x: &'a [f32],
    n_tok: usize,
    /// Reduction block length.
    block: usize,
    /// First row summed with `dot1` (the rows a 3-row tile cannot cover).
    tail: usize,
}

/// Few tokens: each weight row is read once for all of them (`row_tokens`), rows in order, so W
/// streams from memory while the products are computed.
///
/// # Safety
/// `p`'s slices and `out` must hold the whole product (checked by the caller); no other task
/// writes columns `r`.
unsafe fn rows_task<W: GemmElem>(p: Product<'_, W>, r: std::ops::Range<usize>, out: OutPtr) {
    let (cols, n_tok) = (p.cols, p.n_tok);
    let mut k0 = 0;
    while k0 < cols {
        let kc = p.block.min(cols - k0);
        for row in r.clone() {
            let wr = &p.w[row * cols + k0..row * cols + k0 + kc];
            if row >= p.tail {
                for t in 0..n_tok {
                    let xs = &p.x[t * cols + k0..t * cols + k0 + kc];
                    *out.0.add(t * p.rows + row) += W::dot1(wr, xs);
                }
                continue;
            }
            let acc = W::row_tokens(wr.as_ptr(), p.x.as_ptr().add(k0), cols, kc, n_tok);
            for (t, v) in acc.iter().enumerate().take(n_tok) {
                *out.0.add(t * p.rows + row) += v;
            }
        }
        k0 += kc;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
        let mut y = vec![0f32; n * rows];
        for t in 0..n {
            for r in 0..rows {
                y[t * rows + r] = (0..cols).map(|k| w[r * cols + k] * x[t * cols + k]).sum();
            }
        }
        y
    }

    #[test]
    fn matmul_and_matvec_match_reference_on_ragged_shapes() {
        for (rows, cols, n) in [
            (1, 1, 1),
            (17, 33, 7),
            (40, 300, 13),
            (64, 512, 2),
            (5, 8, 6),
        ] {
            let w: Vec<f32> = (0..rows * cols)
                .map(|i| ((i * 31 % 23) as f32 - 11.0) / 16.0)
                .collect();
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7 % 19) as f32 - 9.0) / 8.0)
                .collect();
            let want = reference(&w, rows, cols, &x, n);
            for m in [
                Matrix {
                    rows,
                    cols,
                    data: MatData::F32(WeightBuf::from_slice(&w).unwrap()),
                },
                Matrix {
                    rows,
                    cols,
                    data: MatData::F16(
                        WeightBuf::from_slice(
                            &w.iter().map(|&v| f16::from_f32(v)).collect::<Vec<_>>(),
                        )
                        .unwrap(),
                    ),
                },
            ] {
                let mut y = vec![f32::NAN; n * rows];
                m.matmul(&x, n, &mut y);
                for (a, b) in y.iter().zip(&want) {
                    assert!(
                        (a - b).abs() <= 1e-3 * (1.0 + b.abs()),
                        "{rows}x{cols}x{n}: {a} vs {b}"
                    );
                }
            }
        }
    }

    #[test]
    fn matmul_rows_are_bit_identical_at_any_token_count() {
        for (rows, cols) in [(17, 40), (40, 2100), (7, 8), (9, 896)] {
            let w: Vec<f16> = (0..rows * cols)
                .map(|i| f16::from_f32(((i * 13 % 29) as f32 - 14.0) / 9.0))
                .collect();
            let m = Matrix {
                rows,
                cols,
                data: MatData::F16(WeightBuf::from_slice(&w).unwrap()),
            };
            // 11 tokens take the 3 × 3 tiles; 1 and 5 tokens the row-at-a-time path.
            let n = 11;
            let x: Vec<f32> = (0..n * cols)
                .map(|i| ((i * 7 % 31) as f32 - 15.0) / 7.0)
                .collect();
            let mut all = vec![0f32; n * rows];
            m.matmul(&x, n, &mut all);
            for t in 0..n {
                let mut one = vec![0f32; rows];
                m.matmul(&x[t * cols..(t + 1) * cols], 1, &mut one);
                let got: Vec<u32> = one.iter().map(|v| v.to_bits()).collect();
                let want: Vec<u32> = all[t * rows..(t + 1) * rows]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                assert_eq!(got, want, "{rows}x{cols}: token {t} alone differs");
            }
            let mut five = vec![0f32; 5 * rows];
            m.matmul(&x[3 * cols..8 * cols], 5, &mut five);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(
                bits(&five),
                bits(&all[3 * rows..8 * rows]),
                "{rows}x{cols}: 5 tokens differ"
            );
        }
    }
}
